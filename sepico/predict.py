"""Segmentation maps of image files (``sepico predict``).

For each image ``<stem>_color.png`` (the palette's colours, at the image's size), with
``trainids`` ``<stem>_labelTrainIds.png`` (uint8 train ids, what the Cityscapes and Dark Zurich
benchmark servers take) and with ``overlay`` ``<stem>_overlay.png`` (image and colours blended
as mmseg's ``show_result`` blends them: ``image * (1 - opacity) + colours * opacity``, cut to
uint8). Inference is the evaluation's: the image (resized to ``size`` when given: by default the
weight file's test size, as ``eval`` and mmseg's image demo take it) normalised with mmseg's
statistics, logits resized bilinearly (align_corners false) to the network input and then to the
image's own size, the argmax (a few classes at a time at the image's size,
``sepico.evaluation.predict_labels``); or the argmax of the test-time-augmented probabilities
(``scales``, ``flip``: these hold every class at the image's size).

Images come from files and folders (png, jpg, jpeg, bmp, webp, tif, tiff; folders walked
recursively in sorted order; an image in a sub-folder keeps that sub-folder under the output
folder). An unreadable image is named in one line and skipped.

What is written never costs the user a file (``sepico.files``): every file is written atomically;
the output folder may hold no input; an existing file is replaced only when it is an earlier map
of ``sepico predict`` (its PNG text ``Software`` says so) or with ``force``, and never when it is
an input or a link (without ``force``); all of this is checked before the first image is predicted.

Dark Zurich images (``*_rgb_anon.png``) are predicted as the official test does: the softmax times
the class prior (``dark_zurich_prior``, scale 0.16) before the resize to the image (single-scale
only, as the official ``aug_test`` leaves it out). Their train ids go where the Dark Zurich
benchmark takes them: ``labelTrainIds/<file name>`` (the image's own name, flat, as mmseg's
``results2img`` names them), with the copies ``labelTrainIds_invalid/`` and ``confidence/`` the
official README builds by hand, and the three folders zipped into ``dark_zurich_submission.zip``
(regular files only: a link in those folders is never followed into the archive).
"""
from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from sepico.data.cityscapes import PALETTE, colorize
from sepico.data.real import DatasetError, image_to_tensor, read_rgb
from sepico.data.transforms import output_size, resize_image
from sepico.errors import ConfigError, OutputError
from sepico.evaluation import aug_probabilities, inference_autocast, predict_labels
from sepico.files import atomic_write, check_output
from sepico.train.data import scaled_views

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DARK_ZURICH_SUFFIX = "_rgb_anon.png"
SUBMISSION_FOLDERS = ("labelTrainIds", "labelTrainIds_invalid", "confidence")  # the server's zip layout
SUBMISSION_ZIP = "dark_zurich_submission.zip"
SOFTWARE = "sepico predict"  # the PNG text and zip comment that mark an earlier result


def list_images(inputs, out=None) -> list[tuple[Path, Path]]:
    """(image file, output stem relative to the output folder) for every input: a file as it is, a
    folder's images recursively in sorted order, leaving out the output folder ``out`` when it
    sits inside an input folder. An input inside ``out`` (a file, or a folder) is refused, so are
    two inputs writing to one stem. Files of a folder that are not images are passed over, and
    counted in one line."""
    out = Path(out).resolve() if out is not None else None
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if out is not None and path.resolve() == out:
                raise ConfigError(f"--out {item} is an input folder: write the maps into a folder of their own")
            if out is not None and path.resolve().is_relative_to(out):
                raise ConfigError(f"input folder {path} lies inside --out {out}: write the maps into a folder "
                                  "that holds no input")
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not (out is not None and p.resolve().is_relative_to(out)))
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise ConfigError(f"{path}: no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) in this folder")
            if len(files) > len(images):
                print(f"note: {len(files) - len(images)} file(s) in {path} are not images "
                      f"({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) and were passed over", file=sys.stderr)
            found += [(p, p.relative_to(path).with_suffix("")) for p in images]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ConfigError(f"{path}: not an image ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
            if out is not None and path.resolve().is_relative_to(out):
                raise ConfigError(f"--out {out} holds the input {path}: write the maps into a folder that holds "
                                  "no input (a map would replace an input, or be predicted in turn)")
            found.append((path, Path(path.stem)))
        else:
            raise ConfigError(f"{path}: no such file or folder")
    stems: dict[Path, Path] = {}
    for path, stem in found:
        if stem in stems:
            raise ConfigError(f"{stems[stem]} and {path} would both write {stem}_*.png; predict them into "
                              "separate --out folders")
        stems[stem] = path
    return found


def read_palette(name: str, num_classes: int) -> np.ndarray:
    """uint8 [num_classes, 3]: ``cityscapes`` (the Cityscapes colours) or a JSON file holding a list
    of ``[R, G, B]`` per class."""
    if name == "cityscapes":
        if num_classes > len(PALETTE):
            raise ConfigError(f"--palette cityscapes has {len(PALETTE)} colours; the model has {num_classes} "
                              "classes: give a JSON file of colours")
        return np.asarray(PALETTE[:num_classes], dtype=np.uint8)
    path = Path(name)
    try:
        colours = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--palette: {name} is neither 'cityscapes' nor a readable JSON file ({err})") from None
    array = np.asarray(colours, dtype=object)
    if (array.ndim != 2 or array.shape[1] != 3 or len(array) < num_classes
            or not all(isinstance(v, int) and 0 <= v <= 255 for v in array.ravel())):
        raise ConfigError(f"--palette: {name} must hold a list of at least {num_classes} [R, G, B] colours "
                          "(integers 0-255)")
    return array[:num_classes].astype(np.uint8)


def blend(pixels: np.ndarray, colours: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """mmseg's overlay (``show_result``, lhoyer/DAFormer mmseg/models/segmentors/base.py l. 246-247):
    ``pixels * (1 - opacity) + colours * opacity`` in float64, cut (not rounded) to uint8."""
    return (pixels * (1 - opacity) + colours * opacity).astype(np.uint8)


@torch.no_grad()
def predict_image(model, pixels: np.ndarray, *, num_classes: int, size=None, keep_ratio: bool = False,
                  mode: str = "whole", window=(1024, 1024), stride=(768, 768), scales=None, flip: bool = False,
                  prior=None, device="cpu", autocast: bool = False) -> np.ndarray:
    """uint8 train ids [H, W] of one uint8 RGB image [H, W, 3] at its own size (``prior``: class
    weights of the single-scale Dark Zurich test, see ``sepico.evaluation.predict_logits``; the
    test-time augmentation of ``scales`` / ``flip`` leaves them out, as the official one)."""
    device = torch.device(device)
    height, width = pixels.shape[:2]
    with inference_autocast(device, autocast):
        if scales or flip:
            views = [v[None].to(device) for v in scaled_views(pixels, scales or (1.0,), size, keep_ratio)]
            ids = aug_probabilities(model, views, (height, width), num_classes=num_classes, flip=flip,
                                    mode=mode, window=window, stride=stride).argmax(1)
        else:
            resized = resize_image(pixels, output_size(height, width, size, keep_ratio)) if size else pixels
            image = image_to_tensor(resized)[None].to(device)
            ids = predict_labels(model, image, (height, width), num_classes=num_classes, mode=mode,
                                 window=window, stride=stride, prior=prior)
    return ids[0].to(torch.uint8).cpu().numpy()


def planned_outputs(images, out, *, trainids: bool = False, overlay: bool = False) -> dict[Path, list[tuple[Path, str]]]:
    """For each image of ``list_images``, the files predicting it writes under ``out``, each with
    what it holds: ``color``, ``ids`` or ``overlay``."""
    out = Path(out)
    if trainids:
        names = [path.name for path, _ in images if path.name.endswith(DARK_ZURICH_SUFFIX)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"two Dark Zurich images named {twice[0]}: their labelTrainIds files would collide")
    plan = {}
    for path, stem in images:
        files = [(out / f"{stem}_color.png", "color")]
        if trainids and path.name.endswith(DARK_ZURICH_SUFFIX):
            files += [(out / folder / path.name, "ids") for folder in SUBMISSION_FOLDERS]
        elif trainids:
            files.append((out / f"{stem}_labelTrainIds.png", "ids"))
        if overlay:
            files.append((out / f"{stem}_overlay.png", "overlay"))
        plan[path] = files
    return plan


def check_outputs(plan: dict, out, *, force: bool = False) -> None:
    """Every file of the plan (and the submission zip) may be written (``sepico.files.check_output``:
    absent, an earlier ``sepico predict`` result, or with ``force`` anything but an input or a
    weight file); ``OutputError`` naming the first that may not, before anything is written."""
    inputs = list(plan)
    targets = [target for files in plan.values() for target, _ in files]
    seen = set()
    for target in targets:
        if target in seen:
            raise ConfigError(f"two images would both write {target}; predict them into separate --out folders")
        seen.add(target)
        folder = target.parent
        while not folder.exists() and not folder.is_symlink() and folder != Path(out):
            folder = folder.parent  # a sub-folder made when the first map goes in: nothing there yet
        if folder != target.parent:
            if not folder.is_dir() or folder.is_symlink():
                raise OutputError(f"--out: {folder} is not a folder, so {target} cannot be written")
            continue
        check_output(target, what="--out", ours=_is_our_png, force=force, inputs=inputs)
    if any(t.parent.name in SUBMISSION_FOLDERS and t.parent.parent == Path(out) for t in targets):
        check_output(Path(out) / SUBMISSION_ZIP, what="--out", ours=_is_our_zip, force=force, inputs=inputs)


def predict_files(model, images, out, *, num_classes: int, trainids: bool = False, overlay: bool = False,
                  palette: np.ndarray = PALETTE, opacity: float = 0.5, force: bool = False,
                  dark_zurich_prior=None, progress: bool = False, **inference) -> tuple[list[Path], list[Path]]:
    """Predict every (image, stem) of ``list_images`` into the folder ``out``; returns (written
    files, skipped images). Every target is checked first (``check_outputs``). ``inference``: the
    keyword arguments of ``predict_image``."""
    out = Path(out)
    plan = planned_outputs(images, out, trainids=trainids, overlay=overlay)
    out.mkdir(parents=True, exist_ok=True)
    check_outputs(plan, out, force=force)
    was_training = model.training
    model.eval()
    written, skipped = [], []
    items = images
    if progress:
        from tqdm import tqdm
        items = tqdm(images, desc="predict", dynamic_ncols=True)
    try:
        for path, _ in items:
            try:
                pixels = np.array(read_rgb(path))
            except DatasetError as err:
                print(f"sepico predict: skipping {err}", file=sys.stderr, flush=True)
                skipped.append(path)
                continue
            dark_zurich = path.name.endswith(DARK_ZURICH_SUFFIX)
            ids = predict_image(model, pixels, num_classes=num_classes, prior=dark_zurich_prior if dark_zurich else None,
                                **inference)
            colours = colorize(ids, palette)
            arrays = {"color": lambda: colours, "ids": lambda: ids, "overlay": lambda: blend(pixels, colours, opacity)}
            for target, kind in plan[path]:
                _write_png(arrays[kind](), target)
                written.append(target)
    finally:
        model.train(was_training)
    submitted = [p for p in written if p.parent.name in SUBMISSION_FOLDERS and p.parent.parent == out]
    if submitted:
        written.append(_write_zip(out / SUBMISSION_ZIP, submitted, out))
    return written, skipped


def _write_zip(path: Path, files, root: Path) -> Path:
    """Every regular file of the three submission folders under its folder name (``zip -r``),
    atomically; a link is never followed into the archive."""
    folders = sorted({f.parent for f in files})

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.comment = SOFTWARE.encode()
            for folder in folders:  # the whole folder: earlier runs into the same --out included
                for png in sorted(folder.glob("*.png")):
                    if png.is_file() and not png.is_symlink():
                        archive.write(png, png.relative_to(root).as_posix())

    atomic_write(path, write)
    return path


def _write_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG", pnginfo=info))


def _is_our_png(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.text.get("Software") == SOFTWARE
    except Exception:  # noqa: BLE001 - whatever the file is, it is not one of ours
        return False


def _is_our_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.comment == SOFTWARE.encode()
    except (OSError, zipfile.BadZipFile):
        return False


__all__ = ["DARK_ZURICH_SUFFIX", "IMAGE_SUFFIXES", "SUBMISSION_FOLDERS", "SUBMISSION_ZIP", "blend", "check_outputs",
           "list_images", "planned_outputs", "predict_files", "predict_image", "read_palette"]

"""Segmentation maps of image files (``sepico predict``) and the files the benchmark servers take
(``sepico eval --split test --export``).

For each image ``<stem>_color.png`` (the palette's colours, at the image's size), with
``trainids`` ``<stem>_labelTrainIds.png`` (uint8 train ids 0..18), with ``labelids``
``<stem>_labelIds.png`` (uint8 Cityscapes label ids, converted from the train ids with the
official table: ``sepico.data.label_maps.to_label_ids``) and with ``overlay``
``<stem>_overlay.png`` (image and colours blended as mmseg's ``show_result`` blends them:
``image * (1 - opacity) + colours * opacity``, cut to uint8). Inference is the evaluation's: the
image (resized to ``size`` when given: by default the weight file's test size, as ``eval`` and
mmseg's image demo take it) normalised with mmseg's statistics, logits resized bilinearly
(align_corners false) to the network input and then to the image's own size, the argmax (a few
classes at a time at the image's size, ``sepico.evaluation.predict_labels``); or the argmax of the
test-time-augmented probabilities (``scales``, ``flip``: these hold every class at the image's size).

Which server takes which file (``BENCHMARKS``; ``submission_outputs`` plans them, every map at
the image's own size, named ``<image stem>.png`` in flat folders as mmseg's ``results2img``
names them, each folder zipped under its own name):

- Cityscapes: label ids, ``labelIds/`` in ``cityscapes_submission.zip``. The server runs the
  Cityscapes scripts' pixel-level evaluation, which looks for one ``<city>_<seq>_<frame>*.png``
  per test image anywhere under the results folder; a folder of ``predict`` results holds the
  colour maps as well, which match the same pattern, so ``predict --labelids`` files are for
  local use and the export is what to upload.
- Dark Zurich: train ids in ``labelTrainIds/``, and the copies ``labelTrainIds_invalid/`` and
  ``confidence/`` that the official SePiCo README builds by hand, in ``dark_zurich_submission.zip``.
  The server's mIoU reads ``labelTrainIds`` only; the two copies make the archive complete and
  give no meaningful uncertainty-aware score.
- ACDC: train ids in ``labelTrainIds/``, in ``acdc_submission.zip``.

Images come from files and folders (png, jpg, jpeg, bmp, webp, tif, tiff; folders walked
recursively in sorted order; an image in a sub-folder keeps that sub-folder under the output
folder). An unreadable image is named in one line and skipped.

What is written never costs the user a file (``sepico.files``): every file is written atomically;
the output folder may hold no input; an existing file is replaced only when it is an earlier
result of the same command (its PNG text ``Software``, the zip's comment say so) or with
``force``, and never when it is an input or a link (without ``force``); nothing is written
through a linked folder; all of this is checked before the first image is predicted. A zip holds
the regular files this run wrote, never a link.

Dark Zurich images are predicted as the official test does: the softmax times the class prior
(``prior``, scale 0.16) before the resize to the image (single-scale only, as the official
``aug_test`` leaves it out). ``predict`` knows them by their name, ``*_rgb_anon.png``, as the
official segmentor does; ACDC images share that ending, so a weight file whose
``data.dark_zurich_test_prior`` is not 0 weighs them too there (the ACDC config sets it to 0); the
export knows its dataset and weighs Dark Zurich images only.
"""
from __future__ import annotations

import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from sepico.data.cityscapes import PALETTE, colorize
from sepico.data.label_maps import TRAIN_ID_TO_CITYSCAPES_ID, to_label_ids
from sepico.data.real import DatasetError, image_to_tensor, read_rgb
from sepico.data.transforms import output_size, resize_image
from sepico.errors import ConfigError, OutputError
from sepico.evaluation import aug_probabilities, inference_autocast, predict_labels
from sepico.files import atomic_write, check_output
from sepico.train.data import scaled_views

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DARK_ZURICH_SUFFIX = "_rgb_anon.png"
SOFTWARE = "sepico predict"  # the PNG text and zip comment that mark an earlier result


@dataclass(frozen=True)
class Benchmark:
    """What a benchmark server takes for each test image: its map (``ids``: ``label`` for Cityscapes
    label ids, ``train`` for train ids) at the image's size, as ``<folder>/<image stem>.png`` in
    every one of ``folders`` (copies), the folders zipped into ``archive``."""
    ids: str
    folders: tuple[str, ...]
    archive: str


BENCHMARKS = {
    "cityscapes": Benchmark("label", ("labelIds",), "cityscapes_submission.zip"),
    "dark_zurich": Benchmark("train", ("labelTrainIds", "labelTrainIds_invalid", "confidence"),
                             "dark_zurich_submission.zip"),
    "acdc": Benchmark("train", ("labelTrainIds",), "acdc_submission.zip"),
}


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


def planned_outputs(images, out, *, trainids: bool = False, labelids: bool = False,
                    overlay: bool = False) -> dict[Path, list[tuple[Path, str]]]:
    """For each image of ``list_images``, the files predicting it writes under ``out``, each with
    what it holds: ``color``, ``train_ids``, ``label_ids`` or ``overlay``."""
    out = Path(out)
    plan = {}
    for path, stem in images:
        files = [(out / f"{stem}_color.png", "color")]
        if trainids:
            files.append((out / f"{stem}_labelTrainIds.png", "train_ids"))
        if labelids:
            files.append((out / f"{stem}_labelIds.png", "label_ids"))
        if overlay:
            files.append((out / f"{stem}_overlay.png", "overlay"))
        plan[path] = files
    return plan


def submission_outputs(images, out, benchmark: Benchmark) -> dict[Path, list[tuple[Path, str]]]:
    """The plan of ``planned_outputs``' form for a benchmark server: every image file of ``images``
    gets ``<folder>/<its stem>.png`` in each folder of ``benchmark``; two images of one name are refused."""
    out = Path(out)
    kind = {"label": "label_ids", "train": "train_ids"}[benchmark.ids]
    names = [Path(path).stem + ".png" for path in images]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two test images are named {twice[0]}: their {benchmark.folders[0]} files would collide")
    return {Path(path): [(out / folder / name, kind) for folder in benchmark.folders]
            for path, name in zip(images, names)}


def check_outputs(plan: dict, out, *, force: bool = False, archive=None, software: str = SOFTWARE,
                  what: str = "--out") -> None:
    """Every file of the plan (and the zip ``archive``) may be written (``sepico.files.check_output``:
    absent, an earlier result of the command ``software`` names, or with ``force`` anything but an
    input or a weight file), and no folder between ``out`` and a file is a link; ``OutputError``
    naming the first that may not (``what``: the option that named ``out``), before anything is written."""
    out, archive = Path(out), None if archive is None else Path(archive)
    if not out.exists():
        if out.is_symlink():
            raise OutputError(f"{what}: {out} is a link to nothing; give a folder")
        return  # made when the first file goes in: nothing there can be replaced
    inputs = list(plan)
    targets = [target for files in plan.values() for target, _ in files] + ([archive] if archive else [])
    seen = set()
    for target in targets:
        if target in seen:
            raise ConfigError(f"two images would both write {target}; predict them into separate {what} folders")
        seen.add(target)
        folder = target.parent
        while folder != out and folder != folder.parent:
            if folder.is_symlink():
                raise OutputError(f"{what}: {folder} is a link; results are never written through a link")
            folder = folder.parent
        folder = target.parent
        while not folder.exists() and folder != out:
            folder = folder.parent  # a sub-folder made when the first map goes in: nothing there yet
        if folder != target.parent:
            if not folder.is_dir():
                raise OutputError(f"{what}: {folder} is not a folder, so {target} cannot be written")
            continue
        ours = _is_our_zip if target == archive else _is_our_png
        check_output(target, what=what, ours=lambda path: ours(path, software), force=force, inputs=inputs)


def predict_files(model, plan: dict, out, *, num_classes: int, archive=None, palette: np.ndarray = PALETTE,
                  opacity: float = 0.5, force: bool = False, prior=None, prior_suffix: str = DARK_ZURICH_SUFFIX,
                  software: str = SOFTWARE, what: str = "--out", progress: bool = False,
                  **inference) -> tuple[list[Path], list[Path]]:
    """Predict every image of ``plan`` (``planned_outputs`` or ``submission_outputs``) into the folder
    ``out`` and, with ``archive``, zip the files written (under their paths relative to ``out``);
    returns (written files, skipped images). Every target is checked first (``check_outputs``, with
    ``software`` and ``what``). ``prior``: the class weights for the images whose name ends with
    ``prior_suffix`` ("": every image). ``inference``: the keyword arguments of ``predict_image``."""
    out = Path(out)
    if num_classes != len(TRAIN_ID_TO_CITYSCAPES_ID) and any(k == "label_ids" for f in plan.values() for _, k in f):
        raise ConfigError(f"Cityscapes label ids are defined for the {len(TRAIN_ID_TO_CITYSCAPES_ID)} Cityscapes "
                          f"classes; the model predicts {num_classes}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{what}: {out} is a file, not a folder")
    check_outputs(plan, out, force=force, archive=archive, software=software, what=what)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    written, skipped = [], []
    items = list(plan)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc="predict", dynamic_ncols=True)
    try:
        for path in items:
            try:
                pixels = np.array(read_rgb(path))
            except DatasetError as err:
                print(f"sepico: skipping {err}", file=sys.stderr, flush=True)
                skipped.append(path)
                continue
            weighed = prior is not None and path.name.endswith(prior_suffix)
            ids = predict_image(model, pixels, num_classes=num_classes, prior=prior if weighed else None, **inference)
            colours = colorize(ids, palette)
            arrays = {"color": lambda: colours, "train_ids": lambda: ids, "label_ids": lambda: to_label_ids(ids),
                      "overlay": lambda: blend(pixels, colours, opacity)}
            for target, kind in plan[path]:
                _write_png(arrays[kind](), target, software)
                written.append(target)
    finally:
        model.train(was_training)
    if archive is not None:
        written.append(_write_zip(Path(archive), written, out, software))
    return written, skipped


def _write_zip(path: Path, files, root: Path, software: str) -> Path:
    """``files`` under their paths relative to ``root`` (as ``zip -r`` of their folders gives them),
    atomically; only regular files go in: a link is never followed into the archive."""
    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.comment = software.encode()
            for png in sorted(files):
                if png.is_file() and not png.is_symlink():
                    archive.write(png, png.relative_to(root).as_posix())

    atomic_write(path, write)
    return path


def _write_png(array: np.ndarray, path: Path, software: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", software)
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG", pnginfo=info))


def _is_our_png(path: Path, software: str) -> bool:
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.text.get("Software") == software
    except Exception:  # noqa: BLE001 - whatever the file is, it is not one of ours
        return False


def _is_our_zip(path: Path, software: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.comment == software.encode()
    except (OSError, zipfile.BadZipFile):
        return False


__all__ = ["BENCHMARKS", "Benchmark", "DARK_ZURICH_SUFFIX", "IMAGE_SUFFIXES", "blend", "check_outputs", "list_images",
           "planned_outputs", "predict_files", "predict_image", "read_palette", "submission_outputs"]

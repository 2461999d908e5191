"""Segmentation maps of image files (``sepico predict``).

For each image ``<stem>_color.png`` (the Cityscapes palette, at the image's size), with
``trainids`` ``<stem>_labelTrainIds.png`` (uint8 train ids, what the Cityscapes and Dark Zurich
benchmark servers take) and with ``overlay`` ``<stem>_overlay.png`` (image and colours blended half
and half, as mmseg's ``show_result`` at opacity 0.5). Inference is the evaluation's: the image
(resized to ``size`` when given) normalised with mmseg's statistics, logits resized bilinearly
(align_corners false) to the network input and then to the image's own size, the argmax; or the
argmax of the test-time-augmented probabilities (``scales``, ``flip``).

Images come from files and folders (png, jpg; folders walked recursively in sorted order; an
image in a sub-folder keeps that sub-folder under the output folder). An unreadable image is named
in one line and skipped; every file is written atomically.

Dark Zurich images (``*_rgb_anon.png``) are predicted as the official test does: the softmax times
the class prior (``dark_zurich_prior``, scale 0.16) before the resize to the image (single-scale
only, as the official ``aug_test`` leaves it out). Their train ids go where the Dark Zurich
benchmark takes them: ``labelTrainIds/<file name>`` (the image's own name, flat, as mmseg's
``results2img`` names them), with the copies ``labelTrainIds_invalid/`` and ``confidence/`` the
official README builds by hand, and the three folders zipped into ``dark_zurich_submission.zip``.
"""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sepico.data.cityscapes import colorize
from sepico.data.real import DatasetError, image_to_tensor, read_rgb
from sepico.data.transforms import output_size, resize_image
from sepico.evaluation import aug_probabilities, inference_autocast, predict_logits
from sepico.errors import ConfigError
from sepico.train.data import scaled_views

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DARK_ZURICH_SUFFIX = "_rgb_anon.png"
SUBMISSION_FOLDERS = ("labelTrainIds", "labelTrainIds_invalid", "confidence")  # the server's zip layout
SUBMISSION_ZIP = "dark_zurich_submission.zip"


def list_images(inputs, exclude=None) -> list[tuple[Path, Path]]:
    """(image file, output stem relative to the output folder) for every input: a file as it is, a
    folder's images recursively in sorted order, leaving out the folder ``exclude`` (the output
    folder, when it sits inside an input folder). Two inputs writing to one stem are refused."""
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if skip is not None and path.resolve() == skip:
                raise ConfigError(f"--out {exclude} is an input folder: write the maps into a folder of their own")
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not (skip is not None and p.resolve().is_relative_to(skip)))
            if not files:
                raise ConfigError(f"{path}: no images (png, jpg) in this folder")
            found += [(p, p.relative_to(path).with_suffix("")) for p in files]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ConfigError(f"{path}: not a png or jpg image")
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


def blend(pixels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Half image, half colours (uint8, rounded)."""
    return ((pixels.astype(np.uint16) + colours.astype(np.uint16) + 1) // 2).astype(np.uint8)


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
            scores = aug_probabilities(model, views, (height, width), num_classes=num_classes, flip=flip,
                                       mode=mode, window=window, stride=stride)
        else:
            resized = resize_image(pixels, output_size(height, width, size, keep_ratio)) if size else pixels
            image = image_to_tensor(resized)[None].to(device)
            scores = predict_logits(model, image, (height, width), num_classes=num_classes, mode=mode,
                                    window=window, stride=stride, prior=prior)
    return scores.argmax(1)[0].to(torch.uint8).cpu().numpy()


def predict_files(model, images, out, *, num_classes: int, trainids: bool = False, overlay: bool = False,
                  dark_zurich_prior=None, progress: bool = False, **inference) -> tuple[list[Path], list[Path]]:
    """Predict every (image, stem) of ``list_images`` into the folder ``out``; returns (written
    files, skipped images). ``inference``: the keyword arguments of ``predict_image``."""
    out = Path(out)
    if trainids:
        names = [path.name for path, _ in images if path.name.endswith(DARK_ZURICH_SUFFIX)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"two Dark Zurich images named {twice[0]}: their labelTrainIds files would collide")
    was_training = model.training
    model.eval()
    written, skipped = [], []
    items = images
    if progress:
        from tqdm import tqdm
        items = tqdm(images, desc="predict", dynamic_ncols=True)
    try:
        for path, stem in items:
            try:
                pixels = np.array(read_rgb(path))
            except DatasetError as err:
                print(f"sepico predict: skipping {err}", file=sys.stderr, flush=True)
                skipped.append(path)
                continue
            dark_zurich = path.name.endswith(DARK_ZURICH_SUFFIX)
            ids = predict_image(model, pixels, num_classes=num_classes, prior=dark_zurich_prior if dark_zurich else None,
                                **inference)
            colours = colorize(ids)
            maps = {out / f"{stem}_color.png": colours}
            if trainids and dark_zurich:
                maps |= {out / folder / path.name: ids for folder in SUBMISSION_FOLDERS}
            elif trainids:
                maps[out / f"{stem}_labelTrainIds.png"] = ids
            if overlay:
                maps[out / f"{stem}_overlay.png"] = blend(pixels, colours)
            for target, array in maps.items():
                _write_png(array, target)
                written.append(target)
    finally:
        model.train(was_training)
    submitted = [p for p in written if p.parent.name in SUBMISSION_FOLDERS and p.parent.parent == out]
    if submitted:
        written.append(_write_zip(out / SUBMISSION_ZIP, submitted, out))
    return written, skipped


def _write_zip(path: Path, files, root: Path) -> Path:
    """Every file of the three submission folders under its folder name (``zip -r``), atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    folders = sorted({f.parent for f in files})
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in folders:  # the whole folder: earlier runs into the same --out included
            for f in sorted(folder.glob("*.png")):
                archive.write(f, f.relative_to(root).as_posix())
    os.replace(tmp, path)
    return path


def _write_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


__all__ = ["DARK_ZURICH_SUFFIX", "IMAGE_SUFFIXES", "SUBMISSION_FOLDERS", "SUBMISSION_ZIP", "blend", "list_images", "predict_files", "predict_image"]

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
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sepico.data.cityscapes import colorize
from sepico.data.transforms import output_size, resize_image
from sepico.evaluation import aug_probabilities, predict_logits
from sepico.train.config import ConfigError
from sepico.train.data import scaled_views

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(inputs) -> list[tuple[Path, Path]]:
    """(image file, output stem relative to the output folder) for every input: a file as it is, a
    folder's images recursively in sorted order. Two inputs writing to one stem are refused."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
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
                  device="cpu", autocast: bool = False) -> np.ndarray:
    """uint8 train ids [H, W] of one uint8 RGB image [H, W, 3] at its own size."""
    device = torch.device(device)
    height, width = pixels.shape[:2]
    cast = (torch.autocast("cuda", dtype=torch.bfloat16) if autocast and device.type == "cuda"
            else torch.autocast("cpu", enabled=False))
    with cast:
        if scales or flip:
            views = [v[None].to(device) for v in scaled_views(pixels, scales or (1.0,), size, keep_ratio)]
            scores = aug_probabilities(model, views, (height, width), num_classes=num_classes, flip=flip,
                                       mode=mode, window=window, stride=stride)
        else:
            resized = resize_image(pixels, output_size(height, width, size, keep_ratio)) if size else pixels
            image = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float().div_(255.0)[None].to(device)
            scores = predict_logits(model, image, (height, width), num_classes=num_classes, mode=mode,
                                    window=window, stride=stride)
    return scores.argmax(1)[0].to(torch.uint8).cpu().numpy()


def predict_files(model, images, out, *, num_classes: int, trainids: bool = False, overlay: bool = False,
                  progress: bool = False, **inference) -> tuple[list[Path], list[Path]]:
    """Predict every (image, stem) of ``list_images`` into the folder ``out``; returns (written
    files, skipped images). ``inference``: the keyword arguments of ``predict_image``."""
    out = Path(out)
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
                with Image.open(path) as im:
                    pixels = np.array(im.convert("RGB"))
            except (OSError, ValueError) as err:
                print(f"sepico predict: skipping {path}: cannot read the image ({err})", file=sys.stderr, flush=True)
                skipped.append(path)
                continue
            ids = predict_image(model, pixels, num_classes=num_classes, **inference)
            colours = colorize(ids)
            maps = {"color": colours}
            if trainids:
                maps["labelTrainIds"] = ids
            if overlay:
                maps["overlay"] = blend(pixels, colours)
            for kind, array in maps.items():
                target = out / f"{stem}_{kind}.png"
                _write_png(array, target)
                written.append(target)
    finally:
        model.train(was_training)
    return written, skipped


def _write_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


__all__ = ["IMAGE_SUFFIXES", "blend", "list_images", "predict_files", "predict_image"]

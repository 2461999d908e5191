"""GTA5, SYNTHIA RAND-CITYSCAPES, Cityscapes, Dark Zurich, ACDC and the night evaluation sets read from
a folder (nothing is downloaded), with labels mapped to the 19 Cityscapes train ids.

Layouts (``root`` is the folder the user names):

=================  ===================================================  =========================================================
dataset            images                                               labels
=================  ===================================================  =========================================================
GTA5               ``images/*.png``                                     ``labels/<same name>`` (Cityscapes label ids)
SYNTHIA            ``RGB/*.png``                                        ``GT/LABELS/<same name>`` (16-bit, class in channel 1)
Cityscapes         ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``     ``gtFine/<split>/<city>/*_gtFine_labelIds.png``
Dark Zurich        ``rgb_anon/<split>/night/<seq>/*_rgb_anon.png``      ``gt/<split>/night/<seq>/*_gt_labelTrainIds.png`` (val)
ACDC               ``rgb_anon/<cond>/<split>/<seq>/*_rgb_anon.png``     ``gt/<cond>/<split>/<seq>/*_gt_labelTrainIds.png``
Nighttime Driving  ``leftImg8bit/test/night/*_leftImg8bit.png``         ``gtCoarse_daytime_trainvaltest/test/night/*_gtCoarse_labelTrainIds.png``
BDD100k-night      ``images/10k/val/*.jpg``                             ``labels/sem_seg/masks/val/<stem>.png`` (train ids)
=================  ===================================================  =========================================================

Nighttime Driving (Dai and Van Gool, 2018; its ``NighttimeDrivingTest`` archive) and BDD100k-night
(night images of BDD100K's 10K segmentation set, in that set's layout; copy the night selection
into a folder of its own) are evaluation sets only: one labelled split, whatever ``split`` says.
Dark Zurich's, ACDC's and Cityscapes' unlabelled test images (split ``test``) are read with
``labelled=False``, for the benchmark servers (``sepico eval --split test --export``). ACDC (fog,
night, rain, snow; ``conditions`` chooses any of them) keeps the official archives' layout, one
folder per condition; its daytime reference images (``rgb_anon/<condition>/<split>_ref``) are read
by ``sepico.data.night.day_images``.

A dataset item is ``(image float32 [3, H, W] in [0, 1], label int64 [H, W])`` at the files' own
size; an unlabelled dataset (a target's training images) gives labels that are all ignore (255).
The listing checks that every image has its label; reading checks that the label has the image's
size and only ids the dataset defines. Errors name the file (``DatasetError``, a ``ValueError``).
Resizing, cropping and flipping for training live in ``sepico.train.data``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from sepico.data.cityscapes import IGNORE_INDEX
from sepico.errors import DatasetError
from sepico.data.label_maps import (CITYSCAPES_ID_TO_TRAIN_ID, GTA5_ID_TO_TRAIN_ID, SYNTHIA_ID_TO_TRAIN_ID,
                                    TRAIN_ID_IDENTITY, lookup_table, to_train_ids)

REAL_DATASETS = ("gta5", "synthia", "cityscapes", "dark_zurich", "acdc", "nighttime_driving", "bdd100k_night")
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
# Datasets whose released files hold image-label pairs of different sizes. Training takes such a
# pair as the official pipeline does (``sepico.train.data.TrainingView``); ``sepico check-data``
# reports them without counting them a fault. GTA5: visinf/da-sac (datasets/dataloader_seg.py,
# ``DLSeg.__getitem__``) resizes every GTA5 image and label to 1914 x 1052 before asserting that
# their sizes agree; the count of such pairs in the release was not verified here.
SIZE_MISMATCH_TOLERATED = ("gta5",)


@dataclass(frozen=True)
class _Layout:
    images: str         # folder of the images, relative to the root ({split}, {condition} filled in)
    labels: str         # folder of the labels, mirroring the image folder's sub-folders
    image_suffix: str   # image file name = stem + image_suffix
    label_suffix: str   # label file name = stem + label_suffix
    recursive: bool     # images sit in sub-folders (cities, sequences)


_LAYOUTS = {
    "gta5": _Layout("images", "labels", ".png", ".png", False),
    "synthia": _Layout("RGB", "GT/LABELS", ".png", ".png", False),
    "cityscapes": _Layout("leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png",
                          "_gtFine_labelIds.png", True),
    "dark_zurich": _Layout("rgb_anon/{split}/night", "gt/{split}/night", "_rgb_anon.png",
                           "_gt_labelTrainIds.png", True),
    "acdc": _Layout("rgb_anon/{condition}/{split}", "gt/{condition}/{split}", "_rgb_anon.png",
                    "_gt_labelTrainIds.png", True),
    "nighttime_driving": _Layout("leftImg8bit/test/night", "gtCoarse_daytime_trainvaltest/test/night",
                                 "_leftImg8bit.png", "_gtCoarse_labelTrainIds.png", False),
    "bdd100k_night": _Layout("images/10k/val", "labels/sem_seg/masks/val", ".jpg", ".png", False),
}
_TABLES = {"gta5": GTA5_ID_TO_TRAIN_ID, "synthia": SYNTHIA_ID_TO_TRAIN_ID,
           "cityscapes": CITYSCAPES_ID_TO_TRAIN_ID, "dark_zurich": TRAIN_ID_IDENTITY, "acdc": TRAIN_ID_IDENTITY,
           "nighttime_driving": TRAIN_ID_IDENTITY, "bdd100k_night": TRAIN_ID_IDENTITY}


class SegmentationFolder(Dataset):
    """Image (and label) files of one dataset split, listed once, sorted by path.

    Args:
        name: one of ``REAL_DATASETS``.
        root: the dataset folder.
        split: ``"train"``, ``"val"`` or ``"test"`` (Cityscapes, Dark Zurich, ACDC; GTA5 and SYNTHIA
            have one set).
        labelled: read labels; ``False`` lists images only and gives all-ignore labels.
        strict: an unknown label id raises; ``False`` maps it to ignore.
        conditions: ACDC only, the conditions to read (any of ``ACDC_CONDITIONS``); the images are
            listed condition by condition in the order given.
    """

    def __init__(self, name: str, root, split: str = "train", *, labelled: bool = True,
                 strict: bool = True, conditions=ACDC_CONDITIONS):
        if name not in _LAYOUTS:
            raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(REAL_DATASETS)}")
        self.name, self.root, self.split = name, Path(root), split
        self.labelled, self.strict = labelled, strict
        layout = _LAYOUTS[name]
        self._table = lookup_table(_TABLES[name])
        self.conditions = tuple(conditions) if name == "acdc" else ()
        bad = [c for c in self.conditions if c not in ACDC_CONDITIONS]
        if bad or len(set(self.conditions)) < len(self.conditions) or (name == "acdc" and not self.conditions):
            raise DatasetError(f"acdc: conditions must be some of {', '.join(ACDC_CONDITIONS)}, each once, got "
                               f"{list(conditions)}")
        self.images, self.label_paths = [], []  # label_paths: where each image's label is, by the layout
        for condition in self.conditions or (None,):
            images, labels = self._list(layout, split, condition, labelled)
            self.images += images
            self.label_paths += labels
        self.labels = self.label_paths if labelled else None

    def _list(self, layout: _Layout, split: str, condition, labelled: bool):
        """(images, their label paths) of one image folder, sorted by path; with ``labelled`` every
        image checked to have its label."""
        image_dir = self.root / layout.images.format(split=split, condition=condition)
        label_dir = self.root / layout.labels.format(split=split, condition=condition)
        _require_folder(image_dir, self.name)
        pattern = f"*{layout.image_suffix}"
        images = sorted(image_dir.rglob(pattern) if layout.recursive else image_dir.glob(pattern))
        if not images:
            raise DatasetError(f"{self.name}: no images matching {pattern} in {image_dir}")
        labels = [label_dir / p.relative_to(image_dir).parent
                  / (p.name[: -len(layout.image_suffix)] + layout.label_suffix) for p in images]
        if not labelled:
            return images, labels
        _require_folder(label_dir, self.name)
        missing = [(i, l) for i, l in zip(images, labels) if not l.is_file()]
        if missing:
            image, label = missing[0]
            raise DatasetError(f"{self.name}: {len(missing)} image(s) without a label, e.g. {image} "
                               f"has no {label}")
        return images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        conditions = f", conditions={list(self.conditions)}" if self.conditions else ""
        return (f"SegmentationFolder({self.name!r}, root={str(self.root)!r}, split={self.split!r}{conditions}, "
                f"images={len(self)}, labelled={self.labelled})")

    # ------------------------------------------------------------------ files

    def read_image(self, index: int) -> Image.Image:
        """The image as a PIL RGB image (decoded)."""
        return read_rgb(self.images[index])

    def read_label(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Train ids, uint8 [H, W]. ``size`` (W, H), when given, is the size the label must have
        (its image's); all-ignore for an unlabelled dataset (``size`` then required)."""
        if self.labels is None:
            if size is None:
                raise DatasetError(f"{self.name} ({self.split}) is unlabelled: no label for image {index}")
            return np.full((size[1], size[0]), IGNORE_INDEX, dtype=np.uint8)
        path = self.labels[index]
        ids = self.read_label_ids(path)
        if size is not None and (ids.shape[1], ids.shape[0]) != tuple(size):
            raise DatasetError(f"{path}: label is {ids.shape[1]} x {ids.shape[0]} (W x H) but its image "
                               f"{self.images[index]} is {size[0]} x {size[1]}")
        return to_train_ids(ids, self._table, where=str(path), strict=self.strict)

    def read_label_ids(self, path) -> np.ndarray:
        """The label ids a label file of this dataset stores, uint8 or uint16 [H, W], as read (not
        mapped to train ids); ``DatasetError`` naming the file when it cannot be read."""
        return _read_label_ids(Path(path), first_channel=self.name == "synthia")

    def undefined_ids(self, ids: np.ndarray) -> list[int]:
        """The values of ``ids`` (``read_label_ids`` output) that this dataset's id scheme does not define."""
        return np.unique(ids[self._table[ids] < 0]).tolist()

    def read(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """(PIL RGB image, uint8 train-id label of the same size)."""
        image = self.read_image(index)
        return image, self.read_label(index, image.size)

    def label_key(self, index: int) -> str:
        """The file a sample's statistics come from, relative to the root (cache keys)."""
        path = self.labels[index] if self.labels is not None else self.images[index]
        return path.relative_to(self.root).as_posix()

    def __getitem__(self, index: int):
        image, label = self.read(index)
        return image_to_tensor(image), torch.from_numpy(label.astype(np.int64))


def read_rgb(path) -> Image.Image:
    """An image file decoded to 8-bit RGB as mmcv's ``imread`` (cv2 ``IMREAD_COLOR``) decodes it: the
    EXIF orientation applied (a phone photo stands as it was taken), 16-bit samples cut to their high
    byte (libpng's ``png_set_strip_16``, which cv2 asks for), grey replicated, alpha dropped.
    ``DatasetError`` naming the file when it cannot be decoded, is empty or claims more pixels than
    Pillow's decompression-bomb limit."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                high = (np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
                return Image.fromarray(high).convert("RGB")
            return im.convert("RGB")
    except Image.DecompressionBombError as err:
        raise DatasetError(f"{path}: refused: {err}") from None
    except Exception as err:  # noqa: BLE001 - a damaged file of any kind is one line naming it
        raise DatasetError(f"{path}: cannot read the image ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:160]})") from None


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB image or uint8 [H, W, 3] pixels -> float32 [3, H, W] in [0, 1] (a copy)."""
    array = np.array(image, dtype=np.uint8)  # a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _require_folder(path: Path, name: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{name}: missing folder {path}")


def _read_label_ids(path: Path, *, first_channel: bool) -> np.ndarray:
    """Label ids as uint8 or uint16 [H, W]. 8-bit (L, P) and 16-bit grey labels are read as they
    are; with ``first_channel`` an RGB label (SYNTHIA) gives its first channel, at 16 bits."""
    try:
        with Image.open(path) as im:
            if first_channel and im.mode == "RGB":
                return _first_channel(im, path)
            if im.mode in ("L", "P"):
                return np.asarray(im)
            if im.mode.startswith("I;16"):
                return np.asarray(im).astype(np.uint16)
            mode = im.mode
    except (OSError, SyntaxError, ValueError) as err:  # Pillow raises SyntaxError on a broken PNG chunk
        raise DatasetError(f"{path}: cannot read the label ({err})") from None
    raise DatasetError(f"{path}: label has mode {mode}; expected one channel of label ids"
                       + (" (or SYNTHIA's RGB with the class in the first channel)" if first_channel else ""))


def _first_channel(im: Image.Image, path: Path) -> np.ndarray:
    """First channel of an RGB label. Pillow reads a 16-bit RGB PNG as 8-bit RGB keeping only the
    high byte of each sample (rawmode ``RGB;16B``); SYNTHIA's class ids live in the low byte. So a
    16-bit file is decoded twice, once per byte (rawmodes ``RGB;16B`` and ``RGB;16L``: the same
    unfiltered data, 48 bits a pixel), and the bytes are put back together."""
    tile = im.tile
    if not (len(tile) == 1 and tile[0][3] == "RGB;16B"):
        return np.asarray(im)[..., 0].copy()  # 8-bit RGB
    planes = []
    for rawmode in ("RGB;16B", "RGB;16L"):
        with Image.open(path) as again:
            again.tile = [_with_rawmode(t, rawmode) for t in again.tile]
            planes.append(np.asarray(again)[..., 0])
    high, low = planes
    return (high.astype(np.uint16) << 8) | low


def _with_rawmode(tile, rawmode):
    # Pillow >= 11 keeps tiles as named tuples, older versions as plain 4-tuples.
    if hasattr(tile, "_replace"):
        return tile._replace(args=rawmode)
    return (tile[0], tile[1], tile[2], rawmode)


__all__ = ["ACDC_CONDITIONS", "DatasetError", "REAL_DATASETS", "SIZE_MISMATCH_TOLERATED", "SegmentationFolder",
           "image_to_tensor", "read_rgb"]

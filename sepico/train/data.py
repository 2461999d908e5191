"""Datasets of a run and the batch streams that feed the trainer.

A stream's batch at iteration t is a pure function of (seed, t). Batch position p = t * B + b
picks its image either from per-epoch permutations drawn from a generator seeded by
(seed, epoch), or, with rare-class sampling, from a generator seeded by (seed, p); the random crop
and flip of a real dataset's image come from a generator seeded by (seed, p) too. So a resumed run
reads exactly the batches an uninterrupted run would have read, whatever the number of workers.

Real datasets (``sepico.data.real``) reach the trainer through ``TrainingView`` (resize, random
crop, flip, for the two training streams) and ``TestView`` (resize of the image only: the label
keeps its own size, and evaluation resizes the logits to it). ``ScaledViews`` turns a test set
into one of the views test-time augmentation scores (each image at every test scale, resized from
the image as stored).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from sepico.data.check import QUICK_SAMPLE, SPLITS, check_dataset
from sepico.data.cityscapes import IGNORE_INDEX, NUM_CLASSES
from sepico.data.label_maps import PROTOCOLS
from sepico.data.rcs import RareClassSampler, load_class_stats
from sepico.data.night import day_images
from sepico.data.names import SOURCES, TRAINING_TARGETS
from sepico.data.real import SIZE_MISMATCH_TOLERATED, DatasetError, SegmentationFolder, image_to_tensor, read_rgb
from sepico.data.synthetic import SYNTHETIC_CLASSES, SyntheticStreets
from sepico.data.transforms import aug_sizes, output_size, resize_image, resize_label
from sepico.train.config import Config
from sepico.errors import ConfigError

CROP_TRIES = 10  # candidate crops for the class-ratio and rare-class conditions (DAFormer: 10)


@dataclass
class RunData:
    source: Dataset       # labelled source images
    target: Dataset       # target images (labels unused in training)
    target_test: Dataset  # labelled target images for evaluation
    eval_classes: tuple   # train ids that the mIoU averages over


# --------------------------------------------------------------------------- building

def build_datasets(cfg: Config, run_dir=None) -> RunData:
    """The run's datasets. ``run_dir`` is where the rare-class statistics are cached (default:
    ``data.class_stats``, else the run folder the trainer would choose)."""
    d = cfg.data
    for key, name, options in (("data.source", d.source, SOURCES), ("data.target", d.target, TRAINING_TARGETS)):
        if name not in options:
            raise ConfigError(f"config field '{key}' must be one of {', '.join(options)}, got {name!r}")
    real = [name for name in (d.source, d.target) if name != "synthetic"]
    if real and cfg.model.num_classes != NUM_CLASSES:
        raise ConfigError(f"config field 'model.num_classes' must be {NUM_CLASSES} for {real[0]} "
                          f"(Cityscapes train ids), got {cfg.model.num_classes}")
    size = tuple(int(v) for v in d.size)
    if d.source == "synthetic":
        source = SyntheticStreets("source", "train", size=size, length=d.train_length, seed=d.seed)
    else:
        folder = _folder("data.source_root", d.source, d.source_root, "train", labelled=True,
                         strict=d.strict_labels)
        rcs = None
        if d.rcs_temperature > 0:
            stats = Path(d.class_stats) if d.class_stats else (
                Path(run_dir or cfg.train.run_dir or Path("runs") / cfg.name) / f"class_stats_{d.source}.json")
            counts = load_class_stats(folder, stats, NUM_CLASSES, workers=max(1, d.num_workers))
            try:
                rcs = RareClassSampler(counts, temperature=d.rcs_temperature, min_pixels=d.rcs_min_pixels)
            except ValueError as err:
                raise ConfigError(f"config field 'data.rcs_min_pixels': {err}") from None
        source = TrainingView(folder, _sizes(d.source_size), _sizes(d.crop_size), keep_ratio=d.keep_ratio,
                              flip=d.flip, cat_max_ratio=d.cat_max_ratio, rare_class_sampler=rcs,
                              rare_min_pixels=d.rcs_min_pixels * d.rcs_min_crop_ratio)
    if d.target == "synthetic":
        target = SyntheticStreets("target", "train", size=size, length=d.train_length, seed=d.seed)
    else:
        folder = _folder("data.target_root", d.target, d.target_root, "train", labelled=False,
                         strict=d.strict_labels, conditions=d.acdc_conditions)
        # With the class-balanced pseudo-label crop the loader hands whole (resized) images: the
        # trainer cuts the crop (official `..._no_crop` target pipeline).
        crop = None if cfg.method.pseudo_crop else _sizes(d.crop_size)
        days = None
        if cfg.method.day_night:  # each target image with its daytime image
            try:
                days = day_images(d.target, d.target_root, folder.images)
            except DatasetError as err:
                raise ConfigError(f"config field 'data.target_root': {err}") from None
        target = TrainingView(folder, _sizes(d.target_size), crop, keep_ratio=d.keep_ratio, flip=d.flip,
                              companions=days)
    _check_same_size(source, target, size, _sizes(d.crop_size) if cfg.method.pseudo_crop else None)
    target_test, eval_classes = build_test_dataset(cfg)
    return RunData(source=source, target=target, target_test=target_test, eval_classes=eval_classes)


def build_test_dataset(cfg: Config, scales=None) -> tuple[Dataset, tuple]:
    """(labelled target evaluation images, train ids the mIoU averages over). With ``scales``
    (test-time augmentation) each item holds the image at every scale (``ScaledViews``)."""
    d = cfg.data
    if d.target == "synthetic":
        size = tuple(int(v) for v in d.size)
        test = SyntheticStreets("target", "test", size=size, length=d.test_length, seed=d.seed)
        classes = tuple(SYNTHETIC_CLASSES) if d.source == "synthetic" and not d.eval_protocol else None
        if scales:
            test = ScaledViews(test, scales)
    else:
        folder = _folder("data.target_root", d.target, d.target_root, "val", labelled=True,
                         strict=d.strict_labels, conditions=d.acdc_conditions)
        if scales:
            test = ScaledViews(TestView(folder), scales, _sizes(d.test_size), keep_ratio=d.keep_ratio)
        else:
            test = TestView(folder, _sizes(d.test_size), keep_ratio=d.keep_ratio)
        classes = None
    if classes is None:
        protocol = d.eval_protocol or (16 if d.source == "synthia" else 19)
        classes = PROTOCOLS[str(protocol)]
    return test, classes


RUN_ROLES = ("source", "target", "target_test")  # the datasets a training run reads


def check_run_data(cfg: Config, roles=RUN_ROLES) -> dict:
    """The quick form of ``sepico check-data`` on the datasets of ``roles`` (``source`` and
    ``target``: their training images; ``target_test``: the labelled evaluation split): counts
    against the published ones and ``QUICK_SAMPLE`` files per split decoded. What differs is one
    warning line on stderr, never an error (a fixture tree or a subset is not the published set;
    real faults stop the run where the dataset code meets them). Returns, per role, the check's
    summary for the run card."""
    d = cfg.data
    summaries, differing = {}, []
    for role in roles:
        name, root = (d.source, d.source_root) if role == "source" else (d.target, d.target_root)
        if name == "synthetic":
            summaries[role] = {"dataset": "synthetic", "as_published": True,
                               "read": "generated scenes: no files to check"}
            continue
        if not Path(root).is_dir():  # the dataset code names the missing folder
            summaries[role] = {"dataset": name, "as_published": False, "read": f"no folder {root}",
                               "differences": [f"no folder {root}"]}
            continue
        split = "train" if role != "target_test" else ("val" if name in TRAINING_TARGETS else SPLITS[name][0])
        check = check_dataset(name, root, (split,), sample=QUICK_SAMPLE, conditions=d.acdc_conditions,
                              day_night=role == "target" and cfg.method.day_night)
        summaries[role] = check.summary()
        differing += [f"{name} {line}" for line in summaries[role]["differences"]]
    if differing:
        print(f"warning: data check ({QUICK_SAMPLE} files per split decoded): {'; '.join(differing)} (sepico "
              "check-data --data NAME --root PATH prints the whole table)", file=sys.stderr, flush=True)
    return summaries


def _folder(key, name, root, split, *, labelled, strict, conditions=()) -> SegmentationFolder:
    if not root:
        raise ConfigError(f"config field '{key}' must name the {name} folder")
    if not Path(root).is_dir():
        raise ConfigError(f"config field '{key}': no folder {root}")
    try:
        return SegmentationFolder(name, root, split, labelled=labelled, strict=strict, conditions=conditions)
    except DatasetError as err:
        raise ConfigError(f"config field '{key}': {err}") from None


def _sizes(value) -> tuple[int, int] | None:
    h, w = (int(v) for v in value)
    return (h, w) if h and w else None


def _stream_size(dataset, synthetic_size) -> tuple[int, int]:
    if isinstance(dataset, TrainingView):
        return dataset.output_size()
    return synthetic_size


def _check_same_size(source, target, synthetic_size, pseudo_crop=None) -> None:
    """ClassMix puts a source and a target image side by side: same (H, W), the target's after
    the pseudo-label crop when there is one (which must fit in the whole target image)."""
    s, t = _stream_size(source, synthetic_size), _stream_size(target, synthetic_size)
    if pseudo_crop is not None:
        if pseudo_crop[0] > t[0] or pseudo_crop[1] > t[1]:
            raise ConfigError(f"method.pseudo_crop: the crop {pseudo_crop[0]} x {pseudo_crop[1]} "
                              f"(data.crop_size) does not fit in the {t[0]} x {t[1]} target images")
        t = pseudo_crop
    if s != t:
        raise ConfigError(f"source images reach the trainer at {s[0]} x {s[1]} and target images at "
                          f"{t[0]} x {t[1]}; set data.crop_size (or matching data.source_size, "
                          "data.target_size / data.size)")


# --------------------------------------------------------------------------- views

class Draw(NamedTuple):
    """What a stream asks a ``TrainingView`` for: image ``index`` at batch ``position`` of the
    stream with ``seed``; ``rare_class`` is the class rare-class sampling drew (-1: none)."""
    index: int
    seed: int
    position: int
    rare_class: int = -1


def _generator(seed: int, position: int, purpose: int) -> np.random.Generator:
    """Independent generators per (stream seed, batch position, purpose)."""
    return np.random.default_rng([seed % 2 ** 64, position, purpose])


_RCS_DRAW, _CROP_DRAW = 0, 1


class TrainingView(Dataset):
    """A real dataset as a training stream sees it: resize, random crop, random flip.

    ``resize`` (H, W) is the size itself, or with ``keep_ratio`` mmseg's keep-ratio scale (cv2
    bilinear for the image, nearest for the label: ``sepico.data.transforms``).

    ``view[Draw(...)]`` is ``(image float32 [3, h, w] in [0, 1], label int64 [h, w])`` with
    (h, w) the crop size (a smaller crop is padded after the flip, as mmseg's ``Pad`` after its
    ``RandomFlip``: image 0, label ignore; a GTA5 label of another size than its image is taken as
    the official pipeline takes it: ``_fit``). With ``companions``
    (one image file per image: Dark Zurich's day images) it is ``(image, label, companion)``, the
    companion resized like its image (to the same size) and cropped and flipped with it. A labelled crop is
    tried up to ``CROP_TRIES`` times until no class covers more than ``cat_max_ratio`` of its
    labelled pixels and, for a rare-class draw, it holds more than ``rare_min_pixels`` pixels of
    that class (else the last candidate, or the one holding most of the rare class, is used).
    """

    takes_draws = True

    def __init__(self, folder: SegmentationFolder, resize=None, crop=None, *, keep_ratio: bool = False,
                 flip: bool = True, cat_max_ratio: float = 1.0,
                 rare_class_sampler: RareClassSampler | None = None, rare_min_pixels: float = 0.0,
                 companions=None):
        self.folder, self.resize, self.crop, self.flip = folder, resize, crop, flip
        if companions is not None and len(companions) != len(folder):
            raise ValueError(f"{len(companions)} companion images for {len(folder)} images")
        self.companions = companions
        self.keep_ratio = keep_ratio
        self.cat_max_ratio = cat_max_ratio
        self.rare_class_sampler = rare_class_sampler
        self.rare_min_pixels = rare_min_pixels

    def __len__(self) -> int:
        return len(self.folder)

    def __repr__(self) -> str:
        return (f"TrainingView({self.folder!r}, resize={self.resize}, keep_ratio={self.keep_ratio}, "
                f"crop={self.crop}, flip={self.flip}, "
                f"rcs={self.rare_class_sampler is not None})")

    def output_size(self) -> tuple[int, int]:
        """(H, W) of every item: the crop, else the resize, else the first image's own size."""
        if self.crop:
            return self.crop
        with Image.open(self.folder.images[0]) as im:
            height, width = im.size[1], im.size[0]
        return output_size(height, width, self.resize, self.keep_ratio) if self.resize else (height, width)

    def __getitem__(self, draw):
        if not isinstance(draw, Draw):
            draw = Draw(int(draw), 0, int(draw))
        rng = _generator(draw.seed, draw.position, _CROP_DRAW)
        image = self.folder.read_image(draw.index)
        tolerated = self.folder.name in SIZE_MISMATCH_TOLERATED  # a label may have another size than its image
        label = (self.folder.read_label(draw.index, None if tolerated else image.size)
                 if self.folder.labelled else None)
        pixels = np.asarray(image)
        if self.resize:  # image and label each rescaled on their own, as mmseg's Resize does
            pixels = resize_image(pixels, output_size(*pixels.shape[:2], self.resize, self.keep_ratio))
            if label is not None:
                label = resize_label(label, output_size(*label.shape, self.resize, self.keep_ratio))
        if label is None:
            label = np.full(pixels.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        companion = None if self.companions is None else self._companion(draw.index, pixels.shape[:2])
        size = self.crop or pixels.shape[:2]
        if self.crop:  # the image's crop box, cut out of the label too
            y, x = self._choose_crop(label, pixels.shape[:2], draw.rare_class, rng)
            ch, cw = self.crop
            pixels, label = pixels[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
            companion = None if companion is None else companion[y:y + ch, x:x + cw]
        if self.flip and rng.random() < 0.5:  # each at its own width, before padding: mmseg's RandomFlip, then Pad
            pixels, label = pixels[:, ::-1], label[:, ::-1]
            companion = None if companion is None else companion[:, ::-1]
        pixels, label = _fit(pixels, size, 0), _fit(label, size, IGNORE_INDEX)
        item = (image_to_tensor(pixels), torch.from_numpy(label.astype(np.int64)))
        return item if companion is None else item + (image_to_tensor(_fit(companion, size, 0)),)

    def _companion(self, index: int, size) -> np.ndarray:
        """The companion of image ``index``, resized as the image was (its own keep-ratio rescale,
        or the resize itself); it must come out at the image's ``size``."""
        path = self.companions[index]
        pixels = np.asarray(read_rgb(path))
        if self.resize:
            pixels = resize_image(pixels, output_size(*pixels.shape[:2], self.resize, self.keep_ratio))
        if pixels.shape[:2] != tuple(size):
            raise DatasetError(f"{path} is {pixels.shape[1]} x {pixels.shape[0]} (W x H) after resizing, but its "
                               f"image {self.folder.images[index]} is {size[1]} x {size[0]}")
        return pixels

    def _choose_crop(self, label: np.ndarray, size, rare_class: int, rng: np.random.Generator):
        """(y, x) of a crop box in an image of ``size`` (H, W), as mmseg's ``RandomCrop`` draws it
        (the class checks count the label's pixels inside the box)."""
        height, width = size
        ch, cw = min(self.crop[0], height), min(self.crop[1], width)
        checks = self.folder.labelled and (self.cat_max_ratio < 1.0 or rare_class >= 0)
        best, best_rare = None, -1
        for _ in range(CROP_TRIES if checks else 1):
            y, x = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
            if not checks:
                return y, x
            counts = np.bincount(label[y:y + ch, x:x + cw].ravel(), minlength=256)[:IGNORE_INDEX]
            present = counts[counts > 0]
            balanced = self.cat_max_ratio >= 1.0 or (
                len(present) > 1 and present.max() / present.sum() < self.cat_max_ratio)
            rare = int(counts[rare_class]) if rare_class >= 0 else 0
            if balanced and (rare_class < 0 or rare > self.rare_min_pixels):
                return y, x
            if rare_class < 0 or rare > best_rare:  # fallback: the last, or most of the rare class
                best, best_rare = (y, x), rare
        return best


def _fit(array: np.ndarray, size, fill) -> np.ndarray:
    """``array`` [h, w, ...] cut or padded with ``fill`` at the bottom and right to ``size`` (H, W).

    A crop smaller than the crop size is padded as mmseg's ``Pad`` pads it (image 0, label 255).
    A GTA5 label of another size than its image comes out as the official pipeline leaves it:
    mmseg 0.16's ``Resize`` rescales the image and ``gt_semantic_seg`` each on its own
    (``_resize_img``, ``_resize_seg``: ``mmcv.imrescale`` into the same scale), ``RandomCrop`` cuts
    the image's crop box out of both, ``RandomFlip`` mirrors each at its own width and ``Pad`` fills
    the label up to the crop with 255 (lhoyer/DAFormer mmseg/datasets/pipelines/transforms.py,
    ``Resize``, ``RandomCrop``, ``RandomFlip``, ``Pad``; the GTA5 pipeline in that order, SePiCo's
    configs/_base_/datasets/uda_gta_to_cityscapes_640x640_no_crop.py)."""
    if array.shape[:2] == tuple(size):
        return array
    out = np.full(tuple(size) + array.shape[2:], fill, dtype=array.dtype)
    h, w = min(size[0], array.shape[0]), min(size[1], array.shape[1])
    out[:h, :w] = array[:h, :w]
    return out


class TestView(Dataset):
    """Evaluation images resized to ``resize`` (H, W; with ``keep_ratio`` mmseg's keep-ratio scale,
    cv2 bilinear) when given; labels at their own size."""

    def __init__(self, folder: SegmentationFolder, resize=None, *, keep_ratio: bool = False):
        self.folder, self.resize, self.keep_ratio = folder, resize, keep_ratio

    def __len__(self) -> int:
        return len(self.folder)

    def __repr__(self) -> str:
        return f"TestView({self.folder!r}, resize={self.resize}, keep_ratio={self.keep_ratio})"

    def __getitem__(self, index: int):
        image, label = self.folder.read(index)
        pixels = np.asarray(image)
        if self.resize:
            pixels = resize_image(pixels, output_size(*pixels.shape[:2], self.resize, self.keep_ratio))
        return image_to_tensor(pixels), torch.from_numpy(label.astype(np.int64))


class ScaledViews(Dataset):
    """(list of the image at each test scale, label) of a test set giving images in [0, 1] at their
    stored size (8-bit pixels: ``TestView`` without resize, the synthetic scenes). The sizes are
    ``aug_sizes(..., size, keep_ratio, scales)``; every view is resized from the stored image (cv2
    bilinear), as ``MultiScaleFlipAug`` resizes each view from the loaded file."""

    def __init__(self, dataset: Dataset, scales, size=None, *, keep_ratio: bool = False):
        self.dataset, self.scales, self.size, self.keep_ratio = dataset, tuple(scales), size, keep_ratio

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return f"ScaledViews({self.dataset!r}, scales={self.scales}, size={self.size}, keep_ratio={self.keep_ratio})"

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        pixels = (image.permute(1, 2, 0) * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()
        return scaled_views(pixels, self.scales, self.size, self.keep_ratio), label


def scaled_views(pixels: np.ndarray, scales, size=None, keep_ratio: bool = False) -> list[torch.Tensor]:
    """uint8 [H, W, 3] -> the float [3, h, w] images in [0, 1] at each test scale (``aug_sizes``)."""
    return [image_to_tensor(resize_image(pixels, out)) for out in aug_sizes(*pixels.shape[:2], size, keep_ratio, scales)]


# --------------------------------------------------------------------------- streams

class _IterationBatches:
    """Keys for iterations start, start + 1, ... (an infinite batch sampler): dataset indices,
    or ``Draw``s for a dataset that ``takes_draws``."""

    def __init__(self, length: int, batch_size: int, seed: int, start: int, *, draws: bool = False,
                 rare_class_sampler: RareClassSampler | None = None):
        self.length, self.batch_size, self.seed, self.start = length, batch_size, seed, start
        self.draws, self.rcs = draws, rare_class_sampler
        self._perm_epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.length, generator=gen), epoch
        return self._perm

    def _key(self, position: int):
        if self.rcs is not None:
            index, cls = self.rcs.draw(_generator(self.seed, position, _RCS_DRAW))
        else:
            index, cls = int(self._permutation(position // self.length)[position % self.length]), -1
        return Draw(index, self.seed, position, cls) if self.draws else index

    def __iter__(self):
        it = self.start
        while True:
            first = it * self.batch_size
            yield [self._key(p) for p in range(first, first + self.batch_size)]
            it += 1


def _stack(items):
    return tuple(torch.stack(column) for column in zip(*items))


class BatchStream:
    """``next()`` gives the (images, labels) batch of the next iteration (and the companion images of
    a dataset that has them)."""

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, start: int, num_workers: int = 0):
        sampler = _IterationBatches(len(dataset), batch_size, seed, start,
                                    draws=getattr(dataset, "takes_draws", False),
                                    rare_class_sampler=getattr(dataset, "rare_class_sampler", None))
        self._loader = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=_stack, persistent_workers=num_workers > 0))

    def next(self):
        return next(self._loader)

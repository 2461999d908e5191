"""Rare-class sampling of source images (DAFormer, Hoyer et al. 2022).

Over the source labels (train ids at the files' own resolution), ``f_c`` is class c's share of
all labelled pixels. A draw picks a class with probability

    P(c) = softmax_c((1 - f_c) / T)        (T = 0.01 in DAFormer and SePiCo)

and then, uniformly, one of the images holding at least ``min_pixels`` pixels of that class
(3000 in DAFormer). Classes that no image holds that often are never drawn. A small T
concentrates the draws on the rarest classes; a large T draws the classes nearly uniformly.

The per-image class counts are computed once (a pass over every label file) and cached as JSON;
the cache is used again while it lists the same label files.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sepico.data.cityscapes import IGNORE_INDEX
from sepico.errors import ConfigError
from sepico.files import atomic_write

_FORMAT = "sepico-class-stats-1"


def class_pixel_counts(dataset, num_classes: int, *, workers: int = 1) -> np.ndarray:
    """int64 [N, C]: pixels of each train id in each label of ``dataset`` (a
    ``SegmentationFolder``); ignored pixels are not counted."""
    def count(index):
        label = dataset.read_label(index)
        hist = np.bincount(label.ravel(), minlength=256)
        if hist[num_classes:IGNORE_INDEX].any() or hist[IGNORE_INDEX + 1:].any():
            raise ValueError(f"{dataset.label_key(index)}: train ids >= num_classes={num_classes}")
        return hist[:num_classes]

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:  # PNG decoding releases the GIL
            rows = list(pool.map(count, range(len(dataset))))
    else:
        rows = [count(i) for i in range(len(dataset))]
    return np.stack(rows).astype(np.int64)


def load_class_stats(dataset, path, num_classes: int, *, workers: int = 1) -> np.ndarray:
    """Per-image class counts from the JSON cache at ``path``, or computed and written there when
    the cache is missing or lists other files."""
    path = Path(path)
    files = [dataset.label_key(i) for i in range(len(dataset))]
    cached = _read_cache(path)
    if cached is not None and cached.get("num_classes") == num_classes and cached.get("files") == files:
        try:
            counts = np.asarray(cached["counts"], dtype=np.int64).reshape(len(files), num_classes)
            if (counts >= 0).all():
                return counts
        except (KeyError, TypeError, ValueError):
            pass  # a damaged cache of ours: computed again below
    counts = class_pixel_counts(dataset, num_classes, workers=workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"format": _FORMAT, "dataset": getattr(dataset, "name", ""),
                                   "num_classes": num_classes, "files": files, "counts": counts.tolist()}))
    return counts


def _read_cache(path: Path) -> dict | None:
    """The cache at ``path`` (None when there is none, or it is a damaged one of ours); a file that is
    not a sepico class-statistics cache is refused, so it is never written over."""
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_file():
        raise ConfigError(f"data.class_stats: {path} is not a regular file; give the path of a cache file")
    text = path.read_bytes()
    try:
        cached = json.loads(text)
    except ValueError:
        cached = None
    if isinstance(cached, dict) and cached.get("format") == _FORMAT:
        return cached
    if _FORMAT.encode() in text[:200]:
        return None  # ours, cut short
    raise ConfigError(f"data.class_stats: {path} is not a sepico class-statistics cache; it is not replaced "
                      "(give another path in data.class_stats, or remove the file)")


class RareClassSampler:
    """Draws (image index, class) pairs; every draw is a function of the generator it is given.

    Args:
        counts: int [N, C] per-image class pixel counts (``class_pixel_counts``).
        temperature: T > 0.
        min_pixels: an image is a candidate for class c when it holds at least this many pixels
            of c.
    """

    def __init__(self, counts, *, temperature: float = 0.01, min_pixels: int = 3000):
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[0] == 0:
            raise ValueError(f"counts must be [N, C] with N > 0, got shape {counts.shape}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if min_pixels < 0:
            raise ValueError(f"min_pixels must be >= 0, got {min_pixels}")
        total = counts.sum()
        if total == 0:
            raise ValueError("rare-class sampling needs labelled pixels; every label is ignore")
        self.frequency = counts.sum(0) / total
        holders = [np.flatnonzero((counts[:, c] >= max(min_pixels, 1))) for c in range(counts.shape[1])]
        self.classes = np.array([c for c, h in enumerate(holders) if len(h) > 0], dtype=np.int64)
        if len(self.classes) == 0:
            raise ValueError(f"no image holds min_pixels={min_pixels} pixels of any class")
        logits = (1.0 - self.frequency[self.classes]) / temperature
        weights = np.exp(logits - logits.max())
        self.probabilities = weights / weights.sum()
        self.images_with = {int(c): holders[c] for c in self.classes}
        self.temperature, self.min_pixels = float(temperature), int(min_pixels)

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        cls = int(rng.choice(self.classes, p=self.probabilities))
        return int(rng.choice(self.images_with[cls])), cls

    def __repr__(self) -> str:
        top = np.argsort(-self.probabilities)[:3]
        best = ", ".join(f"{int(self.classes[i])}: {self.probabilities[i]:.3f}" for i in top)
        return (f"RareClassSampler(T={self.temperature}, min_pixels={self.min_pixels}, "
                f"classes={len(self.classes)}, most likely {{{best}}})")


__all__ = ["RareClassSampler", "class_pixel_counts", "load_class_stats"]

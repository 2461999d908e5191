"""Datasets of a run and the batch streams that feed the trainer.

A stream's batch at iteration t is a pure function of (seed, t): pixel positions walk through
per-epoch permutations drawn from a generator seeded by (seed, epoch), so a resumed run reads
exactly the batches an uninterrupted run would have read, whatever the number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from sepico.data import SYNTHETIC_CLASSES, SyntheticStreets
from sepico.train.config import Config, ConfigError

DATASETS = ("synthetic",)


@dataclass
class RunData:
    source: Dataset       # labelled source images
    target: Dataset       # target images (labels unused in training)
    target_test: Dataset  # labelled target images for evaluation
    eval_classes: tuple   # train ids that the mIoU averages over


def build_datasets(cfg: Config) -> RunData:
    d = cfg.data
    for key, name in (("data.source", d.source), ("data.target", d.target)):
        if name not in DATASETS:
            raise ConfigError(f"config field '{key}' must be one of {', '.join(DATASETS)}, got {name!r}")
    size = tuple(int(v) for v in d.size)
    return RunData(
        source=SyntheticStreets("source", "train", size=size, length=d.train_length, seed=d.seed),
        target=SyntheticStreets("target", "train", size=size, length=d.train_length, seed=d.seed),
        target_test=SyntheticStreets("target", "test", size=size, length=d.test_length, seed=d.seed),
        eval_classes=tuple(SYNTHETIC_CLASSES),
    )


class _IterationBatches:
    """Index lists for iterations start, start + 1, ... (an infinite batch sampler)."""

    def __init__(self, length: int, batch_size: int, seed: int, start: int):
        self.length, self.batch_size, self.seed, self.start = length, batch_size, seed, start
        self._perm_epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.length, generator=gen), epoch
        return self._perm

    def __iter__(self):
        it = self.start
        while True:
            first = it * self.batch_size
            yield [int(self._permutation(p // self.length)[p % self.length])
                   for p in range(first, first + self.batch_size)]
            it += 1


def _stack(items):
    images, labels = zip(*items)
    return torch.stack(images), torch.stack(labels)


class BatchStream:
    """``next()`` gives the (images, labels) batch of the next iteration."""

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, start: int, num_workers: int = 0):
        sampler = _IterationBatches(len(dataset), batch_size, seed, start)
        self._loader = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=_stack, persistent_workers=num_workers > 0))

    def next(self):
        return next(self._loader)

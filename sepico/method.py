"""The SePiCo part of a training step (the math: kernels/README.md): the class-distribution estimator and
the contrastive loss of one variant, behind three calls.

    method = SePiCo.from_config(cfg.method, num_classes=C, dim=D, max_iters=T, device=dev)
    labels = method.labels(label, emb.shape[-2:])   # a pass's labels at feature resolution
    method.update(teacher_emb, labels)              # the estimator (official: the teacher's
                                                    # source embeddings, every iteration)
    loss = method.loss(student_emb, labels, iteration)  # contrast_weight x the variant's loss

`labels` brings image-resolution labels to the feature grid once (majority vote or nearest
neighbour) and checks their range once; the estimator update and every loss of the step then read
the same [B, h, w] tensor as a ``kernels.CheckedLabels``, so the kernels' range check does not
run (nor sync) again for it. `update` scales the new statistics once
(``kernels.ScaledStatistics``: mean / tau, covariance / (2 tau^2)), and every loss until the next
update takes them as they are. Embeddings go in as the [B, D, h, w] maps the projection head
emits: one kernel launch per call, no [N, D] copy, the gradient in the map's own layout.
"""
from __future__ import annotations

import torch

import kernels
from sepico.estimator import ClassDistributionEstimator
from sepico.labels import checked_feature_labels

CONTRASTIVE_VARIANTS = ("dist", "proto", "bank")  # the method variants with a contrastive loss
RATIO_SCHEDULES = ("constant", "linear")
LOSS_NAMES = {"dist": "DistCL", "proto": "ProtoCL", "bank": "BankCL"}  # the paper's names


def variant_name(variant: str, covariance: str = "diag") -> str:
    """The one name of a contrastive variant (``method.variant`` and ``method.covariance``), as
    the benchmarks ("loss DistCL diag") and the ablation's runs ("distcl_diag") spell it:
    "DistCL diag", "DistCL full", "ProtoCL", "BankCL"."""
    return f"{LOSS_NAMES[variant]} {covariance}" if variant == "dist" else LOSS_NAMES[variant]


def run_name(variant: str, covariance: str = "diag") -> str:
    """`variant_name` as a file name: "distcl_diag", "protocl", ..."""
    return variant_name(variant, covariance).lower().replace(" ", "_")


class SePiCo:
    """Estimator + contrastive loss of one SePiCo variant.

    Args:
        variant: ``"dist"`` (DistCL), ``"proto"`` (ProtoCL) or ``"bank"`` (BankCL).
        num_classes, dim: C and the projection head's D.
        covariance, memory_length, momentum: the estimator's (``ClassDistributionEstimator``);
            the bank is kept for ``"bank"`` only.
        temperature, ratio, reg_weight: the losses' (``kernels.dist_contrastive_loss``,
            ``kernels.bank_contrastive_loss``); ``ratio_schedule`` ``"linear"`` scales r by
            iteration / max_iters.
        contrast_weight: the factor on every loss this object returns.
        use_avg_pool, scale_min_ratio: how labels reach the feature grid.
    """

    def __init__(self, variant: str, *, num_classes: int, dim: int, covariance: str = "diag",
                 memory_length: int = 200, momentum: float | None = None, temperature: float = 100.0,
                 ratio: float = 1.0, ratio_schedule: str = "constant", max_iters: int = 1,
                 reg_weight: float = 1.0, contrast_weight: float = 1.0, use_avg_pool: bool = True,
                 scale_min_ratio: float = 0.75, ignore_index: int = 255, device=None):
        if variant not in CONTRASTIVE_VARIANTS:
            raise ValueError(f"variant must be one of {CONTRASTIVE_VARIANTS}, got {variant!r}")
        if ratio_schedule not in RATIO_SCHEDULES:
            raise ValueError(f"ratio_schedule must be 'constant' or 'linear', got {ratio_schedule!r}")
        self.variant = variant
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.estimator = ClassDistributionEstimator(
            num_classes, dim, covariance=covariance,
            memory_length=memory_length if variant == "bank" else 0, momentum=momentum, device=device)
        self._ratio, self._ratio_schedule, self._max_iters = ratio, ratio_schedule, max_iters
        self._contrast_weight = contrast_weight
        self._label_options = dict(use_avg_pool=use_avg_pool, scale_min_ratio=scale_min_ratio,
                                   num_classes=num_classes, ignore_index=ignore_index)
        self._temperature = temperature
        self._loss_options = dict(reg_weight=reg_weight, ignore_index=ignore_index)
        self._rescale()

    @classmethod
    def from_config(cls, method, *, num_classes: int, dim: int, max_iters: int, device=None) -> "SePiCo":
        """From a ``MethodConfig`` (``sepico.train.config``)."""
        return cls(method.variant, num_classes=num_classes, dim=dim, covariance=method.covariance,
                   memory_length=method.memory_length, momentum=method.momentum,
                   temperature=method.temperature, ratio=method.ratio,
                   ratio_schedule=method.ratio_schedule, max_iters=max_iters,
                   reg_weight=method.reg_weight, contrast_weight=method.contrast_weight,
                   use_avg_pool=method.use_avg_pool, scale_min_ratio=method.scale_min_ratio,
                   device=device)

    def labels(self, label: torch.Tensor, feat_size) -> kernels.CheckedLabels:
        """Image-resolution labels [B, 1, H, W] or [B, H, W] as the [B, h, w] int64 labels of the
        feature grid ``feat_size`` = (h, w) (``.tensor``): the image labels range-checked (one host
        sync), the result taken by ``update`` and ``loss`` without another check."""
        return checked_feature_labels(label, feat_size, **self._label_options)

    def _rescale(self) -> None:
        """Scale the estimator's statistics for DistCL / ProtoCL (BankCL: none), once per change."""
        est = self.estimator
        self._scaled_from = est.mean
        self._statistics = None if self.variant == "bank" else kernels.scaled_statistics(
            est.mean, est.cov if self.variant == "dist" else None, temperature=self._temperature)

    def update(self, emb: torch.Tensor, labels: torch.Tensor, *, group=None) -> None:
        """Merge embeddings [B, D, h, w] with their ``labels`` [B, h, w] into the estimator, and
        scale its statistics once for every loss until the next update."""
        self.estimator.update(emb, labels, ignore_index=self.ignore_index, group=group)
        self._rescale()

    def ratio(self, iteration: int) -> float:
        """The covariance ratio r at ``iteration`` (DistCL)."""
        if self._ratio_schedule == "linear":
            return self._ratio * (iteration / self._max_iters)
        return self._ratio

    def loss(self, emb: torch.Tensor, labels: torch.Tensor, iteration: int = 0) -> torch.Tensor:
        """contrast_weight x the variant's loss of embeddings [B, D, h, w] with feature-grid
        ``labels`` [B, h, w] (``labels``), against the current statistics."""
        if self.variant == "bank":
            est = self.estimator
            loss = kernels.bank_contrastive_loss(emb, labels, est.memory_bank, mean=est.mean,
                                                 temperature=self._temperature, **self._loss_options)
        else:  # the statistics scaled at the last update (ProtoCL's without the covariance)
            if self._scaled_from is not self.estimator.mean:
                raise RuntimeError("the estimator was updated outside SePiCo.update / load_state_dict: "
                                   "its statistics were not scaled for the loss")
            loss = kernels.dist_contrastive_loss(emb, labels, self._statistics,
                                                 ratio=self.ratio(iteration), **self._loss_options)
        return self._contrast_weight * loss

    def state_dict(self) -> dict:
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.estimator.load_state_dict(state)
        self._rescale()

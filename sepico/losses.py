"""SePiCo contrastive losses on network-shaped tensors (the math: kernels/README.md).

A loss call takes the projection head's output ``feat`` [B, D, h, w] and labels at image resolution,
brings the labels to feature resolution (majority vote or nearest neighbour), and averages a
per-pixel contrastive loss over the valid (non-ignored) pixels:

    DistCL   l_i = logsumexp_c(z_i . mu_c / tau + r / (2 tau^2) quad_c(z_i)) - z_i . mu_{y_i} / tau
    ProtoCL  the same with r = 0
    BankCL   l_i = mean_j softplus(G_i - z_i . b_j / tau),  b_j the entries of class y_i's queue,
             G_i = logsumexp_{k != y_i} (z_i . bbar_k / tau),  bbar_k the mean of class k's queue,

which is the reference's  -mean_j log(exp(pos_j) / (exp(pos_j) + sum_{k != c} exp(neg_k)))  written
without overflow. An optional regulariser is added once per call:

    R = sum_c log softmax_c(zbar . mu_c / tau) / (C log C),   zbar = mean of the valid pixels' z.

Semantics follow the public SePiCo code (BIT-DA/SePiCo) with two deliberate differences:
- a call without valid pixels returns a zero that is connected to ``feat`` (backward gives zero
  gradients) instead of a fresh constant, so ``loss.backward()`` and distributed training never
  break;
- with C = 1 the regulariser is 0 (its sum of log-probabilities is identically 0) where the
  reference divides 0 by C log C = 0 and returns NaN.

This module is the map-level adapter: the call shape of the official loss functions (a
network's [B, D, h, w] output and labels at image resolution, with the statistics passed in),
for code that holds its own statistics. Training does not use it: ``sepico.method.SePiCo`` runs
the same two steps with its estimator's statistics. Each function is those two steps and nothing
else (tests/test_losses.py holds them to it, bit for bit): ``sepico.labels.checked_feature_labels``
(the labels at feature resolution, range-checked once) and the ``kernels`` op of the loss
(``kernels.dist_contrastive_loss`` for DistCL and ProtoCL, ``kernels.bank_contrastive_loss`` for
BankCL), called once on the whole map. ``dist_contrastive_loss`` and ``bank_contrastive_loss``
share their names with those ops and take the ops' labels too: labels at feature resolution
(a factor of 1) give the op's result bit for bit; they also take finer ones, at image resolution,
and bring them to the grid. The names and signatures are the library's API since its first
release and stay.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import kernels
from sepico.labels import checked_feature_labels, downscale_labels, label_map

__all__ = ["ContrastiveLoss", "bank_contrastive_loss", "dist_contrastive_loss", "downscale_labels",
           "proto_contrastive_loss"]  # downscale_labels: sepico.labels's, here since the first release

# --------------------------------------------------------------------------- validation

def _check_feat(feat) -> None:
    if not isinstance(feat, torch.Tensor):
        raise TypeError(f"feat must be a torch.Tensor, got {type(feat).__name__}")
    if feat.dim() != 4:
        raise ValueError(f"feat must have shape [B, D, h, w] as a network emits it, got "
                         f"{tuple(feat.shape)}")


def _feature_labels(feat: torch.Tensor, label, *, use_avg_pool, scale_min_ratio, num_classes,
                    ignore_index) -> kernels.CheckedLabels:
    """The labels [B, h, w] of ``feat``'s pixels (``sepico.labels.checked_feature_labels``)."""
    _check_feat(feat)
    label = label_map(label)
    if label.shape[0] != feat.shape[0]:
        raise ValueError(f"label has batch size {label.shape[0]} but feat has {feat.shape[0]}")
    if label.device != feat.device:
        raise ValueError(f"label is on {label.device} but feat is on {feat.device}")
    return checked_feature_labels(label, feat.shape[-2:], use_avg_pool=use_avg_pool,
                                  scale_min_ratio=scale_min_ratio, num_classes=num_classes,
                                  ignore_index=ignore_index)


def _check_classes(stats: torch.Tensor, num_classes: int, name: str) -> None:
    if isinstance(stats, torch.Tensor) and stats.dim() >= 1 and stats.shape[0] != num_classes:
        raise ValueError(f"{name} must have shape [num_classes = {num_classes}, D], got "
                         f"{tuple(stats.shape)}")


# --------------------------------------------------------------------------- DistCL / ProtoCL

def _statistics_loss(feat, label, mean, cov, *, ratio, temperature, use_avg_pool,
                     scale_min_ratio, num_classes, reg_weight, ignore_index):
    small = _feature_labels(feat, label, use_avg_pool=use_avg_pool, scale_min_ratio=scale_min_ratio,
                            num_classes=num_classes, ignore_index=ignore_index)
    _check_classes(mean, num_classes, "mean")
    return kernels.dist_contrastive_loss(feat, small, mean, cov, ratio=ratio, temperature=temperature,
                                         ignore_index=ignore_index, reg_weight=reg_weight)


def dist_contrastive_loss(feat, label, mean, cov, *, ratio=1.0, temperature=100.0,
                          use_avg_pool=True, scale_min_ratio=0.75, num_classes=19,
                          reg_weight=0.0, ignore_index=255):
    """Distribution-aware pixel contrast (SePiCo DistCL) on a feature map.

    Args:
        feat: [B, D, h, w] embeddings (float32, float16, bfloat16; float64 on the torch backend).
        label: [B, 1, H, W] or [B, H, W] integer labels at image resolution, H = h * s and
            W = w * s for one integer s; brought to the feature grid by majority vote
            (``use_avg_pool=True``, cells whose winning share is below ``scale_min_ratio``
            become ignore) or nearest neighbour.
        mean: [C, D] class means; cov: [C, D] diagonal or [C, D, D] full covariances. Constants:
            they must not require grad.
        ratio: covariance scale r; temperature: tau (a divisor).
        reg_weight: weight of the regulariser R (0 turns it off).

    Returns:
        0-d loss: the mean over valid pixels of l_i, plus ``reg_weight * R``; float32 (float64
        for float64 ``feat``). A zero connected to ``feat`` when no pixel is valid.
    """
    if cov is None:
        raise ValueError("cov is required for DistCL: [C, D] (diagonal) or [C, D, D] (full); "
                         "use proto_contrastive_loss for the mean-only loss")
    return _statistics_loss(feat, label, mean, cov, ratio=ratio, temperature=temperature,
                            use_avg_pool=use_avg_pool, scale_min_ratio=scale_min_ratio,
                            num_classes=num_classes, reg_weight=reg_weight,
                            ignore_index=ignore_index)


def proto_contrastive_loss(feat, label, mean, *, temperature=100.0, use_avg_pool=True,
                           scale_min_ratio=0.75, num_classes=19, reg_weight=0.0,
                           ignore_index=255):
    """Centroid-aware pixel contrast (SePiCo ProtoCL): cross-entropy of z . mu_c / tau.

    Same arguments and result as ``dist_contrastive_loss`` without the covariance.
    """
    return _statistics_loss(feat, label, mean, None, ratio=0.0, temperature=temperature,
                            use_avg_pool=use_avg_pool, scale_min_ratio=scale_min_ratio,
                            num_classes=num_classes, reg_weight=reg_weight,
                            ignore_index=ignore_index)


# --------------------------------------------------------------------------- BankCL

def _memory_bank(bank, num_classes: int, dim: int, device) -> kernels.MemoryBank:
    """A sequence of C tensors [L_c, D] (``ClassDistributionEstimator.bank``) or of C sequences of
    [1, D] / [D] tensors (the reference estimator's deques) as the ``kernels.MemoryBank``
    (queues [C, max L_c, D], lengths [C]) that ``kernels.bank_contrastive_loss`` takes."""
    if isinstance(bank, torch.Tensor) or not isinstance(bank, Sequence):
        raise TypeError("bank must be a sequence of C tensors [L_c, D] (oldest entry first), "
                        f"got {type(bank).__name__}")
    if len(bank) != num_classes:
        raise ValueError(f"bank must hold one queue per class: {num_classes} expected, got "
                         f"{len(bank)}")
    queues = []
    for c, queue in enumerate(bank):
        if not isinstance(queue, torch.Tensor):
            queue = torch.cat([torch.as_tensor(e).reshape(-1, dim) for e in queue]) if len(queue) \
                else torch.zeros(0, dim)
        if queue.dim() != 2 or queue.shape[1] != dim:
            raise ValueError(f"bank[{c}] must have shape [L, {dim}] (D from feat's channels), got "
                             f"{tuple(queue.shape)}")
        if not queue.is_floating_point():
            raise TypeError(f"bank[{c}] must be floating point, got {queue.dtype}")
        if queue.requires_grad:
            raise ValueError(f"bank[{c}] must not require grad: the bank holds constants")
        queues.append(queue)
    dtype = torch.promote_types(torch.float32, queues[0].dtype)
    lengths = torch.tensor([q.shape[0] for q in queues], device=device)
    packed = torch.zeros(num_classes, max(1, int(lengths.max())), dim, dtype=dtype, device=device)
    for c, queue in enumerate(queues):
        packed[c, :queue.shape[0]] = queue.to(device=device, dtype=dtype)
    return kernels.MemoryBank(packed, lengths)


def bank_contrastive_loss(feat, label, bank, *, temperature=100.0, use_avg_pool=True,
                          scale_min_ratio=0.75, num_classes=19, reg_weight=0.0, mean=None,
                          ignore_index=255):
    """Memory-bank pixel contrast (SePiCo BankCL) on a feature map.

    Args:
        feat, label, temperature, use_avg_pool, scale_min_ratio, num_classes, ignore_index: as
            in ``dist_contrastive_loss``.
        bank: one queue per class, oldest entry first: a sequence of C tensors [L_c, D] with
            L_c >= 1 (``ClassDistributionEstimator.bank``), or of C sequences of [1, D] tensors
            (the reference estimator's deques). Constants.
        reg_weight, mean: the regulariser and the [C, D] class means it needs (required when
            ``reg_weight > 0``).

    Returns:
        0-d loss: mean over valid pixels of l_i (``kernels.bank_contrastive_loss``) plus
        ``reg_weight * R``. A zero connected to ``feat`` when no pixel is valid.
    """
    small = _feature_labels(feat, label, use_avg_pool=use_avg_pool, scale_min_ratio=scale_min_ratio,
                            num_classes=num_classes, ignore_index=ignore_index)
    if mean is not None:
        _check_classes(mean, num_classes, "mean")
    memory_bank = _memory_bank(bank, num_classes, feat.shape[1], feat.device)
    return kernels.bank_contrastive_loss(feat, small, memory_bank, temperature=temperature,
                                         ignore_index=ignore_index, reg_weight=reg_weight,
                                         mean=mean)


# --------------------------------------------------------------------------- module

_COMMON = ("temperature", "use_avg_pool", "scale_min_ratio", "num_classes", "reg_weight",
           "ignore_index")
_OPTIONS = {"dist": _COMMON + ("ratio",), "proto": _COMMON, "bank": _COMMON}


class ContrastiveLoss(nn.Module):
    """One module over the three SePiCo losses.

    ``ContrastiveLoss(mode="dist" | "proto" | "bank", loss_weight=1.0, **options)`` where the
    options are the keyword arguments of the matching function (``ratio`` for ``"dist"`` only).
    ``forward(feat, label, mean=None, cov=None, bank=None)`` takes the statistics the mode needs
    (dist: mean and cov; proto: mean; bank: bank, and mean when ``reg_weight > 0``) and ignores
    the others, so a caller can pass an estimator's ``mean``, ``cov`` and ``bank`` to any mode.
    Returns ``loss_weight`` times the loss.
    """

    def __init__(self, mode: str = "dist", *, loss_weight: float = 1.0, **options):
        super().__init__()
        if mode not in _OPTIONS:
            raise ValueError(f"mode must be one of {tuple(_OPTIONS)}, got {mode!r}")
        unknown = sorted(set(options) - set(_OPTIONS[mode]))
        if unknown:
            raise TypeError(f"ContrastiveLoss(mode={mode!r}) got unknown options {unknown}; "
                            f"allowed: {sorted(_OPTIONS[mode])}")
        self.mode = mode
        self.loss_weight = float(loss_weight)
        self.options = dict(options)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"mode={self.mode!r}, loss_weight={self.loss_weight}" + (f", {opts}" if opts else "")

    def forward(self, feat, label, mean=None, cov=None, bank=None):
        if self.mode == "dist":
            loss = dist_contrastive_loss(feat, label, mean, cov, **self.options)
        elif self.mode == "proto":
            if mean is None:
                raise ValueError("mode='proto' needs mean [C, D]")
            loss = proto_contrastive_loss(feat, label, mean, **self.options)
        else:
            if bank is None:
                raise ValueError("mode='bank' needs bank (one queue per class)")
            loss = bank_contrastive_loss(feat, label, bank, mean=mean, **self.options)
        return loss * self.loss_weight if self.loss_weight != 1.0 else loss

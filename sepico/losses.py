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

This module brings the labels to feature resolution and checks what only a map-level call can get
wrong (batch, device, class count); the losses themselves, their validation and the regulariser
are ``kernels.dist_contrastive_loss`` (DistCL, ProtoCL: the fused kernel) and
``kernels.bank_contrastive_loss`` (BankCL), each called once on the whole [B, D, h, w] map: one
launch, the map read in place, and its gradient written in the map's layout (the one [B, D, h, w]
buffer that becomes ``feat``'s gradient; no per-image copies).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import kernels

# --------------------------------------------------------------------------- validation

def _check_feat(feat) -> None:
    if not isinstance(feat, torch.Tensor):
        raise TypeError(f"feat must be a torch.Tensor, got {type(feat).__name__}")
    if feat.dim() != 4:
        raise ValueError(f"feat must have shape [B, D, h, w] as a network emits it, got "
                         f"{tuple(feat.shape)}")


def _label_map(label) -> torch.Tensor:
    """label [B, 1, H, W] or [B, H, W] (integer) as [B, 1, H, W]."""
    if not isinstance(label, torch.Tensor):
        raise TypeError(f"label must be a torch.Tensor, got {type(label).__name__}")
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise TypeError(f"label must be an integer tensor, got {label.dtype}")
    if label.dim() == 3:
        label = label.unsqueeze(1)
    if label.dim() != 4 or label.shape[1] != 1:
        raise ValueError(f"label must have shape [B, 1, H, W] or [B, H, W], got {tuple(label.shape)}")
    return label


# --------------------------------------------------------------------------- labels

def downscale_labels(label, scale_factor, *, num_classes, min_ratio=0.75, ignore_index=255):
    """Majority vote of the labels in each ``scale_factor`` x ``scale_factor`` cell.

    Ignore counts as one more class, placed after the C real ones. The winner is the first class
    with the largest count (a tie goes to the lowest class id, and to a real class over ignore);
    the cell becomes ``ignore_index`` when ignore wins or when the winner's share of the cell,
    computed in float32 as ``count / scale_factor**2``, is below ``min_ratio``. A factor of 1
    returns the labels unchanged (the reference skips the ratio test there too).

    Counts are formed one class at a time from a boolean mask and two small sums (a uint8 sum
    along the cell's columns, then an int32 sum along its rows): extra memory about 1.25 bytes
    per label pixel plus a few [B, H/s, W/s] tensors, never a [B, C + 1, H, W] one-hot.

    Args:
        label: [B, 1, H, W] or [B, H, W] integer labels in [0, C) or ``ignore_index``; H and W
            must be multiples of ``scale_factor``.
    Returns:
        [B, 1, H / scale_factor, W / scale_factor] int64 labels.
    """
    label = _label_map(label)
    kernels.check_num_classes(num_classes)
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 1:
        raise ValueError(f"scale_factor must be a positive int, got {scale_factor!r}")
    batch, _, height, width = label.shape
    if height % scale_factor or width % scale_factor:
        raise ValueError(f"label size {height} x {width} is not a multiple of scale_factor "
                         f"{scale_factor}")
    kernels.check_label_range(label, num_classes, ignore_index)
    if scale_factor == 1:
        return label.to(torch.int64, copy=True)
    s = scale_factor
    h, w = height // s, width // s
    cells = label.reshape(batch, h, s, w, s)
    # A cell holds s * s pixels, so a uint8 sum over s of them cannot overflow while s <= 255.
    row_dtype = torch.uint8 if s <= 255 else torch.int32
    best_count = torch.full((batch, h, w), -1, dtype=torch.int32, device=label.device)
    best_class = torch.zeros((batch, h, w), dtype=torch.int64, device=label.device)
    for c in range(num_classes + 1):  # c == num_classes is ignore: last, so it loses every tie
        hit = cells == (ignore_index if c == num_classes else c)
        count = hit.view(torch.uint8).sum(dim=4, dtype=row_dtype).sum(dim=2, dtype=torch.int32)
        better = count > best_count  # strict: the first maximal class keeps the cell
        best_count = torch.where(better, count, best_count)
        best_class = torch.where(better, c, best_class)
    # The reference averages a float one-hot; its share is this exact float32 quotient.
    share = best_count.to(torch.float32) / float(s * s)
    drop = (best_class == num_classes) | (share < min_ratio)
    return torch.where(drop, ignore_index, best_class).unsqueeze(1)


def labels_at_feature_resolution(label, feat_size, *, use_avg_pool=True, scale_min_ratio=0.75,
                                 num_classes=19, ignore_index=255):
    """Labels [B, 1, H, W] or [B, H, W] brought to the feature grid ``feat_size`` = (h, w).

    The factor is ``W // w`` and must divide both H and W exactly (H = h * factor, W = w *
    factor). ``use_avg_pool=True``: majority vote (``downscale_labels``); ``False``: nearest
    neighbour, the top-left pixel of each cell. Returns [B, 1, h, w] int64.
    """
    label = _label_map(label)
    kernels.check_num_classes(num_classes)
    h, w = int(feat_size[0]), int(feat_size[1])
    height, width = label.shape[-2:]
    factor = width // w if w > 0 else 0
    if factor < 1 or height != h * factor or width != w * factor:
        raise ValueError(f"label size {height} x {width} is not a multiple of the feature size "
                         f"{h} x {w} by one integer factor on both axes (label width // feature "
                         f"width = {factor})")
    if use_avg_pool:
        return downscale_labels(label, factor, num_classes=num_classes, min_ratio=scale_min_ratio,
                                ignore_index=ignore_index)
    kernels.check_label_range(label, num_classes, ignore_index)
    return label[:, :, ::factor, ::factor].to(torch.int64, copy=True)


def _feature_labels(feat: torch.Tensor, label, *, use_avg_pool, scale_min_ratio, num_classes,
                    ignore_index) -> kernels.CheckedLabels:
    """The labels [B, h, w] of ``feat``'s pixels (``labels_at_feature_resolution``), checked."""
    _check_feat(feat)
    label = _label_map(label)
    if label.shape[0] != feat.shape[0]:
        raise ValueError(f"label has batch size {label.shape[0]} but feat has {feat.shape[0]}")
    if label.device != feat.device:
        raise ValueError(f"label is on {label.device} but feat is on {feat.device}")
    small = labels_at_feature_resolution(label, feat.shape[-2:], use_avg_pool=use_avg_pool,
                                         scale_min_ratio=scale_min_ratio, num_classes=num_classes,
                                         ignore_index=ignore_index).squeeze(1)
    # Made from labels checked above: in range by construction, so no op checks (or syncs) again.
    return kernels.checked_labels(small, num_classes, ignore_index, in_range=True)


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

def _bank_tensor(bank, num_classes: int, dim: int, device):
    """A sequence of C tensors [L_c, D] (``ClassDistributionEstimator.bank``) or of C sequences of
    [1, D] / [D] tensors (the reference estimator's deques) as ``kernels.bank_contrastive_loss``'s
    [C, max L_c, D] queues and [C] lengths."""
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
    return packed, lengths


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
    queues, lengths = _bank_tensor(bank, num_classes, feat.shape[1], feat.device)
    return kernels.bank_contrastive_loss(feat, small, queues, lengths, temperature=temperature,
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

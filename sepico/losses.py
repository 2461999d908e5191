"""SePiCo contrastive losses on network-shaped tensors (design sections 4 and 5).

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

DistCL and ProtoCL run on the fused kernel ``kernels.dist_contrastive_loss`` one image at a time
on a strided view of ``feat`` (no [N, D] copy, never an N x C x D temporary); BankCL runs a chunked
PyTorch computation that writes its gradient in the forward, like the kernel.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

import kernels

FLOAT_FEATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# --------------------------------------------------------------------------- validation

def _check_feat(feat) -> None:
    if not isinstance(feat, torch.Tensor):
        raise TypeError(f"feat must be a torch.Tensor, got {type(feat).__name__}")
    if feat.dim() != 4:
        raise ValueError(f"feat must have shape [B, D, h, w] as a network emits it, got "
                         f"{tuple(feat.shape)}")
    if feat.dtype not in FLOAT_FEATS:
        raise TypeError(f"feat must be float32, float16, bfloat16 or float64, got {feat.dtype}")


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


def _check_num_classes(num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes must be in [1, 256], got {num_classes}")


def _check_label_values(label: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """One reduction and one host sync: every label is ignore_index or in [0, C)."""
    if label.numel() == 0:
        return
    bad = (label != ignore_index) & ((label < 0) | (label >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"label values must be in [0, {num_classes}) or ignore_index="
                         f"{ignore_index}; found {int(label[bad][0])}")


def _check_stats(mean, cov, num_classes: int, dim: int) -> None:
    if not isinstance(mean, torch.Tensor):
        raise TypeError(f"mean must be a torch.Tensor, got {type(mean).__name__}")
    if tuple(mean.shape) != (num_classes, dim):
        raise ValueError(f"mean must have shape [num_classes, D] = [{num_classes}, {dim}] "
                         f"(D from feat's channels), got {tuple(mean.shape)}")
    if cov is None:
        return
    if not isinstance(cov, torch.Tensor):
        raise TypeError(f"cov must be a torch.Tensor, got {type(cov).__name__}")
    if tuple(cov.shape) not in ((num_classes, dim), (num_classes, dim, dim)):
        raise ValueError(f"cov must have shape [{num_classes}, {dim}] (diagonal) or "
                         f"[{num_classes}, {dim}, {dim}] (full) to match mean, got "
                         f"{tuple(cov.shape)}")


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
    _check_num_classes(num_classes)
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 1:
        raise ValueError(f"scale_factor must be a positive int, got {scale_factor!r}")
    batch, _, height, width = label.shape
    if height % scale_factor or width % scale_factor:
        raise ValueError(f"label size {height} x {width} is not a multiple of scale_factor "
                         f"{scale_factor}")
    _check_label_values(label, num_classes, ignore_index)
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
    _check_num_classes(num_classes)
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
    _check_label_values(label, num_classes, ignore_index)
    return label[:, :, ::factor, ::factor].to(torch.int64, copy=True)


def _pixels(feat: torch.Tensor, label, *, use_avg_pool, scale_min_ratio, num_classes,
            ignore_index):
    """Per image: its [h*w, D] pixel rows (a view of ``feat``, rows in (row, column) order) and
    its [h*w] labels at feature resolution; and the number of valid pixels (a 0-d tensor)."""
    batch, dim, h, w = feat.shape
    label = _label_map(label)
    if label.shape[0] != batch:
        raise ValueError(f"label has batch size {label.shape[0]} but feat has {batch}")
    if label.device != feat.device:
        raise ValueError(f"label is on {label.device} but feat is on {feat.device}")
    small = labels_at_feature_resolution(label, (h, w), use_avg_pool=use_avg_pool,
                                         scale_min_ratio=scale_min_ratio,
                                         num_classes=num_classes, ignore_index=ignore_index)
    small = small.view(batch, h * w)
    # unbind, not indexing: its backward stacks the per-image gradients into one [B, D, h, w]
    # tensor, where indexing would allocate a full zero tensor per image.
    rows = [image.reshape(dim, h * w).T for image in feat.unbind(0)]
    return rows, list(small.unbind(0)), (small != ignore_index).sum()


def _regulariser(rows, labels, n_valid, mean, temperature, num_classes, ignore_index, acc):
    """R = sum_c log softmax_c(zbar . mu_c / tau) / (C log C); 0 when no pixel is valid.

    zbar is a sum of per-image matrix-vector products over the valid-pixel mask divided by the
    valid count, so no [N, D] temporary appears in the forward.
    """
    total = None
    for z, y in zip(rows, labels):
        part = z.T.to(acc).mv((y != ignore_index).to(acc))
        total = part if total is None else total + part
    zbar = total / n_valid.clamp(min=1).to(acc)
    log_p = torch.log_softmax(zbar @ mean.detach().to(acc).T / temperature, dim=0).sum()
    # C = 1: the single log-probability is exactly 0; the reference's 0 / (1 * log 1) is NaN.
    reg = log_p / (num_classes * math.log(num_classes)) if num_classes > 1 else log_p
    return torch.where(n_valid > 0, reg, torch.zeros_like(reg))


def _pixel_mean(parts, rows, labels, n_valid, *, mean, temperature, num_classes, reg_weight,
                ignore_index):
    """The per-image loss sums ``parts`` added up over the batch and divided by the valid pixel
    count, plus ``reg_weight`` times the regulariser."""
    total = None
    for part in parts:
        total = part if total is None else total + part
    loss = total / n_valid.clamp(min=1).to(total.dtype)
    if reg_weight > 0:
        loss = loss + reg_weight * _regulariser(rows, labels, n_valid, mean, temperature,
                                                num_classes, ignore_index, total.dtype)
    return loss


def _check_common(temperature, reg_weight):
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if not (isinstance(reg_weight, (int, float)) and 0 <= reg_weight < float("inf")):
        raise ValueError(f"reg_weight must be a finite number >= 0, got {reg_weight!r}")


# --------------------------------------------------------------------------- DistCL / ProtoCL

def _statistics_loss(feat, label, mean, cov, *, ratio, temperature, use_avg_pool,
                     scale_min_ratio, num_classes, reg_weight, ignore_index):
    _check_feat(feat)
    _check_num_classes(num_classes)
    _check_common(temperature, reg_weight)
    _check_stats(mean, cov, num_classes, feat.shape[1])
    rows, labels, n_valid = _pixels(feat, label, use_avg_pool=use_avg_pool,
                                    scale_min_ratio=scale_min_ratio, num_classes=num_classes,
                                    ignore_index=ignore_index)
    parts = (kernels.dist_contrastive_loss(z, y, mean, cov, ratio=ratio, temperature=temperature,
                                           ignore_index=ignore_index, reduction="sum")
             for z, y in zip(rows, labels))
    return _pixel_mean(parts, rows, labels, n_valid, mean=mean, temperature=temperature,
                       num_classes=num_classes, reg_weight=reg_weight, ignore_index=ignore_index)


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

@dataclass(frozen=True)
class _PackedBank:
    """A memory bank as one tensor: class c owns rows ``offsets[c]:offsets[c + 1]``."""
    entries: torch.Tensor   # [M, D]
    offsets: tuple          # C + 1 ints
    means: torch.Tensor     # [C, D]: the mean entry of each class


def _pack_bank(bank, num_classes: int, dim: int, device) -> _PackedBank:
    """Accepts a sequence of C tensors [L_c, D] (``ClassDistributionEstimator.bank``) or of C
    sequences of [1, D] / [D] tensors (the reference estimator's deques)."""
    if isinstance(bank, torch.Tensor) or not isinstance(bank, Sequence):
        raise TypeError("bank must be a sequence of C tensors [L_c, D] (oldest entry first), "
                        f"got {type(bank).__name__}")
    if len(bank) != num_classes:
        raise ValueError(f"bank must hold one queue per class: {num_classes} expected, got "
                         f"{len(bank)}")
    queues, offsets = [], [0]
    for c, queue in enumerate(bank):
        if not isinstance(queue, torch.Tensor):
            queue = torch.cat([torch.as_tensor(e).reshape(-1, dim) for e in queue]) if len(queue) \
                else torch.zeros(0, dim)
        if queue.dim() != 2 or queue.shape[1] != dim:
            raise ValueError(f"bank[{c}] must have shape [L, {dim}] (D from feat's channels), got "
                             f"{tuple(queue.shape)}")
        if queue.shape[0] == 0:
            raise ValueError(f"bank[{c}] is empty: BankCL needs at least one entry per class "
                             "(an estimator with memory_length=0 keeps no bank)")
        if not queue.is_floating_point():
            raise TypeError(f"bank[{c}] must be floating point, got {queue.dtype}")
        if queue.requires_grad:
            raise ValueError(f"bank[{c}] must not require grad: the bank holds constants")
        queues.append(queue.to(device))
        offsets.append(offsets[-1] + queue.shape[0])
    dtype = torch.promote_types(torch.float32, queues[0].dtype)
    entries = torch.cat([q.to(dtype) for q in queues])
    means = torch.stack([q.to(dtype).mean(0) for q in queues])
    return _PackedBank(entries=entries, offsets=tuple(offsets), means=means)


def _bank_chunk_rows(length: int, num_classes: int, dim: int) -> int:
    # Temporaries per chunk are chunk x max(L, C, D) floats: keep them near 4M elements.
    return max(64, (1 << 22) // max(length, num_classes, dim))


def _softplus(t):
    # log(1 + exp(t)) without overflow and without softplus's linear cut-off above 20.
    return t.clamp(min=0) + torch.log1p(torch.exp(-t.abs()))


def _bank_forward(z, y, bank: _PackedBank, temperature, ignore_index, want_grad):
    """Sum over valid pixels of l_i and, if wanted, the [N, D] gradient of that sum.

    Pixels are grouped by class with one stable sort; class c's pixels meet c's queue in chunks:
        pos = z B_c^T / tau [n, L],  neg = z bbar^T / tau [n, C] with column c at -inf,
        G = logsumexp(neg),  t = G - pos,  l = mean_j softplus(t_j),
        dl/dz = (-sigmoid(t) / L) B_c / tau + (mean_j sigmoid(t_j)) softmax(neg) bbar / tau.
    """
    n, dim = z.shape
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    num_classes = bank.means.shape[0]
    entries = bank.entries.to(acc) / temperature
    means = bank.means.to(acc) / temperature
    total = torch.zeros((), dtype=acc, device=z.device)
    grad = torch.zeros(n, dim, dtype=acc, device=z.device) if want_grad else None
    key = torch.where(y == ignore_index, num_classes, y.long())
    order = torch.sort(key, stable=True).indices
    bounds = [0] + torch.bincount(key, minlength=num_classes + 1).cumsum(0).tolist()
    for c in range(num_classes):
        members = order[bounds[c]:bounds[c + 1]]
        if members.numel() == 0:
            continue
        queue = entries[bank.offsets[c]:bank.offsets[c + 1]]
        step = _bank_chunk_rows(queue.shape[0], num_classes, dim)
        for start in range(0, members.numel(), step):
            idx = members[start:start + step]
            zc = z.index_select(0, idx).to(acc)
            pos = zc @ queue.T
            neg = zc @ means.T
            neg[:, c] = float("-inf")
            lse = torch.logsumexp(neg, dim=1)  # -inf when C = 1: no negatives, l = 0
            t = lse[:, None] - pos
            total = total + _softplus(t).mean(dim=1).sum()
            if want_grad:
                sig = torch.sigmoid(t) / queue.shape[0]
                g = -(sig @ queue)
                if num_classes > 1:
                    g += sig.sum(dim=1, keepdim=True) * (torch.softmax(neg, dim=1) @ means)
                grad.index_copy_(0, idx, g)
    return total, grad


@dataclass(frozen=True)
class _BankParams:
    bank: _PackedBank
    temperature: float
    ignore_index: int


class _BankContrastiveFunction(torch.autograd.Function):
    """Sum of BankCL pixel losses; the gradient is computed in the forward and scaled later."""

    @staticmethod
    def forward(ctx, z, y, params):
        total, grad = _bank_forward(z, y, params.bank, params.temperature, params.ignore_index, True)
        ctx.save_for_backward(z, y)
        ctx.params = params
        ctx.grad = grad
        return total

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            raise RuntimeError("bank_contrastive_loss has a first-order gradient only: double "
                               "backward (create_graph=True) is not supported")
        z, y = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # a second backward through a retained graph: recompute
            params = ctx.params
            _, grad = _bank_forward(z, y, params.bank, params.temperature, params.ignore_index, True)
        return grad.mul_(grad_output.to(grad.dtype)).to(z.dtype), None, None


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
        0-d loss: mean over valid pixels of l_i (module docstring) plus ``reg_weight * R``. A
        zero connected to ``feat`` when no pixel is valid. Extra memory: an [N, D] gradient
        buffer plus chunk x max(L, C, D) temporaries.
    """
    _check_feat(feat)
    _check_num_classes(num_classes)
    _check_common(temperature, reg_weight)
    dim = feat.shape[1]
    if reg_weight > 0:
        if mean is None:
            raise ValueError("mean [C, D] is required when reg_weight > 0")
        _check_stats(mean, None, num_classes, dim)
        if mean.requires_grad:
            raise ValueError("mean must not require grad: the class statistics are constants")
    packed = _pack_bank(bank, num_classes, dim, feat.device)
    rows, labels, n_valid = _pixels(feat, label, use_avg_pool=use_avg_pool,
                                    scale_min_ratio=scale_min_ratio, num_classes=num_classes,
                                    ignore_index=ignore_index)
    params = _BankParams(bank=packed, temperature=float(temperature), ignore_index=ignore_index)
    if torch.is_grad_enabled() and feat.requires_grad:
        parts = (_BankContrastiveFunction.apply(z, y, params) for z, y in zip(rows, labels))
    else:
        parts = (_bank_forward(z, y, packed, params.temperature, ignore_index, False)[0]
                 for z, y in zip(rows, labels))
    return _pixel_mean(parts, rows, labels, n_valid, mean=mean, temperature=temperature,
                       num_classes=num_classes, reg_weight=reg_weight, ignore_index=ignore_index)


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

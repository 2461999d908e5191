"""Count-weighted merge of running class statistics with a batch (the math: kernels/README.md).

Per class, with the running (n, mu, S) and the batch (n_b, m, V) (mean and biased covariance):

    w   = n_b / (n + n_b)                  (0 where both are 0)
    mu' = (1 - w) mu + w m
    S'  = (1 - w) S + w V + w (1 - w) (mu - m)^2        diagonal
    S'  = (1 - w) S + w V + w (1 - w) (mu - m)(mu - m)^T full
    n'  = n + n_b

`update_class_distribution` takes the batch moments from the class-moment kernel in two passes
over the pixels: sums (for m), then sums of (z - m)^2 or (z - m)(z - m)^T, so V is exact (no
E[z^2] - m^2 cancellation). ``ClassDistributionEstimator.update``, the path training runs, takes
them in one pass about its running means (`class_moments` with ``shift``) and merges them with
`merge_class_moments`: one read of the pixels and, over processes, one all_reduce. A class absent
from the batch has w = 0 and keeps its statistics bit for bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import interpreter_tiles, resolve_backend
from ._checks import (check_dim, check_feats, check_label_range, check_labels, check_same_device, check_stats,
                      Covariance, label_tensor, sort_by_class)
from ._launch import Launch, poisoned_empty
from ._layout import pixel_map
from .moments import moment_partials_torch, moment_partials_triton


@triton.jit
def _merge_class_distribution_kernel(
    COUNT, MEAN, COV,                # running statistics: [C], [C, D], [C, D] or [C, D, D] float32
    BATCH_COUNT,                     # [C] float32: pixels of each class in the batch
    BATCH_MEAN,                      # [C, D] float32: batch means (0 for absent classes)
    BATCH_CENTRED,                   # like COV: sum (z - m)^2 or sum (z - m)(z - m)^T per class
    OUT_COUNT, OUT_MEAN, OUT_COV,    # merged statistics, same shapes
    D,                               # channels
    FULL: tl.constexpr,              # COV is [C, D, D]
    BLOCK_D: tl.constexpr,           # channels per tile (a BLOCK_D x BLOCK_D tile when FULL)
):
    """One class c, one tile of channels (i) and, when FULL, of columns (j)."""
    c = tl.program_id(0)
    pid_i = tl.program_id(1)
    pid_j = tl.program_id(2)
    n = tl.load(COUNT + c)
    n_b = tl.load(BATCH_COUNT + c)
    total = n + n_b
    w = tl.where(total > 0, n_b / tl.where(total > 0, total, 1.0), 0.0)
    inv_nb = tl.where(n_b > 0, 1.0 / tl.where(n_b > 0, n_b, 1.0), 0.0)
    offs_i = pid_i * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_i = offs_i < D
    mu_i = tl.load(MEAN + c * D + offs_i, mask=mask_i, other=0.0)
    m_i = tl.load(BATCH_MEAN + c * D + offs_i, mask=mask_i, other=0.0)
    delta_i = mu_i - m_i
    if pid_j == 0:  # the first column tile writes the mean and the count
        tl.store(OUT_MEAN + c * D + offs_i, (1.0 - w) * mu_i + w * m_i, mask=mask_i)
        if pid_i == 0:
            tl.store(OUT_COUNT + c, total)
    if FULL:
        offs_j = pid_j * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_j = offs_j < D
        delta_j = (tl.load(MEAN + c * D + offs_j, mask=mask_j, other=0.0)
                   - tl.load(BATCH_MEAN + c * D + offs_j, mask=mask_j, other=0.0))
        tile = c.to(tl.int64) * D * D + offs_i[:, None] * D + offs_j[None, :]
        mask = mask_i[:, None] & mask_j[None, :]
        s = tl.load(COV + tile, mask=mask, other=0.0)
        v = tl.load(BATCH_CENTRED + tile, mask=mask, other=0.0) * inv_nb
        out = (1.0 - w) * s + w * v + (w * (1.0 - w)) * (delta_i[:, None] * delta_j[None, :])
        tl.store(OUT_COV + tile, out, mask=mask)
    else:
        s = tl.load(COV + c * D + offs_i, mask=mask_i, other=0.0)
        v = tl.load(BATCH_CENTRED + c * D + offs_i, mask=mask_i, other=0.0) * inv_nb
        out = (1.0 - w) * s + w * v + (w * (1.0 - w)) * (delta_i * delta_i)
        tl.store(OUT_COV + c * D + offs_i, out, mask=mask_i)


MERGE_NUM_WARPS = 4  # elementwise work; the compile check reads this too


def merge_block_d(dim: int, full: bool) -> int:
    # Elementwise work: a 64 x 64 tile (full) or 1024 channels (diagonal) per program; the
    # interpreter prefers whole rows.
    if interpreter_tiles():
        return max(16, triton.next_power_of_2(dim))
    return min(max(16, triton.next_power_of_2(dim)), 64 if full else 1024)


def merge_launch(COUNT, MEAN, COV, BATCH_COUNT, BATCH_MEAN, BATCH_CENTRED, OUT_COUNT, OUT_MEAN,
                 OUT_COV, *, num_classes, dim, full) -> Launch:
    """The merge kernel's launch: tensors (or the compile check's pointer stand-ins)."""
    block_d = merge_block_d(dim, full)
    num_d = triton.cdiv(dim, block_d)
    args = (("COUNT", COUNT), ("MEAN", MEAN), ("COV", COV), ("BATCH_COUNT", BATCH_COUNT),
            ("BATCH_MEAN", BATCH_MEAN), ("BATCH_CENTRED", BATCH_CENTRED), ("OUT_COUNT", OUT_COUNT),
            ("OUT_MEAN", OUT_MEAN), ("OUT_COV", OUT_COV), ("D", dim), ("FULL", full),
            ("BLOCK_D", block_d))
    return Launch(_merge_class_distribution_kernel, args, (num_classes, num_d, num_d if full else 1),
                  MERGE_NUM_WARPS, None)


def _merge_triton(count, mean, cov, n_b, batch_mean, centred):
    num_classes, dim = mean.shape
    out_count = poisoned_empty(num_classes, device=mean.device)
    out_mean = poisoned_empty(num_classes, dim, device=mean.device)
    out_cov = poisoned_empty(*cov.shape, device=mean.device)
    merge_launch(count, mean, cov, n_b, batch_mean, centred, out_count, out_mean, out_cov,
                 num_classes=num_classes, dim=dim, full=cov.dim() == 3)()
    return out_count, out_mean, out_cov


def _merge_torch(count, mean, cov, n_b, batch_mean, centred):
    total = count + n_b
    w = torch.where(total > 0, n_b / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)
    inv_nb = torch.where(n_b > 0, 1.0 / n_b.clamp(min=1.0), 0.0)
    delta = mean - batch_mean
    new_mean = (1.0 - w)[:, None] * mean + w[:, None] * batch_mean
    if cov.dim() == 3:
        w3 = w[:, None, None]
        spread = delta[:, :, None] * delta[:, None, :]
        new_cov = (1.0 - w3) * cov + w3 * (centred * inv_nb[:, None, None]) + (w3 * (1.0 - w3)) * spread
    else:
        w2 = w[:, None]
        new_cov = (1.0 - w2) * cov + w2 * (centred * inv_nb[:, None]) + (w2 * (1.0 - w2)) * delta * delta
    return total, new_mean, new_cov


def _check_running(count, mean, cov, dim):
    if not isinstance(count, torch.Tensor):
        raise TypeError(f"count must be a torch.Tensor, got {type(count).__name__}")
    check_stats(mean, cov, None, dim)
    if cov is None:
        raise ValueError("cov is required: [C, D] (diagonal) or [C, D, D] (full)")
    if count.shape != (mean.shape[0],):
        raise ValueError(f"count must have shape [{mean.shape[0]}] to match mean, got {tuple(count.shape)}")
    for name, t in (("count", count), ("mean", mean), ("cov", cov)):
        if t.dtype not in (torch.float32, torch.float64) or t.dtype != mean.dtype:
            raise TypeError(f"{name} must be float32 or float64 like mean ({mean.dtype}), got {t.dtype}")


@torch.compiler.disable  # a graph break under torch.compile (kernels/__init__.py)
def update_class_distribution(count, mean, cov, feats, labels, *, ignore_index=255):
    """Merge a batch's per-class mean and covariance into running statistics.

    Args:
        count: [C] pixels seen per class so far. mean: [C, D]. cov: [C, D] (diagonal) or
            [C, D, D] (full). All float32 (float64 on the torch backend), same dtype.
        feats: [N, D] rows or a [B, D, h, w] map (any strides, read in place) of float32, float16
            or bfloat16 embeddings; labels: one int64 or int32 label per pixel ([N] or
            [B, h, w]) in [0, C) or ``ignore_index``, or a ``kernels.CheckedLabels`` of them.

    Returns:
        New ``(count, mean, cov)`` tensors (the inputs are not modified). Classes absent from the
        batch keep their statistics unchanged; bit-for-bit reproducible on the same device.
    """
    check_feats(feats)
    given_labels, labels = labels, label_tensor(labels)
    check_labels(labels, feats)
    _check_running(count, mean, cov, feats.shape[1])
    num_classes, dim = mean.shape
    full = cov.dim() == 3
    check_dim(dim, full)
    check_same_device(count=count, mean=mean, cov=cov, feats=feats, labels=labels)
    check_label_range(given_labels, num_classes, ignore_index)
    count, mean, cov = count.contiguous(), mean.contiguous(), cov.contiguous()
    feats = pixel_map(feats)
    order, bounds = sort_by_class(labels.reshape(-1), num_classes, ignore_index)
    n_b = (bounds[1:] - bounds[:-1]).to(mean.dtype)
    on_triton = resolve_backend(feats, mean) == "triton"
    partials = moment_partials_triton if on_triton else moment_partials_torch
    with torch.no_grad():  # statistics: detached on every backend
        total, _ = partials(feats, order, bounds, num_classes, second_mode=Covariance.NONE)
        batch_mean = (total / n_b.clamp(min=1.0)[:, None]).to(mean.dtype)
        _, centred = partials(feats, order, bounds, num_classes, shift=batch_mean, with_total=False,
                              second_mode=Covariance.of(cov))
        merge = _merge_triton if on_triton else _merge_torch
        return merge(count, mean, cov, n_b, batch_mean, centred.to(mean.dtype))


@torch.compiler.disable  # a graph break under torch.compile (kernels/__init__.py)
def merge_class_moments(count, mean, cov, batch_count, batch_total, batch_second, *, shift=None):
    """Merge batch moments (``kernels.class_moments``, possibly summed over processes) into
    running statistics with the same count-weighted rule as `update_class_distribution`.

    ``batch_total`` and ``batch_second`` are sums of ``z - shift[y]`` and of its squares (or outer
    products); ``shift`` [C, D] is the offset they were taken with (None: zero). The batch mean is
    ``shift + total / n`` and the centred second moment ``second - n d d^T`` with ``d = total / n``:
    a one-pass formula, exact to rounding when the shift is near the class means (the running
    means are: ``ClassDistributionEstimator.update`` is ``class_moments(shift=running means)``
    and this merge). Returns new ``(count, mean, cov)``.
    """
    _check_running(count, mean, cov, mean.shape[1])
    full = cov.dim() == 3
    want = (mean.shape[0], mean.shape[1], mean.shape[1]) if full else tuple(mean.shape)
    if batch_count.shape != count.shape or batch_total.shape != mean.shape or batch_second.shape != want:
        raise ValueError(f"batch moments must have shapes {tuple(count.shape)}, {tuple(mean.shape)}, "
                         f"{want}; got {tuple(batch_count.shape)}, {tuple(batch_total.shape)}, "
                         f"{tuple(batch_second.shape)}")
    check_same_device(count=count, mean=mean, cov=cov, batch_count=batch_count,
                      batch_total=batch_total, batch_second=batch_second, shift=shift)
    dtype = mean.dtype
    n_b = batch_count.to(dtype)
    d = batch_total.to(dtype) / n_b.clamp(min=1.0)[:, None]
    batch_mean = d if shift is None else shift.to(dtype) + d
    if full:
        centred = batch_second.to(dtype) - n_b[:, None, None] * d[:, :, None] * d[:, None, :]
    else:
        centred = (batch_second.to(dtype) - n_b[:, None] * d * d).clamp(min=0.0)
    on_triton = resolve_backend(mean) == "triton"
    merge = _merge_triton if on_triton else _merge_torch
    with torch.no_grad():
        return merge(count.contiguous(), mean.contiguous(), cov.contiguous(), n_b.contiguous(),
                     batch_mean.contiguous(), centred.contiguous())

"""Per-class counts, sums and second moments of a batch of pixel embeddings (the math: kernels/README.md).

    n_c = #{i : y_i = c},   s_c = sum_{y_i = c} z_i,
    q_c = sum_{y_i = c} z_i * z_i   (diagonal)   or   Q_c = sum_{y_i = c} z_i z_i^T   (full).

Pixels (rows [N, D] or a whole [B, D, h, w] map read in place, `PixelLayout`) are first grouped by class with one stable sort of the labels (`sort_by_class`), so each
class owns a contiguous run of pixel indices. A program then reduces one class, one slice of its
run (every SPLIT-th block of rows) and one tile of channels into float32 registers and writes a
partial; the SPLIT partials are added afterwards in a fixed order. No atomics anywhere: the bits
depend only on the input and the launch configuration, never on scheduling.

The same kernel, given a per-class SHIFT, accumulates (z_i - shift_c) instead of z_i: the class
distribution update uses it for its second, centred pass (exact covariances, no cancellation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._backend import interpreter_tiles, resolve_backend
from ._checks import (check_dim, check_feats, check_label_range, check_labels, check_num_classes,
                      check_same_device, Covariance, covariance_kind, label_tensor, sort_by_class)
from ._launch import Launch, poisoned_empty
from ._layout import gather_pixels, pixel_layout, pixel_map, pixel_offsets


@triton.jit
def _block_rows(ORDER, start, hi, HW, stride_zb, stride_zp, BLOCK_N: tl.constexpr):
    """The element offsets of a block's pixels (rows BLOCK_N of the class's run from ``start``)
    and their mask."""
    offs_n = start + tl.arange(0, BLOCK_N)
    mask_n = offs_n < hi
    pix = tl.load(ORDER + offs_n, mask=mask_n, other=0)
    return pixel_offsets(pix, HW, stride_zb, stride_zp), mask_n


@triton.jit
def _block_tile(Z, rows, mask_n, offs, mask, stride_zd, shift, HAS_SHIFT: tl.constexpr):
    """The [BLOCK_N, BLOCK_D] float32 tile of channels ``offs`` of a block's pixels, less the
    class's ``shift`` (HAS_SHIFT); 0 outside the masks."""
    tile = mask_n[:, None] & mask[None, :]
    # 64-bit offsets: pixels are int64 already; (D - 1) * stride_zd of a strided view may pass 2^31.
    z = tl.load(Z + rows[:, None] + offs.to(tl.int64)[None, :] * stride_zd, mask=tile,
                other=0.0).to(tl.float32)
    if HAS_SHIFT:
        z = tl.where(tile, z - shift[None, :], 0.0)
    return z


@triton.jit
def _class_moment_partials_kernel(
    Z,                         # feats, float32 / float16 / bfloat16, in a PixelLayout:
    stride_zb, stride_zp, stride_zd,  # rows [N, D] or a map [B, D, h, w] (image, pixel, channel)
    HW,                        # pixels per image
    ORDER,                     # [N] int64: pixel indices grouped by class (ignored ones last)
    BOUNDS,                    # [C + 1] int64: class c owns ORDER[BOUNDS[c] : BOUNDS[c + 1]]
    SHIFT,                     # [C, D] float32: subtracted from every pixel of its class (HAS_SHIFT)
    TOTAL,                     # [SPLIT, C, D] float32 out: partial sums (WITH_TOTAL)
    SECOND,                    # [SPLIT, C, D] ("diag") or [SPLIT, C, D, D] ("full") float32 out
    C, D,                      # number of classes, channels
    SPLIT: tl.constexpr,       # programs per class; program s takes row blocks s, s + SPLIT, ...
    BLOCK_N: tl.constexpr,     # rows per step
    BLOCK_D: tl.constexpr,     # channels per tile ("full": a BLOCK_D x BLOCK_D tile of Q_c)
    HAS_SHIFT: tl.constexpr,   # accumulate z - SHIFT[c] instead of z
    WITH_TOTAL: tl.constexpr,  # write the first moment
    SECOND_MODE: tl.constexpr,  # a Covariance value: "none", "diag" (squares), "full" (outer products)
    GROUP: tl.constexpr,       # "full": row blocks per partial accumulator (see the loop)
):
    """Partial per-class moments: TOTAL[s, c] = sum z, SECOND[s, c] = sum z*z or sum z z^T."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    pid_d = tl.program_id(2)
    num_d = tl.cdiv(D, BLOCK_D)
    if SECOND_MODE == "full":
        di = pid_d // num_d
        dj = pid_d % num_d
    else:
        di = pid_d
        dj = 0
    lo = tl.load(BOUNDS + c)
    hi = tl.load(BOUNDS + c + 1)
    offs_i = di * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = dj * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_i = offs_i < D
    mask_j = offs_j < D
    shift_i = tl.zeros([BLOCK_D], dtype=tl.float32)
    shift_j = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_SHIFT:
        shift_i = tl.load(SHIFT + c * D + offs_i, mask=mask_i, other=0.0)
        shift_j = tl.load(SHIFT + c * D + offs_j, mask=mask_j, other=0.0)
    acc_total = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_diag = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_full = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    step = SPLIT * BLOCK_N
    if SECOND_MODE == "full":
        # On a GPU tl.dot's FMAs chain into the accumulator they are given: one accumulator over
        # all of a program's row blocks would be one float32 chain of thousands of additions per
        # element (1.6e-5 off float64 on an H200). GROUP blocks go into their own accumulator,
        # which is then added to the sum (tl.dot(a, b) + acc would not do: Triton folds it into
        # tl.dot(a, b, acc)).
        for first in range(lo + s * BLOCK_N, hi, GROUP * step):
            acc_group = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
            for start in range(first, tl.minimum(first + GROUP * step, hi), step):
                rows, mask_n = _block_rows(ORDER, start, hi, HW, stride_zb, stride_zp, BLOCK_N)
                zi = _block_tile(Z, rows, mask_n, offs_i, mask_i, stride_zd, shift_i, HAS_SHIFT)
                if WITH_TOTAL:
                    acc_total += tl.sum(zi, axis=0)
                zj = _block_tile(Z, rows, mask_n, offs_j, mask_j, stride_zd, shift_j, HAS_SHIFT)
                acc_group = tl.dot(tl.trans(zi), zj, acc_group, input_precision="ieee")
            acc_full += acc_group
    else:
        for start in range(lo + s * BLOCK_N, hi, step):
            rows, mask_n = _block_rows(ORDER, start, hi, HW, stride_zb, stride_zp, BLOCK_N)
            zi = _block_tile(Z, rows, mask_n, offs_i, mask_i, stride_zd, shift_i, HAS_SHIFT)
            if WITH_TOTAL:
                acc_total += tl.sum(zi, axis=0)
            if SECOND_MODE == "diag":
                acc_diag += tl.sum(zi * zi, axis=0)
    slot = (s * C + c).to(tl.int64)
    if WITH_TOTAL:
        if dj == 0:  # with "full", the first column tile writes the sums
            tl.store(TOTAL + slot * D + offs_i, acc_total, mask=mask_i)
    if SECOND_MODE == "diag":
        tl.store(SECOND + slot * D + offs_i, acc_diag, mask=mask_i)
    if SECOND_MODE == "full":
        tl.store(SECOND + slot * D * D + offs_i[:, None] * D + offs_j[None, :], acc_full,
                 mask=mask_i[:, None] & mask_j[None, :])


# Row blocks whose outer products share an accumulator before it joins the sum (the kernel's
# GROUP). Replaying the GPU's float32 FMA order on tests/test_cuda.py's inputs (N = 200,003,
# D = 70, C = 19, 2 programs per class; python -m bench.moment_rounding), one accumulator per
# program gives 1.6e-5 against float64 for bfloat16 inputs (what an H200 measured), GROUP = 4
# 2.5e-7 and GROUP = 8 5.7e-7.
MOMENT_GROUP = 4


@dataclass(frozen=True)
class MomentConfig:
    block_n: int
    block_d: int
    split: int
    num_warps: int
    num_stages: int


def moment_config(n: int, num_classes: int, dim: int, second_mode: Covariance, strided_channels: bool = False,
                  interpret: bool | None = None) -> MomentConfig:
    """One launch configuration per shape (no autotuning: the bits must not depend on timing).
    ``strided_channels``: the features are a map (channel stride h w, not 1)."""
    interpret = interpreter_tiles() if interpret is None else interpret
    full = second_mode == Covariance.FULL
    # tl.dot needs tiles of at least 16; a FULL program holds a BLOCK_D x BLOCK_D accumulator.
    block_d = max(16, min(triton.next_power_of_2(dim), 64 if full else 128))
    if interpret:
        # The interpreter pays per program and per op, not per element: few, large programs.
        # SPLIT = 2 still exercises the partial-sum path.
        return MomentConfig(block_n=1024, block_d=max(16, min(triton.next_power_of_2(dim), 256)),
                            split=2, num_warps=4, num_stages=1)
    # About 4096 rows per program for an average class; capped so the partial buffer stays small
    # (FULL: SPLIT x C x D x D floats).
    split = max(1, min(8 if full else 32, n // max(1, num_classes * 4096)))
    if strided_channels:
        # Gathered pixels of a map: no two channels of a row are adjacent, so every element of a
        # tile needs its own 64-bit address (rows: one per vector). The rows tiles then took all
        # 255 registers and spilled 0.1 to 6 KB (python -m kernels.compile_check); a quarter of
        # the tile keeps the addresses in registers.
        return MomentConfig(block_n=32, block_d=32, split=split,
                            num_warps=8 if full else 4, num_stages=1)
    # FULL spreads its 64 x 64 accumulator and the two operand tiles over 8 warps: with 4 warps
    # the unshifted call (sums and outer products together) took 255 registers and spilled about
    # 650 bytes (python -m kernels.compile_check); with 8 it stays under 200, spill-free.
    return MomentConfig(block_n=32 if full else 64, block_d=block_d, split=split,
                        num_warps=8 if full else 4, num_stages=1 if full else 2)


def moment_launch(Z, ORDER, BOUNDS, SHIFT, TOTAL, SECOND, *, z, n, num_classes, dim,
                  second_mode: Covariance) -> Launch:
    """The moment kernel's launch: tensors (or the compile check's pointer stand-ins), the
    features' `PixelLayout` ``z``; absent optional pointers (None) are replaced by BOUNDS, never
    dereferenced."""
    cfg = moment_config(n, num_classes, dim, second_mode, strided_channels=not z.rows)
    num_d = triton.cdiv(dim, cfg.block_d)
    grid = (num_classes, cfg.split, num_d * num_d if second_mode == Covariance.FULL else num_d)
    args = (("Z", Z), *z.args("z"), ("HW", max(1, z.hw)), ("ORDER", ORDER),
            ("BOUNDS", BOUNDS), ("SHIFT", BOUNDS if SHIFT is None else SHIFT),
            ("TOTAL", BOUNDS if TOTAL is None else TOTAL),
            ("SECOND", BOUNDS if SECOND is None else SECOND), ("C", num_classes), ("D", dim),
            ("SPLIT", cfg.split), ("BLOCK_N", cfg.block_n), ("BLOCK_D", cfg.block_d),
            ("HAS_SHIFT", SHIFT is not None), ("WITH_TOTAL", TOTAL is not None),
            ("SECOND_MODE", second_mode.value), ("GROUP", MOMENT_GROUP))
    return Launch(_class_moment_partials_kernel, args, grid, cfg.num_warps, cfg.num_stages)


def moment_partials_triton(feats, order, bounds, num_classes, *, shift=None, with_total=True,
                           second_mode=Covariance.DIAG):
    """Launch the kernel and add the SPLIT partials in a fixed order. Returns (total, second)."""
    n, dim = order.numel(), feats.shape[1]
    layout = pixel_layout(feats)
    cfg = moment_config(n, num_classes, dim, second_mode, strided_channels=not layout.rows)
    device = feats.device
    total = poisoned_empty(cfg.split, num_classes, dim, device=device) if with_total else None
    second_shape = {Covariance.NONE: None, Covariance.DIAG: (cfg.split, num_classes, dim),
                    Covariance.FULL: (cfg.split, num_classes, dim, dim)}[second_mode]
    second = poisoned_empty(*second_shape, device=device) if second_shape else None
    moment_launch(feats, order, bounds, shift, total, second, z=layout, n=n,
                  num_classes=num_classes, dim=dim, second_mode=second_mode)()
    return (total.sum(0) if total is not None else None,
            second.sum(0) if second is not None else None)


def _moments_chunk_rows(dim: int) -> int:
    # About 16 MB of float32 rows per step: the CPU path's extra memory is O(chunk x D).
    return max(256, (1 << 22) // dim)


def moment_partials_torch(feats, order, bounds, num_classes, *, shift=None, with_total=True,
                          second_mode=Covariance.DIAG):
    """The same reduction in PyTorch: class by class over the grouped pixel order, in chunks."""
    dim = feats.shape[1]
    acc = torch.float64 if feats.dtype == torch.float64 else torch.float32
    total = torch.zeros(num_classes, dim, dtype=acc, device=feats.device) if with_total else None
    second = {Covariance.NONE: None,
              Covariance.DIAG: lambda: torch.zeros(num_classes, dim, dtype=acc, device=feats.device),
              Covariance.FULL: lambda: torch.zeros(num_classes, dim, dim, dtype=acc, device=feats.device),
              }[second_mode]
    second = second() if second is not None else None
    step = _moments_chunk_rows(dim)
    edges = bounds.tolist()
    for c in range(num_classes):
        for start in range(edges[c], edges[c + 1], step):
            z = gather_pixels(feats, order[start:min(start + step, edges[c + 1])]).to(acc)
            if shift is not None:
                z -= shift[c]
            if with_total:
                total[c] += z.sum(0)
            if second_mode == Covariance.DIAG:
                second[c] += (z * z).sum(0)
            elif second_mode == Covariance.FULL:
                second[c].addmm_(z.T, z)
    return total, second


@torch.compiler.disable  # a graph break under torch.compile (kernels/__init__.py)
def class_moments(feats, labels, num_classes, *, ignore_index=255, covariance="diag", shift=None):
    """Per-class pixel counts, sums and second moments of a batch.

    Args:
        feats: [N, D] rows or a [B, D, h, w] map (any strides, read in place) of float32, float16
            or bfloat16 embeddings (float64 on the torch backend).
        labels: one int64 or int32 class id per pixel, [N] or [B, h, w], in [0, num_classes) or
            ``ignore_index``, or a ``kernels.CheckedLabels`` of them (as for ``dist_contrastive_loss``).
        num_classes: C, from 1 to 256.
        covariance: ``kernels.Covariance.DIAG`` (or ``"diag"``) for sums of squares [C, D],
            ``FULL`` (``"full"``) for sums of outer products [C, D, D].
        shift: optional [C, D] per-class offset: the moments are those of ``z - shift[y]``. With
            a shift near the class means (the running means, say) the second moments stay exact
            enough to give covariances; moments from several processes still add up.

    Returns:
        ``(count, total, second)``: count [C] float32, total [C, D], second [C, D] or [C, D, D],
        accumulated in float32 (float64 for float64 feats), detached from autograd. Ignored
        pixels contribute nothing; absent classes give zeros. Bit-for-bit reproducible on the same
        device (no atomics).
    """
    covariance = covariance_kind(covariance, (Covariance.DIAG, Covariance.FULL))
    check_feats(feats)
    check_num_classes(num_classes)
    given_labels, labels = labels, label_tensor(labels)
    check_labels(labels, feats)
    check_dim(feats.shape[1], covariance == Covariance.FULL)
    check_same_device(feats=feats, labels=labels, shift=shift)
    if shift is not None:
        if not isinstance(shift, torch.Tensor) or not shift.is_floating_point():
            raise TypeError("shift must be a floating-point torch.Tensor [C, D] or None")
        if shift.shape != (num_classes, feats.shape[1]):
            raise ValueError(f"shift must have shape [{num_classes}, {feats.shape[1]}], got {tuple(shift.shape)}")
    check_label_range(given_labels, num_classes, ignore_index)
    feats = pixel_map(feats)
    order, bounds = sort_by_class(labels.reshape(-1), num_classes, ignore_index)
    count = (bounds[1:] - bounds[:-1]).to(torch.float32)
    on_triton = resolve_backend(feats) == "triton"
    impl = moment_partials_triton if on_triton else moment_partials_torch
    if shift is not None:
        acc = torch.float64 if feats.dtype == torch.float64 else torch.float32
        shift = shift.to(acc).contiguous()
    with torch.no_grad():  # statistics, not a differentiable op: detached on every backend
        total, second = impl(feats, order, bounds, num_classes, shift=shift, second_mode=covariance)
    return count, total, second

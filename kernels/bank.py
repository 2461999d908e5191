"""Memory-bank pixel contrastive loss (SePiCo BankCL; the math: kernels/README.md).

Class c's queue holds L_c >= 1 past batch means b_j (oldest first); bbar_k is the mean of class k's
queue. Per valid pixel with label c,

    l_i = mean_j softplus(G_i - z_i . b_j / tau),   G_i = logsumexp_{k != c} z_i . bbar_k / tau,

the reference's -mean_j log(exp(pos_j) / (exp(pos_j) + sum_{k != c} exp(neg_k))) written without
overflow (l_i = 0 for C = 1: no negatives), and

    dl_i/dz_i = (-sigmoid(t_i) / L_c) B_c / tau + (mean_j sigmoid(t_ij)) softmax(neg_i) bbar / tau,
    t_ij = G_i - z_i . b_j / tau.

Both paths group the pixels by class with one stable sort (`sort_by_class`). The Triton kernel
gives each program one class and a slice of its pixel run (every SPLIT-th block of BLOCK_N
pixels): it forms the negatives z B-bar^T and the positives z B_c^T for the whole queue (L <= 256)
with tl.dot, the loss and sigmoid weights in registers, then writes the gradient rows of its
pixels; one more program row zeroes the ignored pixels, so every output element is written once
(no atomics). The chunked PyTorch path meets class c's pixels with c's queue in chunks (extra
memory chunk x max(L, C, D)). Both write the gradient of the per-pixel losses into a buffer shaped
like the features in the forward, like the fused DistCL kernel; `kernels._pixel_loss` turns the
buffer into the gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._backend import interpreter_tiles, requested_backend, resolve_backend
from ._checks import (check_dim, check_feats, check_label_range, check_labels, check_same_device, label_tensor,
                      sort_by_class)
from ._launch import gradient_buffer, Launch, poisoned_empty
from ._layout import gather_pixels, pixel_layout, pixel_map, pixel_offsets, scatter_pixels
from ._pixel_loss import PixelLossParams, check_loss_options, pixel_loss

# The Triton kernel holds a pixel's whole queue of positives and every class's negative in
# registers: queues up to 256 entries, up to 128 classes (at 256 it spilled 112-172 bytes).
MAX_TRITON_LENGTH = 256
MAX_TRITON_CLASSES = 128


class MemoryBank(NamedTuple):
    """BankCL's memory bank, one value: class c's queue is ``queues[c, :lengths[c]]``, oldest
    entry first (``ClassDistributionEstimator.memory_bank``)."""
    queues: torch.Tensor   # [C, L, D] floating point, constants
    lengths: torch.Tensor  # [C] integers in [1, L]


@triton.jit
def _bank_contrastive_kernel(
    Z,                                # feats, float32 / float16 / bfloat16, in a PixelLayout:
    stride_zb, stride_zp, stride_zd,  # rows [N, D] or a map [B, D, h, w] (image, pixel, channel)
    HW,                               # pixels per image (flat pixel n = b HW + p)
    ORDER,                            # [N] int64: pixel indices grouped by class (ignored ones last)
    BOUNDS,                           # [C + 2] int64: class c owns ORDER[BOUNDS[c] : BOUNDS[c + 1]],
    #                                   "class" C (the ignored pixels) ORDER[BOUNDS[C] : BOUNDS[C + 1]]
    BANK,                             # [C, L, D] float32: queue entries / tau
    LEN,                              # [C] int64: queue lengths L_c >= 1
    MEANS,                            # [C, D] float32: queue means / tau
    LOSS,                             # [N] float32 out: l_i, 0 at ignored pixels
    G,                                # float32 out shaped like feats, contiguous: dl_i/dz_i (HAS_GRAD)
    C, L, D,                          # classes, queue capacity, channels
    SPLIT: tl.constexpr,              # programs per class; program s takes row blocks s, s + SPLIT, ...
    BLOCK_N: tl.constexpr,            # pixels per block
    BLOCK_C: tl.constexpr,            # padded class axis (power of two >= max(C, 16))
    BLOCK_L: tl.constexpr,            # padded queue axis (power of two >= max(L, 16))
    BLOCK_D: tl.constexpr,            # channels per chunk
    HAS_GRAD: tl.constexpr,           # write G
    MAP: tl.constexpr,                # G is a contiguous [B, D, h, w] map; else rows [N, D]
):
    """BankCL loss and gradient of the pixels of one class (or zeros for the ignored ones)."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    lo = tl.load(BOUNDS + c)
    hi = tl.load(BOUNDS + c + 1)
    offs_c = tl.arange(0, BLOCK_C)
    offs_l = tl.arange(0, BLOCK_L)
    own = tl.minimum(c, C - 1)  # the ignored pixels' program (c = C) reads class C - 1, unused
    length = tl.load(LEN + own)
    mask_neg = (offs_c < C) & (offs_c != c)
    mask_l = offs_l < length
    queue = BANK + own.to(tl.int64) * L * D
    for start in range(lo + s * BLOCK_N, hi, SPLIT * BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        pix = tl.load(ORDER + offs_n, mask=mask_n, other=0)
        if MAP:  # [B, D, h, w]: pixel p of image b at b D HW + p, channel stride HW
            image = pix // HW
            g_rows = G + image * D * HW + (pix - image * HW)
            g_stride = HW
        else:
            g_rows = G + pix * D
            g_stride = 1
        if c < C:
            z_rows = Z + pixel_offsets(pix, HW, stride_zb, stride_zp)
            neg = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
            pos = tl.zeros([BLOCK_N, BLOCK_L], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < D
                z = tl.load(z_rows[:, None] + offs_d.to(tl.int64)[None, :] * stride_zd,
                            mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                means_t = tl.load(MEANS + offs_c[None, :] * D + offs_d[:, None],
                                  mask=(offs_c[None, :] < C) & mask_d[:, None], other=0.0)
                neg = tl.dot(z, means_t, neg, input_precision="ieee")
                queue_t = tl.load(queue + offs_l[None, :] * D + offs_d[:, None],
                                  mask=mask_l[None, :] & mask_d[:, None], other=0.0)
                pos = tl.dot(z, queue_t, pos, input_precision="ieee")
            # G_i = logsumexp over the other classes; -inf when there is none (C = 1: l = 0).
            neg = tl.where(mask_neg[None, :], neg, float("-inf"))
            row_max = tl.max(neg, axis=1)
            row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
            e = tl.exp(neg - row_max[:, None])
            denom = tl.sum(e, axis=1)
            lse = tl.where(denom > 0, row_max + tl.log(tl.where(denom > 0, denom, 1.0)), float("-inf"))
            t = lse[:, None] - pos
            # softplus(t) = max(t, 0) + log(1 + exp(-|t|)): no overflow, no cut-off.
            soft = tl.maximum(t, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(t)))
            inv_len = 1.0 / length.to(tl.float32)
            loss = tl.sum(tl.where(mask_l[None, :], soft, 0.0), axis=1) * inv_len
            tl.store(LOSS + pix, loss, mask=mask_n)
            if HAS_GRAD:
                sig = tl.where(mask_l[None, :], 1.0 / (1.0 + tl.exp(-t)), 0.0) * inv_len
                weight_neg = tl.sum(sig, axis=1)
                p = tl.where(denom[:, None] > 0, e / tl.where(denom > 0, denom, 1.0)[:, None], 0.0)
                for d0 in range(0, D, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    mask_d = offs_d < D
                    queue_d = tl.load(queue + offs_l[:, None] * D + offs_d[None, :],
                                      mask=mask_l[:, None] & mask_d[None, :], other=0.0)
                    means_d = tl.load(MEANS + offs_c[:, None] * D + offs_d[None, :],
                                      mask=(offs_c[:, None] < C) & mask_d[None, :], other=0.0)
                    g = weight_neg[:, None] * tl.dot(p, means_d, input_precision="ieee")
                    g -= tl.dot(sig, queue_d, input_precision="ieee")
                    tl.store(g_rows[:, None] + offs_d.to(tl.int64)[None, :] * g_stride, g,
                             mask=mask_n[:, None] & mask_d[None, :])
        else:  # the ignored pixels: zero loss, zero gradient
            tl.store(LOSS + pix, tl.zeros([BLOCK_N], dtype=tl.float32), mask=mask_n)
            if HAS_GRAD:
                for d0 in range(0, D, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    tl.store(g_rows[:, None] + offs_d.to(tl.int64)[None, :] * g_stride,
                             tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32),
                             mask=mask_n[:, None] & (offs_d < D)[None, :])


@dataclass(frozen=True)
class BankConfig:
    block_n: int
    block_c: int
    block_l: int
    block_d: int
    split: int
    num_warps: int
    num_stages: int


def bank_config(n: int, num_classes: int, length: int, dim: int, interpret: bool | None = None) -> BankConfig:
    """One launch configuration per shape; `bank_launch` picks it, the compile check reads it."""
    interpret = interpreter_tiles() if interpret is None else interpret
    block_c = max(16, triton.next_power_of_2(num_classes))
    block_l = max(16, triton.next_power_of_2(length))
    if interpret:  # few, large programs; SPLIT = 2 still exercises the split runs
        return BankConfig(block_n=256, block_c=block_c, block_l=block_l,
                          block_d=max(16, min(triton.next_power_of_2(dim), 128)), split=2,
                          num_warps=4, num_stages=1)
    # [BLOCK_N, BLOCK_L] positives and sigmoids plus [BLOCK_N, BLOCK_C] negatives stay in
    # registers: 32 pixels over 4 warps for queues and class axes up to 64, else 16 over 8 warps
    # (and 16-channel chunks for wide class axes: 32 spilled 8 B to 1.9 KB at C = 256 in
    # python -m kernels.compile_check); about 4096 pixels per program for an average class.
    wide = max(block_l, block_c) > 64
    split = max(1, min(32, n // max(1, num_classes * 4096)))
    return BankConfig(block_n=16 if wide else 32, block_c=block_c, block_l=block_l,
                      block_d=16 if block_c > 64 else 32, split=split, num_warps=8 if wide else 4,
                      num_stages=1)


def bank_launch(Z, ORDER, BOUNDS, BANK, LEN, MEANS, LOSS, G, *, z, n, num_classes, length,
                dim) -> Launch:
    """The BankCL kernel's launch: tensors (or the compile check's pointer stand-ins) and the
    features' `PixelLayout` ``z``; G None: no gradient (LOSS stands in, never written)."""
    cfg = bank_config(n, num_classes, length, dim)
    args = (("Z", Z), *z.args("z"), ("HW", max(1, z.hw)), ("ORDER", ORDER), ("BOUNDS", BOUNDS),
            ("BANK", BANK), ("LEN", LEN), ("MEANS", MEANS), ("LOSS", LOSS),
            ("G", LOSS if G is None else G), ("C", num_classes), ("L", length), ("D", dim),
            ("SPLIT", cfg.split), ("BLOCK_N", cfg.block_n), ("BLOCK_C", cfg.block_c),
            ("BLOCK_L", cfg.block_l), ("BLOCK_D", cfg.block_d), ("HAS_GRAD", G is not None),
            ("MAP", not z.rows))
    return Launch(_bank_contrastive_kernel, args, (num_classes + 1, cfg.split), cfg.num_warps,
                  cfg.num_stages)


def _queue_means(bank, counts, acc, temperature):
    """bbar_c / tau: the mean of each class's queue (``counts``: the lengths, host ints)."""
    return torch.stack([bank[c, :k].to(acc).mean(0) for c, k in enumerate(counts)]) / temperature


def bank_forward_triton(feats, labels, bank, lengths, counts, temperature, ignore_index, want_grad):
    """Launch the kernel: per-pixel losses [N] and, if wanted, the gradient buffer. ``lengths``:
    the [C] tensor the kernel reads; ``counts``: the same lengths as host ints."""
    num_classes, length, dim = bank.shape
    n = labels.numel()
    entries = (bank.float() / temperature).contiguous()
    means = _queue_means(bank, counts, torch.float32, temperature)
    order, bounds = sort_by_class(labels, num_classes, ignore_index)
    bounds = torch.cat([bounds, bounds.new_full((1,), n)])  # the ignored pixels' run: [C + 1]
    per_pixel = poisoned_empty(n, device=feats.device)
    grad = gradient_buffer(feats, torch.float32) if want_grad else None
    bank_launch(feats, order, bounds, entries, lengths.to(torch.int64).contiguous(), means.contiguous(),
                per_pixel, grad, z=pixel_layout(feats), n=n, num_classes=num_classes,
                length=length, dim=dim)()
    return per_pixel, grad


def _bank_chunk_rows(length: int, num_classes: int, dim: int) -> int:
    # Temporaries per chunk are chunk x max(L, C, D) floats: keep them near 4M elements.
    return max(64, (1 << 22) // max(length, num_classes, dim))


def _softplus(t):
    # log(1 + exp(t)) without overflow and without softplus's linear cut-off above 20.
    return t.clamp(min=0) + torch.log1p(torch.exp(-t.abs()))


def bank_forward_torch(feats, labels, bank, lengths, temperature, ignore_index, want_grad):
    """Per-pixel losses [N] and, if wanted, the gradient buffer of their sum."""
    acc = torch.float64 if feats.dtype == torch.float64 else torch.float32
    num_classes = bank.shape[0]
    entries = bank.to(acc) / temperature
    means = _queue_means(bank, lengths, acc, temperature)
    per_pixel = torch.zeros(labels.numel(), dtype=acc, device=feats.device)
    grad = gradient_buffer(feats, acc).zero_() if want_grad else None
    order, bounds = sort_by_class(labels, num_classes, ignore_index)
    bounds = bounds.tolist()
    for c in range(num_classes):
        members = order[bounds[c]:bounds[c + 1]]
        if members.numel() == 0:
            continue
        queue = entries[c, :lengths[c]]
        step = _bank_chunk_rows(queue.shape[0], num_classes, feats.shape[1])
        for start in range(0, members.numel(), step):
            idx = members[start:start + step]
            zc = gather_pixels(feats, idx).to(acc)
            pos = zc @ queue.T
            neg = zc @ means.T
            neg[:, c] = float("-inf")
            lse = torch.logsumexp(neg, dim=1)  # -inf when C = 1: no negatives, l = 0
            t = lse[:, None] - pos
            per_pixel[idx] = _softplus(t).mean(dim=1)
            if want_grad:
                sig = torch.sigmoid(t) / queue.shape[0]
                g = -(sig @ queue)
                if num_classes > 1:
                    g += sig.sum(dim=1, keepdim=True) * (torch.softmax(neg, dim=1) @ means)
                scatter_pixels(grad, idx, g)
    return per_pixel, grad


@torch.compiler.disable  # a graph break under torch.compile (kernels/__init__.py)
def bank_contrastive_loss(feats, labels, bank, *, temperature=100.0, ignore_index=255,
                          reduction="mean", reg_weight=0.0, mean=None):
    """Memory-bank pixel contrastive loss (SePiCo BankCL).

    Args:
        feats: [N, D] rows or a [B, D, h, w] map (any strides) of float32, float16 or bfloat16
            embeddings (float64 too); its gradient comes in the map's layout, like
            `dist_contrastive_loss`'s.
        labels: one int64 or int32 label per pixel ([N] or [B, h, w]) in [0, C) or ``ignore_index``,
            or a ``kernels.CheckedLabels`` of them (as for ``dist_contrastive_loss``).
        bank: a ``kernels.MemoryBank(queues, lengths)``: [C, L, D] queues, class c's entries
            ``queues[c, :lengths[c]]`` oldest first, constants; lengths [C] integers in [1, L]
            (``ClassDistributionEstimator.memory_bank``).
        temperature: tau. reduction: ``"mean"`` over valid pixels, ``"sum"`` or ``"none"``.
        reg_weight, mean: SePiCo's regulariser (``kernels.dist_contrastive_loss``) and the
            [C, D] class means it needs (required when ``reg_weight > 0``).

    Returns:
        The loss (float32; float64 for float64 feats). A zero connected to ``feats`` when no
        pixel is valid. Extra memory: the gradient buffer plus chunk x max(L, C, D) temporaries.
    """
    check_feats(feats)
    given_labels, labels = labels, label_tensor(labels)
    check_labels(labels, feats)
    feats = pixel_map(feats)
    dim = feats.shape[1]
    check_loss_options(temperature, reduction, reg_weight)
    if not isinstance(bank, MemoryBank):
        raise TypeError(f"bank must be a kernels.MemoryBank(queues [C, L, D], lengths [C]), got "
                        f"{type(bank).__name__}")
    bank, lengths = bank
    if not isinstance(bank, torch.Tensor) or bank.dim() != 3 or bank.shape[2] != dim:
        shape = tuple(bank.shape) if isinstance(bank, torch.Tensor) else type(bank).__name__
        raise ValueError(f"bank.queues must have shape [C, L, {dim}] (D from feats), got {shape}")
    if not bank.is_floating_point():
        raise TypeError(f"bank.queues must be floating point, got {bank.dtype}")
    num_classes = bank.shape[0]
    if not 1 <= num_classes <= 256:
        raise ValueError(f"bank.queues must hold at least 1 and at most 256 classes, got C = {num_classes}")
    check_dim(dim, False)
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (num_classes,) or lengths.is_floating_point():
        raise ValueError(f"bank.lengths must be an integer tensor of shape [{num_classes}]")
    for name, t in (("bank.queues", bank), ("mean", mean)):
        if t is not None and t.requires_grad:
            raise ValueError(f"{name} must not require grad: gradients flow to feats only")
    if reg_weight > 0:
        if mean is None:
            raise ValueError("mean [C, D] is required when reg_weight > 0")
        if tuple(mean.shape) != (num_classes, dim):
            raise ValueError(f"mean must have shape [{num_classes}, {dim}], got {tuple(mean.shape)}")
    check_same_device(feats=feats, labels=labels, bank=bank, mean=mean)
    counts = lengths.tolist()
    for c, n in enumerate(counts):
        if n < 1:
            raise ValueError(f"bank[{c}] is empty: BankCL needs at least one entry per class "
                             "(an estimator with memory_length=0 keeps no bank)")
        if n > bank.shape[1]:
            raise ValueError(f"bank.lengths[{c}] = {n} exceeds the queues' L = {bank.shape[1]}")
    check_label_range(given_labels, num_classes, ignore_index)
    acc = torch.float64 if feats.dtype == torch.float64 else torch.float32
    labels = labels.reshape(-1).contiguous()
    on_triton = resolve_backend(feats, bank, mean) == "triton"
    too_large = bank.shape[1] > MAX_TRITON_LENGTH or num_classes > MAX_TRITON_CLASSES
    if on_triton and too_large and requested_backend() != "triton":
        on_triton = False  # auto: the torch path takes any size
    elif on_triton and too_large:
        raise ValueError(f"the triton backend takes at most {MAX_TRITON_CLASSES} classes and queues of "
                         f"at most {MAX_TRITON_LENGTH} entries, got C = {num_classes}, L = "
                         f"{bank.shape[1]} (the torch backend takes any: kernels.backend('torch'))")
    if on_triton:
        def forward(z, y, w, stats, want_grad):
            return bank_forward_triton(z, y, stats[0], stats[1], counts, temperature, ignore_index,
                                       want_grad)
    else:
        def forward(z, y, w, stats, want_grad):
            return bank_forward_torch(z, y, stats[0], counts, temperature, ignore_index, want_grad)
    params = PixelLossParams(name="bank_contrastive_loss", ignore_index=ignore_index,
                             reduction=reduction, reg_weight=float(reg_weight),
                             temperature=temperature, forward=forward)
    return pixel_loss(feats, labels, None, None if mean is None else mean.detach().to(acc), params,
                      (bank.detach(), lengths))

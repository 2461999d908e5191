"""Fused distribution-aware pixel contrastive loss, forward and gradient in one pass (design 4).

With the statistics scaled on the host, M_c = mu_c / tau and A_c = r / (2 tau^2) S_c (full:
symmetrised, (S_c + S_c^T) / 2), the logit of pixel i for class c is

    s_ic = z_i . M_c + quad_c(z_i),   quad_c(z) = sum_d A_cd z_d^2  or  z^T A_c z,

and the per-pixel loss and its gradient are

    l_i     = logsumexp_c s_ic - z_i . M_{y_i}
    dl_i/dz = sum_c (p_ic - [c = y_i]) M_c + 2 sum_c p_ic A_c z_i,   p_i = softmax(s_i).

`scaled_statistics` computes M and S / (2 tau^2) once per statistics (`ScaledStatistics`); a call
with a ratio r other than 1 multiplies the latter by r (O(C D^2) on the host, nothing with r = 1,
the published ratio).

A program owns BLOCK_N pixels and the whole padded class axis, so the logsumexp stays in
registers (no cross-program merge, no atomics). It walks D in BLOCK_D chunks twice: once to
build the BLOCK_N x BLOCK_C logits with tl.dot, once to write w_i * dl_i/dz_i into a float32
buffer shaped like the input. The input is rows [N, D] or a whole [B, D, h, w] map in one launch
(`PixelLayout`, any strides), and the buffer has the map's layout, so it becomes the gradient
autograd hands on: the backward only scales it by grad_output (float32 input: no copy). Nothing N x C x D exists:
the full-covariance products A_c z are formed one class and one BLOCK_D column chunk at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._pixel_loss import PixelLossParams, check_loss_options, pixel_loss
from ._backend import interpreter_tiles, resolve_backend
from ._checks import (check_dim, check_feats, check_label_range, check_labels, check_pixel_values,
                      check_same_device, check_stats, Covariance, label_tensor, tensor_version)
from ._launch import gradient_buffer, Launch, poisoned_empty
from ._layout import image_rows, pixel_layout, pixel_map


@triton.jit
def _dot_operand(x, PRECISION: tl.constexpr):
    """A float32 tl.dot operand; under "tf32" rounded to TF32 (10 mantissa bits, to nearest even,
    Inf and NaN kept), as Triton's TF32 tensor-descriptor loads round. Without it the tensor
    cores truncate the low bits (tl.dot's documentation warns of this): a bias that left the
    gradient 1e-3 off float64 on an H200, three times the eager TF32 reference's error
    (tests/test_cuda.py). The statistics' tiles are rounded again by every program: 1 / BLOCK_N
    of the dot's work, not worth a second copy of M and A."""
    if PRECISION == "tf32":
        bits = x.to(tl.int32, bitcast=True)
        rounded = (bits + (((bits >> 13) & 1) + 0xFFF)) & -8192
        x = tl.where((bits & 0x7F800000) == 0x7F800000, x, rounded.to(tl.float32, bitcast=True))
    return x


@triton.jit
def _cov_times_z(z_rows, stride_zd, mask_n, A_c, offs_j, mask_j, D,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """[BLOCK_N, BLOCK_D] chunk (columns offs_j) of z @ A_c for one class's D x D matrix
    (``z_rows``: the [BLOCK_N, 1] row pointers of the program's pixels)."""
    u = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_D):
        offs_k = k0 + tl.arange(0, BLOCK_D)
        mask_k = offs_k < D
        zk = tl.load(z_rows + offs_k.to(tl.int64)[None, :] * stride_zd,
                     mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        a = tl.load(A_c + offs_k[:, None] * D + offs_j[None, :],
                    mask=mask_k[:, None] & mask_j[None, :], other=0.0)
        u = tl.dot(_dot_operand(zk, PRECISION), _dot_operand(a, PRECISION), u, input_precision=PRECISION)
    return u


@triton.jit
def _dist_contrastive_kernel(
    Z,                         # feats, float32 / float16 / bfloat16, in a PixelLayout:
    stride_zb, stride_zp, stride_zd,  # rows [N, D] or a map [B, D, h, w] (image, pixel, channel)
    Y,                         # labels [N] int32 / int64, pixels in (image, row, column) order
    W,                         # per-pixel weights [N] float32 (HAS_WEIGHT)
    M,                         # [C, D] float32: mean / tau
    A,                         # [C, D] or [C, D, D] float32: r / (2 tau^2) covariance (COV_MODE)
    LOSS,                      # [N] float32 out: w_i * l_i, 0 at ignored pixels
    G,                         # float32 out shaped like feats, contiguous: w_i * dl_i/dz_i (HAS_GRAD)
    HW, C, D,                  # pixels per image, classes, channels
    ignore_index,              # label of pixels that contribute nothing
    BLOCK_N: tl.constexpr,     # pixels per program
    BLOCK_C: tl.constexpr,     # padded class axis (power of two >= max(C, 16))
    BLOCK_D: tl.constexpr,     # channels per chunk
    COV_MODE: tl.constexpr,    # a Covariance value: "none" (ProtoCL), "diag", "full"
    HAS_WEIGHT: tl.constexpr,  # multiply loss and gradient by W
    HAS_GRAD: tl.constexpr,    # write G (feats requires grad)
    PRECISION: tl.constexpr,   # tl.dot input precision: "ieee" (exact fp32) or "tf32"
    MAP: tl.constexpr,         # a [B, D, h, w] map with a contiguous map G; else rows [N, D]
):
    """Per-pixel loss and gradient of the distribution-aware contrastive loss."""
    # Grid (pixel blocks, images): a program's pixels are consecutive pixels of one image.
    start = tl.program_id(0).to(tl.int64) * BLOCK_N
    if MAP:
        image = tl.program_id(1).to(tl.int64)
        Y += image * HW
        LOSS += image * HW
        W += image * HW
        Z += image * stride_zb
        G += image * D * HW
    Y += start
    LOSS += start
    W += start
    Z += start * stride_zp
    G += start if MAP else start * D
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < HW - start
    # Row pointers with 64-bit in-block offsets (and 64-bit channel offsets below): a strided
    # view's (BLOCK_N - 1) * stride_zp or a map's (D - 1) * stride_zd may pass 2^31.
    z_rows = Z + offs_n.to(tl.int64)[:, None] * stride_zp
    y = tl.load(Y + offs_n, mask=mask_n, other=ignore_index)
    valid = mask_n & (y != ignore_index)
    y = tl.where(valid, y, 0)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    is_y = offs_c[None, :] == y[:, None]

    # Pass 1: logits, linear part and quadratic part kept apart so that l = lse(s) - lin_y
    # cancels like the eager reference does.
    lin = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    quad = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        z = tl.load(z_rows + offs_d.to(tl.int64)[None, :] * stride_zd,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        stats_t = offs_c[None, :] * D + offs_d[:, None]
        mask_t = mask_c[None, :] & mask_d[:, None]
        lin = tl.dot(_dot_operand(z, PRECISION),
                     _dot_operand(tl.load(M + stats_t, mask=mask_t, other=0.0), PRECISION), lin,
                     input_precision=PRECISION)
        if COV_MODE == "diag":
            quad = tl.dot(_dot_operand(z * z, PRECISION),
                          _dot_operand(tl.load(A + stats_t, mask=mask_t, other=0.0), PRECISION), quad,
                          input_precision=PRECISION)
    if COV_MODE == "full":
        for c in range(0, C):
            q = tl.zeros([BLOCK_N], dtype=tl.float32)
            for j0 in range(0, D, BLOCK_D):
                offs_j = j0 + tl.arange(0, BLOCK_D)
                mask_j = offs_j < D
                u = _cov_times_z(z_rows, stride_zd, mask_n, A + c * D * D,
                                 offs_j, mask_j, D, BLOCK_N, BLOCK_D, PRECISION)
                zj = tl.load(z_rows + offs_j.to(tl.int64)[None, :] * stride_zd,
                             mask=mask_n[:, None] & mask_j[None, :], other=0.0).to(tl.float32)
                q += tl.sum(zj * u, axis=1)
            quad += tl.where(offs_c[None, :] == c, q[:, None], 0.0)

    logits = tl.where(mask_c[None, :], lin + quad, float("-inf"))
    row_max = tl.max(logits, axis=1)
    e = tl.exp(logits - row_max[:, None])
    denom = tl.sum(e, axis=1)
    lin_y = tl.sum(tl.where(is_y, lin, 0.0), axis=1)
    loss = row_max + tl.log(denom) - lin_y
    if HAS_WEIGHT:
        wt = tl.load(W + offs_n, mask=valid, other=0.0).to(tl.float32)
        loss = loss * wt
    else:
        wt = tl.full([BLOCK_N], 1.0, tl.float32)
    tl.store(LOSS + offs_n, tl.where(valid, loss, 0.0), mask=mask_n)

    if HAS_GRAD:
        # Pass 2: gradient. where() rather than a multiply by 0, so a NaN at an ignored pixel
        # stays out of its (zero) gradient row.
        p = e / denom[:, None]
        coef = tl.where(valid[:, None], (p - is_y.to(tl.float32)) * wt[:, None], 0.0)
        pw = tl.where(valid[:, None], p * wt[:, None], 0.0)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            stats = offs_c[:, None] * D + offs_d[None, :]
            mask_s = mask_c[:, None] & mask_d[None, :]
            g = tl.dot(_dot_operand(coef, PRECISION),
                       _dot_operand(tl.load(M + stats, mask=mask_s, other=0.0), PRECISION),
                       input_precision=PRECISION)
            if COV_MODE == "diag":
                z = tl.load(z_rows + offs_d.to(tl.int64)[None, :] * stride_zd,
                            mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                g += 2.0 * z * tl.dot(_dot_operand(pw, PRECISION),
                                      _dot_operand(tl.load(A + stats, mask=mask_s, other=0.0), PRECISION),
                                      input_precision=PRECISION)
            if COV_MODE == "full":
                for c in range(0, C):
                    p_c = tl.sum(tl.where(offs_c[None, :] == c, pw, 0.0), axis=1)
                    u = _cov_times_z(z_rows, stride_zd, mask_n,
                                     A + c * D * D, offs_d, mask_d, D, BLOCK_N, BLOCK_D, PRECISION)
                    g += (2.0 * p_c)[:, None] * u
            g = tl.where(valid[:, None], g, 0.0)
            if MAP:  # [B, D, h, w]; 64-bit: (D - 1) h w may pass 2^31
                g_ptrs = G + offs_n[:, None] + offs_d.to(tl.int64)[None, :] * HW
            else:  # a [BLOCK_N, D] block of rows [N, D]
                g_ptrs = G + offs_n[:, None] * D + offs_d[None, :]
            tl.store(g_ptrs, g, mask=mask_n[:, None] & mask_d[None, :])


@dataclass(frozen=True)
class LossConfig:
    block_n: int
    block_c: int
    block_d: int
    num_warps: int
    num_stages: int
    maxnreg: int | None = None


def loss_config(num_classes: int, dim: int, cov_mode: Covariance, strided_channels: bool = False,
                interpret: bool | None = None) -> LossConfig:
    """One launch configuration per shape (``strided_channels``: the features are a map, channel
    stride h w, not 1); `loss_launch` picks it, so the compile check reads the same one."""
    interpret = interpreter_tiles() if interpret is None else interpret
    block_c = max(16, triton.next_power_of_2(num_classes))
    if interpret:
        # The interpreter pays per program and per op: large tiles make it fast.
        block_d = max(16, min(triton.next_power_of_2(dim), 128))
        return LossConfig(block_n=1024, block_c=block_c,
                          block_d=block_d, num_warps=4, num_stages=1)
    # Two [BLOCK_N, BLOCK_C] float32 accumulators plus the probabilities must stay in registers:
    # keep BLOCK_N * BLOCK_C at 2048 (64 pixels for C <= 32) and shrink the pixel tile for more
    # classes; tl.dot needs 16 rows, so C > 128 ("wide") has 4096-element tiles. Register counts
    # come from ptxas via `python -m kernels.compile_check` (sm_80 and sm_90a, zero spills):
    # 8 warps halve every per-thread share of those tiles (4 warps spilled 12-488 bytes on sm_80
    # at 64-channel chunks), and wide tiles also take 16-channel chunks.
    block_n = max(16, min(64, 2048 // block_c))
    wide = block_n * block_c > 2048
    if strided_channels:
        # A map's channels are h w elements apart, so a z element needs its own 64-bit address
        # where rows need one per vector: the rows tiles spilled 8-184 bytes on sm_80 / sm_90 at
        # a map (python -m kernels.compile_check); at most 32 pixels and 16-channel chunks over
        # 8 warps did not. Full covariance: 32 pixels, one stage, and ptxas allowed all 255
        # registers (left to its heuristic it held some variants at 128 and spilled 8-20 bytes).
        if cov_mode == Covariance.FULL:
            return LossConfig(block_n=32, block_c=block_c, block_d=16, num_warps=8, num_stages=1,
                              maxnreg=255)
        return LossConfig(block_n=min(32, block_n), block_c=block_c, block_d=16, num_warps=8,
                          num_stages=2)
    if cov_mode == Covariance.FULL:
        # The nested class / chunk loops pipeline badly (spills at num_stages > 1): one stage,
        # 16-channel chunks for the [BLOCK_N, BLOCK_D] product accumulator of z @ A_c (32
        # spilled a few bytes at some dtypes; wide tiles spilled over a kilobyte).
        return LossConfig(block_n=block_n, block_c=block_c, block_d=16,
                          num_warps=8 if wide else 4, num_stages=1)
    block_d = 16 if wide else max(16, min(64, triton.next_power_of_2(dim)))
    return LossConfig(block_n=block_n, block_c=block_c, block_d=block_d, num_warps=8, num_stages=2)


def _dot_precision(feats) -> str:
    # Exact float32 products by default; TF32 only where the caller opted in the PyTorch way.
    if feats.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def loss_launch(Z, Y, W, M, A, LOSS, G, *, z, num_classes, dim, ignore_index, cov_mode,
                precision) -> Launch:
    """The fused kernel's launch: tensors (or the compile check's pointer stand-ins) and the
    features' `PixelLayout` ``z``. The gradient buffer G (None: no gradient) is contiguous in
    the features' shape ([N, D] rows, [B, D, h, w] map; `gradient_buffer`). Absent weight /
    gradient / covariance pointers are replaced by LOSS or M (never read)."""
    cfg = loss_config(num_classes, dim, cov_mode, strided_channels=not z.rows)
    args = (("Z", Z), *z.args("z"), ("Y", Y), ("W", LOSS if W is None else W), ("M", M),
            ("A", M if A is None else A), ("LOSS", LOSS), ("G", LOSS if G is None else G),
            ("HW", z.hw), ("C", num_classes), ("D", dim),
            ("ignore_index", ignore_index),
            ("BLOCK_N", cfg.block_n), ("BLOCK_C", cfg.block_c), ("BLOCK_D", cfg.block_d),
            ("COV_MODE", cov_mode.value), ("HAS_WEIGHT", W is not None), ("HAS_GRAD", G is not None),
            ("PRECISION", precision), ("MAP", not z.rows))
    return Launch(_dist_contrastive_kernel, args, (triton.cdiv(z.hw, cfg.block_n), z.batch),
                  cfg.num_warps, cfg.num_stages, cfg.maxnreg)


def contrastive_forward_triton(feats, labels, m, a, weight, ignore_index, want_grad):
    """Launch the fused kernel: per-pixel losses [N] and, if wanted, the gradient buffer shaped
    like ``feats`` (``m`` = mean / tau, ``a`` = r / (2 tau^2) cov; ``a`` None: ProtoCL)."""
    n = labels.numel()
    per_pixel = poisoned_empty(n, device=feats.device)
    grad = gradient_buffer(feats, torch.float32) if want_grad else None
    loss_launch(feats, labels, weight, m, a, per_pixel, grad, z=pixel_layout(feats),
                num_classes=m.shape[0],
                dim=feats.shape[1], ignore_index=ignore_index, cov_mode=Covariance.of(a),
                precision=_dot_precision(feats))()
    return per_pixel, grad


def _loss_chunk_rows(num_classes: int, dim: int, full: bool) -> int:
    # Chunks sized to stay in cache: about 1 MB of float32 rows (256K elements), and for full
    # covariance about 4 MB for z @ A_c of every class (chunk x C x D).
    if full:
        return max(16, (1 << 20) // (num_classes * dim))
    return max(64, (1 << 18) // dim)


def contrastive_forward_torch(feats, labels, m, a, weight, ignore_index, want_grad):
    """The same math in chunks of pixels, image by image: extra memory O(chunk x C x D), never
    N x C x D.

    Per chunk the logits are held class-major, s^T [C, rows]: MKL runs M @ z^T about twice as
    fast as z @ M^T for this skinny shape (C = 19, D = 256, one core: about 40 against 20
    GFLOP/s), and the gradient's softmax reuses the exponentials of the logsumexp. A map's image
    rows are strided views ([h w, D] with the pixel stride 1), written to the gradient buffer's
    rows of the same layout.
    """
    dim = feats.shape[1]
    n = labels.numel()
    num_classes = m.shape[0]
    acc = m.dtype
    full = a is not None and a.dim() == 3
    diag = a is not None and not full
    per_pixel = torch.empty(n, dtype=acc, device=feats.device)
    grad = gradient_buffer(feats, acc) if want_grad else None
    grad_images = [rows for _, rows in image_rows(grad)] if want_grad else None
    # a_cols[d, c * D + e] = A[c, d, e]: one matmul gives z @ A_c for every class.
    a_cols = a.permute(1, 0, 2).reshape(dim, num_classes * dim) if full else None
    step = _loss_chunk_rows(num_classes, dim, full)
    # [rows, D] scratch, reused: z * z in the forward, then sum_c w p_c A_c in the gradient.
    work = torch.empty(min(step, n), dim, dtype=acc, device=feats.device) if diag else None
    for image, (base, image_feats) in enumerate(image_rows(feats)):
        for start in range(0, image_feats.shape[0], step):
            stop = min(start + step, image_feats.shape[0])
            rows = stop - start
            z = image_feats[start:stop].to(acc)
            pix = slice(base + start, base + stop)
            y = labels[pix]
            valid = y != ignore_index
            y0 = torch.where(valid, y, 0).long()[None, :]
            s = m @ z.T
            lin_y = s.gather(0, y0).squeeze(0)
            if diag:
                s.addmm_(a, torch.mul(z, z, out=work[:rows]).T)
            elif full:
                u = (z @ a_cols).view(rows, num_classes, dim)
                s += torch.bmm(u, z.unsqueeze(2)).squeeze(2).T
            # logsumexp by hand, so that the gradient's softmax reuses the exponentials.
            row_max = s.amax(0)
            e = s.sub_(row_max).exp_()
            total = e.sum(0)
            wt = valid.to(acc) if weight is None else torch.where(valid, weight[pix], 0.0)
            per_pixel[pix] = torch.where(valid, (row_max + total.log() - lin_y) * wt, 0.0)
            if want_grad:
                # pw = w p and coef = w (p - onehot), [C, rows] class-major, 0 at ignored pixels.
                pw = e.mul_(wt / total)
                g = grad_images[image][start:stop]
                if diag:
                    h = torch.mm(pw.T, a, out=work[:rows])
                elif full:
                    h = torch.bmm(pw.T.unsqueeze(1), u).squeeze(1)
                coef = pw.scatter_add_(0, y0, -wt[None, :])
                torch.mm(coef.T, m, out=g)
                if diag:
                    g.addcmul_(z, h, value=2.0)
                elif full:
                    g.add_(h, alpha=2.0)
                # A NaN feature at an ignored row would leak through w = 0 above.
                ignored = torch.nonzero(~valid).squeeze(1)
                if ignored.numel():
                    g.index_fill_(0, ignored, 0.0)
    return per_pixel, grad


@dataclass(frozen=True, eq=False)
class ScaledStatistics:
    """Class statistics scaled for the loss once (``kernels.scaled_statistics``) and taken by any
    number of ``dist_contrastive_loss`` calls in place of ``mean`` and ``cov``: M = mean / tau
    and A = cov / (2 tau^2), symmetrised when full (a call with a ratio r other than 1 takes
    r A). A call checks from metadata that ``mean`` and the covariance it was made from were
    not written in place since (their version counters)."""
    mean: torch.Tensor                # [C, D] as given, detached: the regulariser's
    cov: torch.Tensor | None          # as given, detached (for its version counter)
    scaled_mean: torch.Tensor         # [C, D]: mean / tau
    scaled_cov: torch.Tensor | None   # [C, D] or [C, D, D]: cov / (2 tau^2); None for ProtoCL
    temperature: float
    versions: tuple                   # of mean and cov (None: an inference tensor, or no cov)


def _scale(mean, cov, temperature, acc):
    """M = mean / tau and A = cov / (2 tau^2) (symmetrised when full) in ``acc``: O(C D^2)."""
    m = (mean.to(acc) / temperature).contiguous()
    if cov is None:
        return m, None
    a = cov.to(acc)
    if a.dim() == 3:
        a = 0.5 * (a + a.transpose(1, 2))
    return m, (a * (1.0 / (2.0 * temperature * temperature))).contiguous()


def _check_constant_stats(mean, cov) -> None:
    for name, t in (("mean", mean), ("cov", cov)):
        if t is not None and t.requires_grad:
            raise ValueError(f"{name} must not require grad: the class statistics are constants "
                             f"(detach them); gradients flow to feats only")


def scaled_statistics(mean, cov=None, *, temperature=100.0) -> ScaledStatistics:
    """``mean`` [C, D] and ``cov`` ([C, D] diagonal, [C, D, D] full, or None for ProtoCL) checked
    and scaled once for ``dist_contrastive_loss`` (``ScaledStatistics``), in float32 (float64
    for float64 ``mean``). ``sepico.method.SePiCo`` makes one after each estimator update and
    hands it to every loss of the step."""
    if not isinstance(mean, torch.Tensor):
        raise TypeError(f"mean must be a torch.Tensor, got {type(mean).__name__}")
    if mean.dim() != 2:
        raise ValueError(f"mean must have shape [C, D], got {tuple(mean.shape)}")
    check_stats(mean, cov, None, mean.shape[1])
    _check_constant_stats(mean, cov)
    check_loss_options(temperature, "mean", 0.0)
    check_same_device(mean=mean, cov=cov)
    acc = torch.promote_types(torch.float32, mean.dtype)
    m, a = _scale(mean, cov, temperature, acc)
    return ScaledStatistics(mean.detach(), None if cov is None else cov.detach(), m, a,
                            float(temperature), (tensor_version(mean), tensor_version(cov)))


@torch.compiler.disable  # a graph break under torch.compile (kernels/__init__.py)
def dist_contrastive_loss(feats, labels, mean, cov=None, *, ratio=1.0, temperature=None,
                          ignore_index=255, weight=None, reduction="mean", reg_weight=0.0):
    """Distribution-aware pixel contrastive loss (SePiCo DistCL; ProtoCL when ``cov`` is None).

    Args:
        feats: [N, D] rows or a [B, D, h, w] map (any strides) of float32, float16 or bfloat16
            embeddings (float64 on the torch backend). A map runs in one launch and gets its
            gradient in its own layout (contiguous, or channels-last for a channels-last map).
        labels: one int64 or int32 label per pixel, [N] or [B, h, w], in [0, C) or ``ignore_index``
            (range-checked, one host sync), or a ``kernels.CheckedLabels`` of them (not checked again).
        mean: [C, D] class means, or a ``kernels.ScaledStatistics`` (``kernels.scaled_statistics``:
            the statistics checked and scaled once, taken as they are; ``cov`` then None).
            cov: [C, D] diagonal or [C, D, D] full covariances, or None. Statistics are
            constants: passing ones that require grad is an error.
        ratio: covariance scale r. temperature: tau, a divisor of the logits: 100.0 when None
            (with ``ScaledStatistics``: theirs; another value is an error).
        weight: optional per-pixel weights ([N] or [B, h, w]) multiplying each pixel's loss.
        reduction: ``"mean"`` over valid (non-ignored) pixels, 0 when there are none; ``"sum"``;
            ``"none"`` for per-pixel losses ([N] or [B, h, w]), 0 at ignored pixels.
        reg_weight: with ``"mean"``, adds ``reg_weight`` times SePiCo's regulariser
            R = sum_c log softmax_c(zbar . mu_c / tau) / (C log C), zbar the mean valid embedding
            (0 without valid pixels, and for C = 1 where the reference's 0 / 0 is NaN). Its
            gradient is added into the same buffer.

    Returns:
        The loss, float32 (float64 for float64 feats). Gradients flow to ``feats`` only; the
        kernel computes them in the forward. NaN or Inf in the features of a valid pixel gives a
        NaN or Inf loss (not an error); ignored pixels are never read into the per-pixel losses
        (the regulariser's zbar is a matrix-vector product with weight 0 at ignored pixels).
    """
    check_feats(feats)
    given_labels, labels = labels, label_tensor(labels)
    check_labels(labels, feats)
    feats = pixel_map(feats)
    dim = feats.shape[1]
    acc = torch.float64 if feats.dtype == torch.float64 else torch.float32
    scaled = None
    if isinstance(mean, ScaledStatistics):
        stats = mean
        if cov is not None:
            raise ValueError("cov must be None when mean is a kernels.ScaledStatistics (it holds the "
                             "scaled covariance)")
        if temperature is not None and temperature != stats.temperature:
            raise ValueError(f"temperature={temperature!r}, but the statistics were scaled for "
                             f"temperature={stats.temperature!r}")
        if (tensor_version(stats.mean), tensor_version(stats.cov)) != stats.versions:
            raise ValueError("mean or cov were written in place after kernels.scaled_statistics "
                             "scaled them; scale them again")
        temperature = stats.temperature
        mean, cov = stats.mean, stats.scaled_cov
        scaled = (stats.scaled_mean.to(acc), None if cov is None else cov.to(acc))
        if mean.shape[1] != dim:
            raise ValueError(f"the statistics have D = {mean.shape[1]} channels but feats have {dim}")
    else:
        temperature = 100.0 if temperature is None else temperature
        check_stats(mean, cov, None, dim)
        _check_constant_stats(mean, cov)
    num_classes = mean.shape[0]
    check_dim(dim, cov is not None and cov.dim() == 3)
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            raise TypeError("weight must be a floating-point torch.Tensor with one value per pixel, or None")
        check_pixel_values(weight, feats, "weight")
        if weight.requires_grad:
            raise ValueError("weight must not require grad: gradients flow to feats only")
    check_loss_options(temperature, reduction, reg_weight)
    if not (isinstance(ratio, (int, float)) and abs(ratio) < float("inf")):
        raise ValueError(f"ratio must be a finite number, got {ratio!r}")
    check_same_device(feats=feats, labels=labels, mean=mean, cov=cov, weight=weight)
    check_label_range(given_labels, num_classes, ignore_index)

    on_triton = resolve_backend(feats, mean, cov) == "triton"
    m, a = scaled if scaled is not None else _scale(mean, cov, temperature, acc)
    if ratio == 0:
        a = None  # the quadratic term cannot matter: ProtoCL's kernel
    elif a is not None and ratio != 1:
        a = a * ratio
    mean = mean.detach()
    labels = labels.reshape(-1).contiguous()
    weight = None if weight is None else weight.to(acc).reshape(-1).contiguous()
    forward = contrastive_forward_triton if on_triton else contrastive_forward_torch
    params = PixelLossParams(name="dist_contrastive_loss", ignore_index=ignore_index,
                             reduction=reduction, reg_weight=float(reg_weight),
                             temperature=temperature,
                             forward=lambda z, y, w, stats, want_grad: forward(
                                 z, y, *stats, w, ignore_index, want_grad))
    return pixel_loss(feats, labels, weight, mean.to(acc), params, (m, a))

"""What the per-pixel losses (DistCL / ProtoCL, BankCL) share: the reductions, SePiCo's
regulariser and one autograd Function that hands on the gradient the forward wrote.

Each loss computes, in its forward, per-pixel losses l_i and a float32 buffer shaped like the
features holding dl_i/dz_i (`kernels._launch.gradient_buffer`). The Function's backward adds the
regulariser's gradient into that buffer in place and scales it by grad_output: the buffer itself
becomes the features' gradient, so no second [N, D] tensor exists at any point.

The regulariser is added to the mean once per call:

    R = sum_c log softmax_c(zbar . mu_c / tau) / (C log C),   zbar = mean of the valid pixels' z,

0 without valid pixels and for C = 1 (where the reference's 0 / (1 log 1) is NaN). Its gradient
is the same vector dR/dzbar / n_valid at every valid pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import pixel_shape
from ._layout import image_rows

REDUCTIONS = ("mean", "sum", "none")


def check_loss_options(temperature, reduction, reg_weight) -> None:
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not (isinstance(reg_weight, (int, float)) and 0 <= reg_weight < float("inf")):
        raise ValueError(f"reg_weight must be a finite number >= 0, got {reg_weight!r}")
    if reg_weight > 0 and reduction != "mean":
        raise ValueError(f"reg_weight > 0 needs reduction='mean' (the regulariser is added to the "
                         f"mean), got reduction={reduction!r}")


@dataclass(frozen=True)
class PixelLossParams:
    """Non-tensor options of one call, kept on the autograd context. ``forward(feats, labels,
    weight, stats, want_grad)`` returns the per-pixel losses [N] and, if wanted, the gradient
    buffer of their sum."""
    name: str
    ignore_index: int
    reduction: str
    reg_weight: float
    temperature: float
    forward: callable


def _valid_mean(feats, labels, n_valid, ignore_index, acc):
    """zbar: the mean embedding of the valid pixels, as matrix-vector products image by image
    (no [N, D] temporary for float32 input)."""
    total = None
    for base, rows in image_rows(feats):
        valid = (labels[base:base + rows.shape[0]] != ignore_index).to(acc)
        part = rows.T.to(acc).mv(valid)
        total = part if total is None else total + part
    return total / n_valid.clamp(min=1).to(acc)


def _regulariser(zbar, mean, temperature, n_valid):
    num_classes = mean.shape[0]
    log_p = torch.log_softmax(zbar @ mean.T / temperature, dim=0).sum()
    reg = log_p / (num_classes * math.log(num_classes)) if num_classes > 1 else log_p
    return torch.where(n_valid > 0, reg, torch.zeros_like(reg))


def _regularised(feats, labels, n_valid, mean, params, acc, with_grad):
    """(R, dR/dzbar or None)."""
    zbar = _valid_mean(feats, labels, n_valid, params.ignore_index, acc)
    if not with_grad:
        return _regulariser(zbar, mean, params.temperature, n_valid), None
    with torch.enable_grad():
        zbar.requires_grad_(True)
        reg = _regulariser(zbar, mean, params.temperature, n_valid)
        (dzbar,) = torch.autograd.grad(reg, zbar)
    return reg.detach(), dzbar


def _reduce(per_pixel, n_valid, reduction, shape):
    if reduction == "none":
        return per_pixel.view(shape)
    total = per_pixel.sum()
    return total / n_valid.clamp(min=1) if reduction == "mean" else total


class _PixelLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats, labels, weight, mean, params, stats):
        per_pixel, grad = params.forward(feats, labels, weight, stats, True)
        n_valid = (labels != params.ignore_index).sum()
        loss = _reduce(per_pixel, n_valid, params.reduction, pixel_shape(feats))
        dzbar = None
        if params.reg_weight > 0:
            reg, dzbar = _regularised(feats, labels, n_valid, mean, params, per_pixel.dtype, True)
            loss = loss + params.reg_weight * reg
        ctx.save_for_backward(feats, labels, weight, n_valid, dzbar, *stats)
        ctx.params = params
        ctx.grad = grad
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        params = ctx.params
        if torch.is_grad_enabled():
            raise RuntimeError(f"{params.name} has a first-order gradient only: double backward "
                               "(create_graph=True) is not supported")
        feats, labels, weight, n_valid, dzbar, *stats = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            # A second backward through a retained graph: the stored gradient was handed out by
            # the first one, so compute it again from the saved inputs.
            _, grad = params.forward(feats, labels, weight, tuple(stats), True)
        if dzbar is not None:
            # d(reg_weight R)/dz_i = reg_weight valid_i dR/dzbar / n_valid: added in place and
            # broadcast (no second [N, D] tensor), before the 1 / n_valid of the mean below.
            valid = (labels != params.ignore_index).to(grad.dtype).view(pixel_shape(feats)).unsqueeze(1)
            grad.addcmul_(valid, dzbar.view(1, -1, *([1] * (feats.dim() - 2))), value=params.reg_weight)
        if params.reduction == "none":
            grad.mul_(grad_output.to(grad.dtype).unsqueeze(1))
        elif params.reduction == "mean":
            grad.mul_((grad_output / n_valid.clamp(min=1)).to(grad.dtype))
        else:
            grad.mul_(grad_output.to(grad.dtype))
        return grad.to(feats.dtype), None, None, None, None, None


def pixel_loss(feats, labels, weight, mean, params: PixelLossParams, stats: tuple):
    """The reduced loss (plus ``reg_weight`` R); through the Function when ``feats`` needs a
    gradient. ``labels`` and ``weight`` are flat [N] and contiguous; ``mean`` [C, D] in the
    accumulation dtype (used by the regulariser only)."""
    if torch.is_grad_enabled() and feats.requires_grad:
        return _PixelLossFunction.apply(feats, labels, weight, mean, params, stats)
    per_pixel, _ = params.forward(feats, labels, weight, stats, False)
    n_valid = (labels != params.ignore_index).sum()
    loss = _reduce(per_pixel, n_valid, params.reduction, pixel_shape(feats))
    if params.reg_weight > 0:
        loss = loss + params.reg_weight * _regularised(feats, labels, n_valid, mean, params,
                                                       per_pixel.dtype, False)[0]
    return loss

"""Eager PyTorch references, written the obvious way and correct in float64.

They are the parity oracle of the tests and the "reference PyTorch loss" of the benchmarks: one-hot
sums, N x C logits, einsum for the full quadratic form. They build large temporaries on purpose
(that is what the kernels in ``kernels/`` avoid) and check nothing beyond what torch itself checks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _one_hot(labels, num_classes, ignore_index, dtype):
    """[N, C] one-hot of the labels, a zero row at ignored pixels."""
    valid = labels != ignore_index
    hot = F.one_hot(torch.where(valid, labels, 0).long(), num_classes).to(dtype)
    return hot * valid[:, None].to(dtype)


def class_moments_reference(feats, labels, num_classes, *, ignore_index=255, covariance="diag"):
    """(count [C], total [C, D], second [C, D] or [C, D, D]) in the dtype of ``feats``."""
    hot = _one_hot(labels, num_classes, ignore_index, feats.dtype)
    count = hot.sum(0)
    total = hot.T @ feats
    if covariance == "full":
        second = torch.einsum("nc,nd,ne->cde", hot, feats, feats)
    else:
        second = hot.T @ (feats * feats)
    return count, total, second


def update_class_distribution_reference(count, mean, cov, feats, labels, *, ignore_index=255):
    """Count-weighted merge (design section 3) with a two-pass (centred) batch covariance."""
    num_classes = mean.shape[0]
    feats = feats.to(mean.dtype)
    hot = _one_hot(labels, num_classes, ignore_index, mean.dtype)
    n_b = hot.sum(0)
    batch_mean = (hot.T @ feats) / n_b.clamp(min=1)[:, None]
    centred = (feats - batch_mean[torch.where(labels != ignore_index, labels, 0).long()]) * hot.sum(1, keepdim=True)
    if cov.dim() == 3:
        batch_cov = torch.einsum("nc,nd,ne->cde", hot, centred, centred) / n_b.clamp(min=1)[:, None, None]
    else:
        batch_cov = (hot.T @ (centred * centred)) / n_b.clamp(min=1)[:, None]
    total = count + n_b
    w = torch.where(total > 0, n_b / torch.where(total > 0, total, 1), 0)
    delta = mean - batch_mean
    new_mean = (1 - w)[:, None] * mean + w[:, None] * batch_mean
    if cov.dim() == 3:
        w3 = w[:, None, None]
        new_cov = (1 - w3) * cov + w3 * batch_cov + w3 * (1 - w3) * torch.einsum("cd,ce->cde", delta, delta)
    else:
        w2 = w[:, None]
        new_cov = (1 - w2) * cov + w2 * batch_cov + w2 * (1 - w2) * delta * delta
    return total, new_mean, new_cov


def dist_contrastive_loss_reference(feats, labels, mean, cov=None, *, ratio=1.0, temperature=100.0,
                                    ignore_index=255, weight=None, reduction="mean"):
    """Design section 4 with N x C logits; autograd gives the gradient."""
    lin = feats @ mean.T / temperature
    logits = lin
    if cov is not None:
        if cov.dim() == 3:
            quad = torch.einsum("nd,cde,ne->nc", feats, cov, feats)
        else:
            quad = (feats * feats) @ cov.T
        logits = lin + ratio / (2 * temperature ** 2) * quad
    valid = labels != ignore_index
    y = torch.where(valid, labels, 0).long()
    per_pixel = torch.logsumexp(logits, dim=1) - lin.gather(1, y[:, None]).squeeze(1)
    if weight is not None:
        per_pixel = per_pixel * weight
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    if reduction == "none":
        return per_pixel
    if reduction == "sum":
        return per_pixel.sum()
    return per_pixel.sum() / valid.sum().clamp(min=1)

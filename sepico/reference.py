"""Eager PyTorch references, written the obvious way and correct in float64.

They are the parity oracle of the tests and the "reference PyTorch loss" of the benchmarks: one-hot
sums, N x C logits, einsum for the full quadratic form. They build large temporaries on purpose
(that is what the kernels in ``kernels/`` avoid) and check nothing beyond what torch itself checks.
"""
from __future__ import annotations

import math

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
    """Count-weighted merge (kernels/README.md, the update) with a two-pass (centred) batch covariance."""
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
    """DistCL (kernels/README.md, the loss) with N x C logits; autograd gives the gradient."""
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


# --------------------------------------------------------------------------- SePiCo losses on
# feature maps, label downscaling, BankCL and the estimator: the oracles of sepico.losses and
# sepico.estimator, written the way the public SePiCo code computes them (one-hot label
# pooling, boolean pixel selection, per-class loops), correct in float64.

def downscale_labels_reference(label, scale_factor, *, num_classes, min_ratio=0.75, ignore_index=255):
    """Majority vote by average-pooling a [B, C + 1, H, W] one-hot (ignore is class C) and taking
    the first maximal class; ignore when ignore wins or the share is below ``min_ratio``."""
    if label.dim() == 3:
        label = label.unsqueeze(1)
    if scale_factor == 1:
        return label.long().clone()
    out = label.long().clone()
    out[out == ignore_index] = num_classes
    hot = F.one_hot(out.squeeze(1), num_classes + 1).permute(0, 3, 1, 2)
    share, out = torch.max(F.avg_pool2d(hot.float(), kernel_size=scale_factor), dim=1, keepdim=True)
    out[out == num_classes] = ignore_index
    out[share < min_ratio] = ignore_index
    return out


def contrast_pixels_reference(feat, label, *, use_avg_pool=True, scale_min_ratio=0.75,
                              num_classes=19, ignore_index=255):
    """Labels at feature resolution, then the valid pixels: (feats [N, D], labels [N])."""
    if label.dim() == 3:
        label = label.unsqueeze(1)
    if use_avg_pool:
        factor = label.shape[-1] // feat.shape[-1]
        label = downscale_labels_reference(label, factor, num_classes=num_classes,
                                           min_ratio=scale_min_ratio, ignore_index=ignore_index)
    else:
        label = F.interpolate(label.float(), size=feat.shape[-2:], mode="nearest").long()
    feats = feat.permute(0, 2, 3, 1).reshape(-1, feat.shape[1])
    labels = label.reshape(-1)
    keep = labels != ignore_index
    return feats[keep], labels[keep]


def proto_reg_reference(feats, mean, temperature, num_classes):
    """sum_c log softmax_c(zbar . mu_c / tau) / (C log C) over the valid pixels' mean zbar; 0 for
    C = 1 (where the public code's 0 / 0 gives NaN)."""
    zbar = feats.mean(0, keepdim=True)
    log_p = torch.log_softmax(zbar @ mean.T / temperature, dim=1).sum()
    return log_p / (num_classes * math.log(num_classes)) if num_classes > 1 else log_p


def _connected_zero(feat):
    # Where the public code returns a fresh constant 0, this project returns a zero that
    # backpropagates (zero gradients).
    return (feat * 0).sum()


def dist_contrastive_map_reference(feat, label, mean, cov=None, *, ratio=1.0, temperature=100.0,
                                   use_avg_pool=True, scale_min_ratio=0.75, num_classes=19,
                                   reg_weight=0.0, ignore_index=255):
    """DistCL on a feature map [B, D, h, w] (ProtoCL when ``cov`` is None) as the public code
    writes it: cross-entropy of the full logits plus the positive class's quadratic term."""
    feats, labels = contrast_pixels_reference(feat, label, use_avg_pool=use_avg_pool,
                                              scale_min_ratio=scale_min_ratio,
                                              num_classes=num_classes, ignore_index=ignore_index)
    if feats.shape[0] == 0:
        return _connected_zero(feat)
    logits = feats @ mean.T / temperature
    if cov is not None:
        if cov.dim() == 3:
            quad = torch.einsum("nd,cde,ne->nc", feats, cov, feats)
        else:
            quad = (feats * feats) @ cov.T
        quad = quad * (ratio / (2 * temperature ** 2))
        logits = logits + quad
        positive = quad.gather(1, labels[:, None]).squeeze(1)
        per_pixel = F.cross_entropy(logits, labels, reduction="none") + positive
    else:
        per_pixel = F.cross_entropy(logits, labels, reduction="none")
    loss = per_pixel.mean()
    if reg_weight > 0:
        loss = loss + reg_weight * proto_reg_reference(feats, mean, temperature, num_classes)
    return loss


def proto_contrastive_map_reference(feat, label, mean, *, temperature=100.0, use_avg_pool=True,
                                    scale_min_ratio=0.75, num_classes=19, reg_weight=0.0,
                                    ignore_index=255):
    """ProtoCL on a feature map: cross-entropy of z . mu_c / tau over the valid pixels."""
    return dist_contrastive_map_reference(feat, label, mean, None, temperature=temperature,
                                          use_avg_pool=use_avg_pool,
                                          scale_min_ratio=scale_min_ratio,
                                          num_classes=num_classes, reg_weight=reg_weight,
                                          ignore_index=ignore_index)


def bank_contrastive_map_reference(feat, label, bank, *, temperature=100.0, use_avg_pool=True,
                                   scale_min_ratio=0.75, num_classes=19, reg_weight=0.0, mean=None,
                                   ignore_index=255, reduction="mean"):
    """BankCL on a feature map with the public code's per-class loop: for class c's pixels,
    pos = z B_c^T / tau, neg_k = mean_j z B_k^T / tau (k != c), and
    l = -mean_j log(exp(pos_j) / (exp(pos_j) + sum_k exp(neg_k))). ``bank``: C tensors [L_c, D].
    ``reduction="none"`` gives the per-pixel losses concatenated class by class."""
    feats, labels = contrast_pixels_reference(feat, label, use_avg_pool=use_avg_pool,
                                              scale_min_ratio=scale_min_ratio,
                                              num_classes=num_classes, ignore_index=ignore_index)
    if feats.shape[0] == 0:
        return _connected_zero(feat)
    losses = []
    for cls in range(num_classes):
        z = feats[labels == cls]
        pos = z @ bank[cls].T / temperature
        neg = [(z @ bank[k].T / temperature).mean(1, keepdim=True) for k in range(num_classes) if k != cls]
        sum_exp_neg = torch.cat(neg, 1).exp().sum(1, keepdim=True) if neg else torch.zeros_like(pos[:, :1])
        losses.append(-(pos.exp() / (pos.exp() + sum_exp_neg)).log().mean(1))
    per_pixel = torch.cat(losses)
    if reduction == "none":
        return per_pixel
    loss = per_pixel.mean()
    if reg_weight > 0:
        loss = loss + reg_weight * proto_reg_reference(feats, mean, temperature, num_classes)
    return loss


def estimator_update_reference(count, mean, cov, bank, feats, labels, *, memory_length,
                               ignore_index=255):
    """One estimator update: the count-weighted merge of ``update_class_distribution_reference``
    and, per class present in the batch, its batch mean appended to ``bank`` (a list of C Python
    lists of [D] tensors, oldest first), keeping the last ``memory_length``. Returns the new
    (count, mean, cov, bank); the inputs are not modified."""
    new_count, new_mean, new_cov = update_class_distribution_reference(
        count, mean, cov, feats, labels, ignore_index=ignore_index)
    hot = _one_hot(labels, mean.shape[0], ignore_index, mean.dtype)
    batch_mean = (hot.T @ feats.to(mean.dtype)) / hot.sum(0).clamp(min=1)[:, None]
    new_bank = [list(queue) for queue in bank]
    for cls in torch.unique(labels[labels != ignore_index]).tolist():
        new_bank[cls] = (new_bank[cls] + [batch_mean[cls]])[-memory_length:] if memory_length else []
    return new_count, new_mean, new_cov, new_bank


def update_class_distribution_onehot_reference(count, mean, cov, feats, labels, *, ignore_index=255):
    """The count-weighted merge of ``update_class_distribution_reference`` (diagonal ``cov``
    only), computed the way the public SePiCo estimator computes it: the valid pixels' features
    expanded to N x C x D and multiplied by an N x C x D one-hot, summed over pixels for the batch
    mean; the batch variance from the centred N x C x D tensor; NaN weights (0 / 0) set to 0.
    Time and memory grow with N x C x D: the naive form the kernels avoid, and
    the estimator baseline of the benchmarks. Returns new (count, mean, cov)."""
    keep = labels != ignore_index
    feats, labels = feats[keep].to(mean.dtype), labels[keep].long()
    n, dim = feats.shape
    num_classes = mean.shape[0]
    feats_ncd = feats.view(n, 1, dim).expand(n, num_classes, dim)
    onehot = torch.zeros(n, num_classes, dtype=mean.dtype, device=feats.device)
    onehot.scatter_(1, labels.view(-1, 1), 1)
    onehot_ncd = onehot.view(n, num_classes, 1).expand(n, num_classes, dim)
    by_class = feats_ncd.mul(onehot_ncd)
    amount = onehot_ncd.sum(0)
    amount[amount == 0] = 1
    batch_mean = by_class.sum(0) / amount
    centred = by_class - batch_mean.expand(n, num_classes, dim).mul(onehot_ncd)
    batch_var = centred.pow(2).sum(0).div(amount)
    n_b = onehot.sum(0).view(num_classes, 1).expand(num_classes, dim)
    w = n_b.div(n_b + count.view(num_classes, 1).expand(num_classes, dim))
    w[w != w] = 0
    spread = w.mul(1 - w).mul((mean - batch_mean).pow(2))
    new_cov = cov.mul(1 - w) + batch_var.mul(w) + spread
    new_mean = mean.mul(1 - w) + batch_mean.mul(w)
    return count + onehot.sum(0), new_mean, new_cov


def momentum_update_reference(count, mean, cov, feats, labels, *, momentum, ignore_index=255):
    """Exponential forgetting: a present class's mean and covariance become the mixture of the
    running distribution (weight momentum) and the batch (weight 1 - momentum); a class seen for
    the first time takes the batch statistics; absent classes keep theirs; counts accumulate."""
    num_classes = mean.shape[0]
    feats = feats.to(mean.dtype)
    hot = _one_hot(labels, num_classes, ignore_index, mean.dtype)
    n_b = hot.sum(0)
    m = (hot.T @ feats) / n_b.clamp(min=1)[:, None]
    centred = feats - m[torch.where(labels != ignore_index, labels, 0).long()]
    if cov.dim() == 3:
        v = torch.einsum("nc,nd,ne->cde", hot, centred, centred) / n_b.clamp(min=1)[:, None, None]
    else:
        v = (hot.T @ (centred * centred)) / n_b.clamp(min=1)[:, None]
    w = torch.where(n_b == 0, 0.0, torch.where(count == 0, 1.0, 1.0 - momentum)).to(mean.dtype)
    delta = mean - m
    new_mean = (1 - w)[:, None] * mean + w[:, None] * m
    if cov.dim() == 3:
        w3 = w[:, None, None]
        new_cov = (1 - w3) * cov + w3 * v + w3 * (1 - w3) * torch.einsum("cd,ce->cde", delta, delta)
    else:
        w2 = w[:, None]
        new_cov = (1 - w2) * cov + w2 * v + w2 * (1 - w2) * delta * delta
    return count + n_b, new_mean, new_cov

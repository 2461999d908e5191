"""Image-resolution labels brought to the feature grid of a network's embeddings, the way the
official contrastive loss does it: a majority vote in each cell (``downscale_labels``) or the
cell's top-left pixel. ``SePiCo.labels`` and the map-level losses of ``sepico.losses`` both go
through ``checked_feature_labels``.
"""
from __future__ import annotations

import torch

import kernels


def label_map(label) -> torch.Tensor:
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
    label = label_map(label)
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
    label = label_map(label)
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


def checked_feature_labels(label, feat_size, *, num_classes, ignore_index=255, use_avg_pool=True,
                           scale_min_ratio=0.75) -> kernels.CheckedLabels:
    """``labels_at_feature_resolution`` as the [B, h, w] ``kernels.CheckedLabels`` that every
    kernel op takes without checking their range again: the image labels are checked here (one
    host sync), and a vote or a subsample of in-range labels is in range."""
    small = labels_at_feature_resolution(label, feat_size, use_avg_pool=use_avg_pool,
                                         scale_min_ratio=scale_min_ratio, num_classes=num_classes,
                                         ignore_index=ignore_index).squeeze(1)
    return kernels.checked_labels(small, num_classes, ignore_index, in_range=True)

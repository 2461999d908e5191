"""Segmentation evaluation: confusion matrix, per-class IoU and mIoU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sepico.train.augment import normalize


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """[C, C] int64 counts: rows are ground truth, columns predictions; ignored pixels skipped."""
    keep = label != ignore_index
    idx = label[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor, classes=None) -> dict:
    """Per-class IoU (percent; NaN where a class is neither labelled nor predicted) and the mIoU
    over `classes` (default: every class with a non-empty union)."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan"))) * 100
    chosen = list(range(len(iou))) if classes is None else list(classes)
    vals = iou[chosen]
    vals = vals[~torch.isnan(vals)]
    return {"miou": float(vals.mean()) if len(vals) else float("nan"),
            "iou": {int(c): float(iou[c]) for c in chosen},
            "pixel_accuracy": float(inter.sum() / conf.sum().clamp(min=1) * 100)}


@torch.no_grad()
def evaluate(model, dataset, *, num_classes: int, classes=None, device="cpu", batch_size: int = 2) -> dict:
    """Whole-image inference; logits bilinearly resized to the label size."""
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for images, labels in loader:
        logits = model.predict_logits(normalize(images.to(device)))
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        conf += confusion_matrix(logits.argmax(1).cpu(), labels, num_classes)
    model.train(was_training)
    return {**iou_from_confusion(conf, classes), "confusion": conf.tolist()}

"""Segmentation evaluation: whole-image or sliding-window inference, confusion matrix, per-class
IoU, mIoU over a protocol's classes, and a printable per-class table.

Inference returns logits at the label's size: the model's stride-4 (or -8) logits are resized
bilinearly to the input image, and, when the image was resized for evaluation (e.g. 1280 x 640
for a 2048 x 1024 Cityscapes label), once more to the label. Sliding windows (``mode="slide"``)
cover the image with ``window``-sized crops every ``stride`` pixels (the last row and column of
windows end at the border) and average the logits where windows overlap, as mmsegmentation's
slide inference does.

Test-time augmentation (``views`` of an image at several scales, ``flip``) averages the softmax
probabilities at the label's size over every view and its horizontal mirror (mirrored back), as
mmseg's ``aug_test`` over ``MultiScaleFlipAug`` views does; the argmax of that average is the
prediction.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sepico.data.cityscapes import CLASS_NAMES
from sepico.data.label_maps import PROTOCOLS
from sepico.data.transforms import normalize

MODES = ("whole", "slide")


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


def protocol_mious(conf: torch.Tensor) -> dict:
    """For the 19 Cityscapes classes: the mIoU of each protocol, ``{"19": ..., "16": ..., "13": ...}``
    (16 and 13: the SYNTHIA -> Cityscapes protocols)."""
    return {name: iou_from_confusion(conf, classes)["miou"] for name, classes in PROTOCOLS.items()}


# --------------------------------------------------------------------------- inference

def _windows(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride``, the last window ending at the border."""
    if size <= window:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})


def slide_logits(model, images: torch.Tensor, num_classes: int, window, stride) -> torch.Tensor:
    """Logits [B, C, H, W] at image size, averaged over overlapping ``window`` crops."""
    b, _, height, width = images.shape
    wh, ww = min(window[0], height), min(window[1], width)
    out = images.new_zeros(b, num_classes, height, width, dtype=torch.float32)
    hits = images.new_zeros(1, 1, height, width, dtype=torch.float32)
    for y in _windows(height, wh, stride[0]):
        for x in _windows(width, ww, stride[1]):
            logits = model.predict_logits(images[:, :, y:y + wh, x:x + ww])
            out[:, :, y:y + wh, x:x + ww] += F.interpolate(logits.float(), size=(wh, ww),
                                                           mode="bilinear", align_corners=False)
            hits[:, :, y:y + wh, x:x + ww] += 1
    return out / hits


def _input_scores(model, images: torch.Tensor, *, num_classes: int, mode: str, window, stride,
                  prior: torch.Tensor | None) -> torch.Tensor:
    """float32 scores [B, C, h, w] at the input's size: the logits, or with ``prior`` the softmax
    times the prior (the official test of Dark Zurich images, ``simple_test``)."""
    x = normalize(images)
    if mode == "whole":
        # Two resizes, as the official test path: to the network input (encode_decode), then to
        # the label (whole_inference); one straight resize flips some pixels at the border of classes.
        logits = F.interpolate(model.predict_logits(x).float(), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
    elif mode == "slide":
        logits = slide_logits(model, x, num_classes, window, stride)
    else:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if prior is not None:
        logits = logits.softmax(1) * prior.to(logits).view(1, -1, 1, 1)
    return logits


def predict_logits(model, images: torch.Tensor, label_size, *, num_classes: int, mode: str = "whole",
                   window=(1024, 1024), stride=(768, 768), prior: torch.Tensor | None = None) -> torch.Tensor:
    """float32 logits [B, C, *label_size] of images in [0, 1] (normalised here). With ``prior``
    (class weights [C]) the scores are instead the softmax at the input's size times the prior,
    resized to the label: the official test of Dark Zurich images (``simple_test``)."""
    logits = _input_scores(model, images, num_classes=num_classes, mode=mode, window=window, stride=stride,
                           prior=prior)
    if tuple(logits.shape[-2:]) != tuple(label_size):
        logits = F.interpolate(logits, size=tuple(label_size), mode="bilinear", align_corners=False)
    return logits


def predict_labels(model, images: torch.Tensor, label_size, *, num_classes: int, mode: str = "whole",
                   window=(1024, 1024), stride=(768, 768), prior: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [B, *label_size]: ``predict_logits(...).argmax(1)``, equal to it element for element,
    without the [B, C, *label_size] scores (``resized_argmax``): a 48-megapixel photo needs a few
    of its classes at full size at a time, not all 19."""
    scores = _input_scores(model, images, num_classes=num_classes, mode=mode, window=window, stride=stride,
                           prior=prior)
    return resized_argmax(scores, label_size)


def resized_argmax(scores: torch.Tensor, size, *, max_elements: int = 2**26) -> torch.Tensor:
    """``F.interpolate(scores, size, mode="bilinear", align_corners=False).argmax(1)`` with at most
    about ``max_elements`` resized values alive at a time: the classes are resized a group at a
    time (each class is interpolated on its own, so each value is the same as in the full resize)
    and a running maximum keeps the first class of the largest score, as argmax does."""
    size = tuple(int(v) for v in size)
    if tuple(scores.shape[-2:]) == size:
        return scores.argmax(1)
    b, c = scores.shape[:2]
    group = max(1, min(c, max_elements // max(1, b * size[0] * size[1])))
    best = index = None
    for start in range(0, c, group):
        part = F.interpolate(scores[:, start:start + group], size=size, mode="bilinear", align_corners=False)
        value, arg = part.max(1)
        del part
        if best is None:
            best, index = value, arg
            continue
        better = value > best  # strictly: on a tie the earlier class stays, as argmax's first maximum
        best = torch.where(better, value, best)
        index = torch.where(better, arg + start, index)
    return index


def aug_probabilities(model, views, label_size, *, num_classes: int, flip: bool = True, mode: str = "whole",
                      window=(1024, 1024), stride=(768, 768)) -> torch.Tensor:
    """float32 class probabilities [B, C, *label_size]: the mean over ``views`` (the images [B, 3, h, w]
    in [0, 1] at each test scale) and, with ``flip``, their mirror images, of the softmax of each
    view's logits at the label size (a mirrored view's probabilities mirrored back)."""
    total, count = None, 0
    for view in views:
        for mirrored in ((False, True) if flip else (False,)):
            logits = predict_logits(model, view.flip(-1) if mirrored else view, label_size,
                                    num_classes=num_classes, mode=mode, window=window, stride=stride)
            probs = logits.softmax(1)
            probs = probs.flip(-1) if mirrored else probs
            total = probs if total is None else total + probs
            count += 1
    return total / count


def inference_autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on a GPU when ``enabled``; float32 otherwise (and always on the CPU)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model, dataset, *, num_classes: int, classes=None, device="cpu", batch_size: int = 2,
             mode: str = "whole", window=(1024, 1024), stride=(768, 768), autocast: bool = False,
             flip: bool = False, prior: torch.Tensor | None = None, progress: bool = False) -> dict:
    """mIoU of ``model`` on a labelled dataset of (image [3, H, W] in [0, 1], label [h, w]), or of
    (list of views of the image at the test scales, label) for test-time augmentation (``flip``
    adds the mirror of each view; see ``aug_probabilities``).

    Returns ``miou`` over ``classes`` (default: every class seen), per-class ``iou``, pixel
    accuracy, the ``confusion`` matrix and, for 19 classes, ``protocols`` (the 19/16/13-class
    mIoUs). ``autocast`` runs the model in bfloat16 on a GPU. ``prior``: class weights of the
    single-scale test (``predict_logits``); test-time augmentation does not apply them, as the
    official ``aug_test`` does not."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    was_training = model.training
    model.eval()
    device = torch.device(device)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loader = DataLoader(dataset, batch_size=1 if mode == "slide" else batch_size, shuffle=False)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc="eval", dynamic_ncols=True)
    cast = inference_autocast(device, autocast)
    try:
        for images, labels in loader:
            with cast:
                if isinstance(images, (list, tuple)) or flip:
                    views = [v.to(device) for v in images] if isinstance(images, (list, tuple)) else [images.to(device)]
                    scores = aug_probabilities(model, views, labels.shape[-2:], num_classes=num_classes, flip=flip,
                                               mode=mode, window=window, stride=stride)
                    predicted = scores.argmax(1)
                else:
                    predicted = predict_labels(model, images.to(device), labels.shape[-2:], num_classes=num_classes,
                                               mode=mode, window=window, stride=stride, prior=prior)
            conf += confusion_matrix(predicted.cpu(), labels, num_classes)
    finally:
        model.train(was_training)
    return confusion_scores(conf, classes)


def confusion_scores(conf: torch.Tensor, classes=None) -> dict:
    """An ``evaluate`` result from a confusion matrix (e.g. the sum of several sets' matrices):
    ``iou_from_confusion``, the ``confusion`` matrix, and for 19 classes the ``protocols``."""
    result = {**iou_from_confusion(conf, classes), "confusion": conf.tolist()}
    if len(conf) == len(CLASS_NAMES):
        result["protocols"] = protocol_mious(conf)
    return result


# --------------------------------------------------------------------------- reporting

def format_table(result: dict, class_names=CLASS_NAMES) -> str:
    """The per-class IoU table and the mIoU lines of an ``evaluate`` result, as text."""
    lines = [f"{'class':<16}{'IoU':>8}"]
    for c, value in result["iou"].items():
        name = class_names[c] if c < len(class_names) else str(c)
        lines.append(f"{name:<16}{value:>8.2f}")
    lines.append(f"{'mIoU':<16}{result['miou']:>8.2f}   ({len(result['iou'])} classes)")
    for name, value in result.get("protocols", {}).items():
        lines.append(f"{'mIoU' + name:<16}{value:>8.2f}")
    lines.append(f"{'pixel accuracy':<16}{result['pixel_accuracy']:>8.2f}")
    return "\n".join(lines)


__all__ = ["MODES", "aug_probabilities", "confusion_matrix", "confusion_scores", "evaluate", "format_table",
           "inference_autocast", "iou_from_confusion", "predict_labels", "predict_logits", "protocol_mious",
           "resized_argmax", "slide_logits"]

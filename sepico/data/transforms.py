"""Image operations shared by the data views, the trainer and evaluation, computed as mmseg does.

- ``normalize``: [0, 1] RGB images to the ImageNet statistics (mmseg's ``Normalize`` with mean
  123.675 / 116.28 / 103.53 and std 58.395 / 57.12 / 57.375 on 0-255 values is the same map).
- ``rescaled_size``: mmseg's ``Resize(img_scale, keep_ratio=True)``, i.e. ``mmcv.imrescale``: the
  largest scale at which the long edge fits the scale's long edge and the short edge its short edge,
  sizes rounded half up (GTA5 1914 x 1052 into (1280, 720) -> 1280 x 704; Cityscapes 2048 x 1024 into
  (1280, 640) -> 1280 x 640).
- ``resize_image`` / ``resize_label``: ``mmcv.imresize`` with its cv2 backend: bilinear on the
  uint8 image (no antialiasing), nearest on the label.
- ``aug_sizes``: the image sizes of mmseg's ``MultiScaleFlipAug`` test-time augmentation, at the
  official ratios ``AUG_SCALES`` (``tools/test.py --aug-test``).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

AUG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # BIT-DA/SePiCo tools/test.py l. 113-118 (with flip)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images [B, 3, H, W] to the ImageNet statistics the encoders expect."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def rescaled_size(height: int, width: int, scale) -> tuple[int, int]:
    """(H, W) after mmcv's keep-ratio rescale into ``scale`` (two edge lengths, in any order)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def output_size(height: int, width: int, size, keep_ratio: bool) -> tuple[int, int]:
    """(H, W) an image of ``height`` x ``width`` is resized to: ``size`` (H, W) itself, or with
    ``keep_ratio`` the keep-ratio rescale into it."""
    return rescaled_size(height, width, size) if keep_ratio else (int(size[0]), int(size[1]))


def aug_sizes(height: int, width: int, size, keep_ratio: bool, scales) -> list[tuple[int, int]]:
    """(H, W) of an image at each test-time scale, as ``MultiScaleFlipAug`` with ``Resize``: each
    ratio r scales the test size ``size`` (H, W) to (int(H r), int(W r)), into which the image is
    resized (with ``keep_ratio``: rescaled); without a test size (``None``) r scales the image's own
    size and the image is rescaled into that (mmseg's "mode 1")."""
    if size is None:
        return [rescaled_size(height, width, (int(width * r), int(height * r))) for r in scales]
    return [output_size(height, width, (int(size[0] * r), int(size[1] * r)), keep_ratio) for r in scales]


def resize_image(pixels: np.ndarray, size) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3] with ``size`` = (h, w); cv2 bilinear, as mmcv."""
    if pixels.shape[:2] == tuple(size):
        return pixels
    return cv2.resize(np.ascontiguousarray(pixels), (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


def resize_label(label: np.ndarray, size) -> np.ndarray:
    """uint8 [H, W] -> uint8 [h, w]; cv2 nearest, as mmcv resizes segmentation maps."""
    if label.shape[:2] == tuple(size):
        return label
    return cv2.resize(np.ascontiguousarray(label), (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)


__all__ = ["AUG_SCALES", "IMAGENET_MEAN", "IMAGENET_STD", "aug_sizes", "normalize", "output_size", "rescaled_size", "resize_image",
           "resize_label"]

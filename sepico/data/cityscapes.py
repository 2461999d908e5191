"""Cityscapes train ids: the 19 evaluation classes, their names and the standard colour palette.

The palette is the one the Cityscapes scripts (``labels.py``) and every segmentation codebase use
to draw train-id label maps; ``colorize`` draws the ignore label (255) black.
"""
from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
NUM_CLASSES = len(CLASS_NAMES)

# RGB per train id, row c = class c.
PALETTE = np.array([
    (128, 64, 128),   # road
    (244, 35, 232),   # sidewalk
    (70, 70, 70),     # building
    (102, 102, 156),  # wall
    (190, 153, 153),  # fence
    (153, 153, 153),  # pole
    (250, 170, 30),   # traffic light
    (220, 220, 0),    # traffic sign
    (107, 142, 35),   # vegetation
    (152, 251, 152),  # terrain
    (70, 130, 180),   # sky
    (220, 20, 60),    # person
    (255, 0, 0),      # rider
    (0, 0, 142),      # car
    (0, 0, 70),       # truck
    (0, 60, 100),     # bus
    (0, 80, 100),     # train
    (0, 0, 230),      # motorcycle
    (119, 11, 32),    # bicycle
], dtype=np.uint8)
PALETTE.flags.writeable = False

def colorize(labels, palette=PALETTE) -> np.ndarray:
    """Colour a train-id label map with the Cityscapes palette (or ``palette``, uint8 [C, 3]).

    Args:
        labels: integer array or tensor of any shape, e.g. [H, W] or [B, H, W], with values in
            0..C-1 or 255 (ignore, drawn black). A CUDA tensor is copied to the host.

    Returns:
        A numpy uint8 array of shape ``labels.shape + (3,)`` (RGB), ready for matplotlib or PIL.
    """
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got {labels.dtype}")
    if labels.size:
        bad = (labels < 0) | ((labels >= len(palette)) & (labels != IGNORE_INDEX))
        if bad.any():
            raise ValueError(f"labels must be train ids 0..{len(palette) - 1} or {IGNORE_INDEX} "
                             f"(ignore), found {labels[bad].flat[0]}")
    table = np.zeros((256, 3), dtype=np.uint8)  # a row per uint8 value: ids get their colour, the rest black
    table[:len(palette)] = palette
    return table[labels.astype(np.intp)]

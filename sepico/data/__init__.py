"""Datasets: the Cityscapes class table and palette, and the synthetic domain-shift benchmark."""
from sepico.data.cityscapes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize
from sepico.data.synthetic import (DOMAINS, SPLITS, SYNTHETIC_CLASSES, SyntheticStreets,
                                   render_batch, scene_seed)

__all__ = ["CLASS_NAMES", "DOMAINS", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE", "SPLITS",
           "SYNTHETIC_CLASSES", "SyntheticStreets", "colorize", "render_batch", "scene_seed"]

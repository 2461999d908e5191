"""Label ids of the real datasets to the 19 Cityscapes train ids, and the evaluation protocols.

Facts, kept as data:

- Cityscapes ``*_gtFine_labelIds.png`` and GTA5 ``labels/*.png`` store the Cityscapes label ids
  0..33 (cityscapesScripts ``labels.py``); 19 of them are evaluated and get train ids 0..18, the
  other 15 are ignored (255). The Cityscapes test server takes predictions as label ids: train
  id t goes back to the one label id whose train id is t (``TRAIN_ID_TO_CITYSCAPES_ID``, the
  conversion of mmseg's ``results2img(to_label_id=True)``).
- SYNTHIA RAND-CITYSCAPES ``GT/LABELS/*.png`` store the SYNTHIA class id (0..22) in the first
  channel of a 16-bit RGB PNG (the dataset's README). 16 of the classes correspond to Cityscapes
  classes; SYNTHIA has no terrain, truck or train.
- Dark Zurich ``gt/*/*_gt_labelTrainIds.png`` already hold train ids (0..18, 255).
- Protocols: GTA5 -> Cityscapes and Cityscapes -> Dark Zurich average the IoU over all 19
  classes; SYNTHIA -> Cityscapes reports the mean over 16 classes (the 19 without terrain, truck,
  train) and over 13 classes (the 16 without wall, fence, pole).

A mapping is a dict ``{label id: train id or 255}`` that lists every id the dataset defines;
``lookup_table`` turns it into an array and ``to_train_ids`` applies it, refusing ids that the
dataset does not define (a wrong folder, a colour label, a corrupt file).
"""
from __future__ import annotations

import numpy as np

from sepico.data.cityscapes import CLASS_NAMES, IGNORE_INDEX
from sepico.errors import DatasetError

# name -> (Cityscapes label id, train id); the 19 evaluated classes in train-id order.
_CITYSCAPES_EVALUATED = {
    "road": 7, "sidewalk": 8, "building": 11, "wall": 12, "fence": 13, "pole": 17,
    "traffic light": 19, "traffic sign": 20, "vegetation": 21, "terrain": 22, "sky": 23,
    "person": 24, "rider": 25, "car": 26, "truck": 27, "bus": 28, "train": 31,
    "motorcycle": 32, "bicycle": 33,
}

# Every Cityscapes label id (0..33): the evaluated ones to their train id, the rest to ignore.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {i: IGNORE_INDEX for i in range(34)}
CITYSCAPES_ID_TO_TRAIN_ID.update({_CITYSCAPES_EVALUATED[name]: t for t, name in enumerate(CLASS_NAMES)})

# Train id -> Cityscapes label id (the inverse on the 19 evaluated classes).
TRAIN_ID_TO_CITYSCAPES_ID: dict[int, int] = {t: _CITYSCAPES_EVALUATED[name] for t, name in enumerate(CLASS_NAMES)}

# GTA5 labels use the Cityscapes label ids.
GTA5_ID_TO_TRAIN_ID = CITYSCAPES_ID_TO_TRAIN_ID

# SYNTHIA class ids (README of SYNTHIA RAND-CITYSCAPES): 0 void, 1 sky, 2 building, 3 road,
# 4 sidewalk, 5 fence, 6 vegetation, 7 pole, 8 car, 9 traffic sign, 10 pedestrian, 11 bicycle,
# 12 motorcycle, 13 parking-slot, 14 road-work, 15 traffic light, 16 terrain, 17 rider, 18 truck,
# 19 bus, 20 train, 21 wall, 22 lanemarking.
SYNTHIA_CLASS_NAMES = (
    "void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car",
    "traffic sign", "pedestrian", "bicycle", "motorcycle", "parking-slot", "road-work",
    "traffic light", "terrain", "rider", "truck", "bus", "train", "wall", "lanemarking",
)
_SYNTHIA_AS_CITYSCAPES = {"pedestrian": "person"}  # the same class under another name
_NOT_EVALUATED = ("void", "parking-slot", "road-work", "lanemarking")
SYNTHIA_ID_TO_TRAIN_ID: dict[int, int] = {
    i: (IGNORE_INDEX if name in _NOT_EVALUATED
        else CLASS_NAMES.index(_SYNTHIA_AS_CITYSCAPES.get(name, name)))
    for i, name in enumerate(SYNTHIA_CLASS_NAMES)
}

# Dark Zurich ground truth is stored as train ids already.
TRAIN_ID_IDENTITY: dict[int, int] = {i: i for i in range(len(CLASS_NAMES))} | {IGNORE_INDEX: IGNORE_INDEX}

# Evaluation protocols: the train ids the mIoU averages over.
_ABSENT_FROM_SYNTHIA = ("terrain", "truck", "train")
_SYNTHIA_13_DROPS = ("wall", "fence", "pole")
PROTOCOLS: dict[str, tuple[int, ...]] = {
    "19": tuple(range(len(CLASS_NAMES))),
    "16": tuple(t for t, n in enumerate(CLASS_NAMES) if n not in _ABSENT_FROM_SYNTHIA),
    "13": tuple(t for t, n in enumerate(CLASS_NAMES)
                if n not in _ABSENT_FROM_SYNTHIA + _SYNTHIA_13_DROPS),
}


def lookup_table(mapping: dict[int, int], size: int = 65536) -> np.ndarray:
    """int16 array of ``size`` entries: ``table[id]`` is the train id, -1 where the id is not in
    ``mapping`` (an unknown id)."""
    table = np.full(size, -1, dtype=np.int16)
    ids = np.fromiter(mapping.keys(), dtype=np.int64)
    table[ids] = np.fromiter(mapping.values(), dtype=np.int16)
    return table


def to_train_ids(ids: np.ndarray, table: np.ndarray, *, where: str, strict: bool = True) -> np.ndarray:
    """Map a label-id array (uint8 or uint16) through ``lookup_table`` output to uint8 train ids.

    With ``strict`` an id the dataset does not define raises a ``ValueError`` naming ``where``
    (the file) and the id; otherwise such pixels become ignore (255)."""
    mapped = table[ids]
    unknown = mapped < 0
    if unknown.any():
        if strict:
            bad = np.unique(ids[unknown])
            known = np.flatnonzero(table >= 0)
            raise DatasetError(f"{where}: unknown label id(s) {bad[:8].tolist()} (this dataset's "
                             f"ids are {known.min()}..{known.max()}; set data.strict_labels=false "
                             "to treat unknown ids as ignore)")
        mapped = np.where(unknown, IGNORE_INDEX, mapped)
    return mapped.astype(np.uint8)


def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids (uint8) of a uint8 train-id map holding 0..18 (``ValueError`` on any other value)."""
    table = np.full(256, -1, dtype=np.int16)
    table[list(TRAIN_ID_TO_CITYSCAPES_ID)] = list(TRAIN_ID_TO_CITYSCAPES_ID.values())
    ids = table[train_ids]
    if (ids < 0).any():
        raise ValueError(f"label ids are defined for train ids 0..{len(CLASS_NAMES) - 1}, found "
                         f"{int(train_ids[ids < 0].flat[0])}")
    return ids.astype(np.uint8)


__all__ = ["CITYSCAPES_ID_TO_TRAIN_ID", "GTA5_ID_TO_TRAIN_ID", "PROTOCOLS", "SYNTHIA_CLASS_NAMES",
           "SYNTHIA_ID_TO_TRAIN_ID", "TRAIN_ID_IDENTITY", "TRAIN_ID_TO_CITYSCAPES_ID", "lookup_table",
           "to_label_ids", "to_train_ids"]

"""Day-to-night adaptation (Cityscapes -> Dark Zurich) as the official ``SePiCoDark`` computes it, and
the same loop on ACDC.

- ``day_images``: the daytime image of each target training image. Dark Zurich pairs them in its
  ``corresp/train/night/*.csv`` files (``read_correspondences``); each line maps a night training
  image (``train/night/<seq>/<frame>``) to its daytime counterpart (``.../day/<seq>/<frame>``),
  which lives at ``rgb_anon/train/day/<seq>/<frame>_rgb_anon.png``. ACDC gives every adverse image
  a reference image of the same place in normal conditions, by name:
  ``rgb_anon/<condition>/<split>/<seq>/<frame>_rgb_anon.png`` has
  ``rgb_anon/<condition>/<split>_ref/<seq>/<frame>_rgb_ref_anon.png``.
- ``class_prior_weights``: per-class weights from the official class frequencies,
  w = (mean(log f) - log f) / std(log f) * s + 1 (``std`` with Bessel's correction, as
  ``torch.std``): rarer classes weigh more. s = 0.05 in training (pseudo labels and the decode
  head's cross-entropy), s = 0.16 at test time on Dark Zurich images.
- ``fuse_day_night``: the teacher's softmax on the day and the night image mixed per class; for the
  shift-insensitive classes the day probability weighs ``day_ratio`` where it exceeds 0.4 and
  1 - ``day_ratio`` elsewhere, every other class takes the night probability; then multiplied by
  the class weights (DANNet's rule).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from sepico.data.real import DatasetError

# BIT-DA/SePiCo experiments.py l. 487-490 (ids 7, 8) and encoder_decoder_projector.py l. 304-307.
DARK_ZURICH_CLASS_FREQUENCIES = (
    0.36869696, 0.06084986, 0.22824049, 0.00655399, 0.00877272, 0.01227341, 0.00207795, 0.0055127,
    0.15928651, 0.01157818, 0.04018982, 0.01218957, 0.00135122, 0.06994545, 0.00267456, 0.00235192,
    0.00232904, 0.00098658, 0.00413907)
# road, sidewalk, building, wall, fence; vegetation, terrain, sky (experiments.py l. 257,
# sepico_dark.py l. 122-123: ranges (0, 5) and (8, 11)).
SHIFT_INSENSITIVE_CLASSES = (0, 1, 2, 3, 4, 8, 9, 10)
DAY_THRESHOLD = 0.4  # sepico_dark.py l. 236


def class_prior_weights(scale: float) -> torch.Tensor:
    """float32 [19] weights (mean(log f) - log f) / std(log f) * scale + 1 (all 1 at scale 0)."""
    log_f = torch.log(torch.tensor(DARK_ZURICH_CLASS_FREQUENCIES, dtype=torch.float32))
    return (log_f.mean() - log_f) / log_f.std() * float(scale) + 1.0


def dark_zurich_prior(scale: float, num_classes: int) -> torch.Tensor | None:
    """The class prior the official test applies to Dark Zurich images (``scale`` 0.16), or None
    when it is off (scale 0) or the model does not predict the 19 classes it weighs."""
    return class_prior_weights(scale) if scale and num_classes == len(DARK_ZURICH_CLASS_FREQUENCIES) else None


def fuse_day_night(day: torch.Tensor, night: torch.Tensor, *, day_ratio: float = 0.8,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Day-night probabilities [B, C, H, W] from the softmax of the day and the night image."""
    if day.shape != night.shape:
        raise ValueError(f"day and night probabilities differ in shape: {tuple(day.shape)} vs {tuple(night.shape)}")
    mix = torch.zeros_like(night)
    insensitive = list(SHIFT_INSENSITIVE_CLASSES)
    mix[:, insensitive] = torch.where(day[:, insensitive] > DAY_THRESHOLD, day_ratio, 1.0 - day_ratio).to(mix.dtype)
    fused = mix * day + (1.0 - mix) * night
    if weights is not None:
        fused = fused * weights.to(fused).view(1, -1, 1, 1)
    return fused


class CorrespondenceError(DatasetError):
    """A Dark Zurich correspondence file that is missing, malformed or contradicts itself."""


def read_correspondences(root) -> dict[str, str]:
    """{night key ``<seq>/<frame>``: day key ``<seq>/<frame>``} from every CSV under
    ``root/corresp/train/night`` (sorted, recursively). A night image listed twice with two day
    images is an error, as in the official ``build_corresp_map``."""
    folder = Path(root) / "corresp" / "train" / "night"
    files = sorted(folder.rglob("*.csv")) if folder.is_dir() else []
    if not files:
        raise CorrespondenceError(f"dark_zurich: no correspondence files (*.csv) in {folder}; the day-night "
                                  "method pairs each night image with its day image through them")
    pairs: dict[str, str] = {}
    for path in files:
        with open(path, newline="") as f:
            for number, row in enumerate(csv.reader(f), start=1):
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) < 2 or not row[0].startswith("train/night/") or "day/" not in row[1]:
                    raise CorrespondenceError(f"{path}:{number}: expected 'train/night/<seq>/<frame>,"
                                              f".../day/<seq>/<frame>', got {','.join(row)!r}")
                night = row[0][len("train/night/"):].strip()
                day = row[1].split("day/", 1)[1].strip()
                if pairs.get(night, day) != day:
                    raise CorrespondenceError(f"{path}:{number}: {night} is paired with {pairs[night]} and {day}")
                pairs[night] = day
    return pairs


def day_images(name: str, root, images) -> list[Path]:
    """The daytime image of each training image of the target ``name`` (``dark_zurich``: paths
    under ``root/rgb_anon/train/night``; ``acdc``: under ``root/rgb_anon/<condition>/train``);
    ``CorrespondenceError`` naming the first image without one."""
    days, problems = daytime_images(name, root, images)
    if problems:
        raise CorrespondenceError(problems[0])
    return days


def daytime_images(name: str, root, images) -> tuple[list[Path | None], list[str]]:
    """(the daytime image of each image, None where no correspondence names one; one line per
    image whose daytime image is unlisted or missing). ``CorrespondenceError`` when Dark Zurich's
    correspondence files themselves are missing or malformed (``read_correspondences``)."""
    if name == "acdc":
        days = [_acdc_reference(Path(path)) for path in images]
        return days, [f"acdc: the reference image of {image} is missing: {day}"
                      for image, day in zip(images, days) if not day.is_file()]
    if name != "dark_zurich":
        raise CorrespondenceError(f"{name}: no daytime images (the day-night method reads dark_zurich or acdc)")
    root = Path(root)
    night_dir, day_dir = root / "rgb_anon" / "train" / "night", root / "rgb_anon" / "train" / "day"
    pairs = read_correspondences(root)
    days, problems = [], []
    suffix = "_rgb_anon.png"
    for path in images:
        key = Path(path).relative_to(night_dir).as_posix()[: -len(suffix)]
        day = day_dir / (pairs[key] + suffix) if key in pairs else None
        if day is None:
            problems.append(f"dark_zurich: {path} has no day image in {root / 'corresp/train/night'}")
        elif not day.is_file():
            problems.append(f"dark_zurich: the day image of {path} is missing: {day}")
        days.append(day)
    return days, problems


def _acdc_reference(path: Path) -> Path:
    split_dir = path.parent.parent  # rgb_anon/<condition>/<split>
    return (split_dir.with_name(split_dir.name + "_ref") / path.parent.name
            / path.name.replace("_rgb_anon.png", "_rgb_ref_anon.png"))


__all__ = ["DARK_ZURICH_CLASS_FREQUENCIES", "DAY_THRESHOLD", "SHIFT_INSENSITIVE_CLASSES", "CorrespondenceError",
           "class_prior_weights", "dark_zurich_prior", "day_images", "daytime_images", "fuse_day_night",
           "read_correspondences"]

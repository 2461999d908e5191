"""Input validation shared by every op, in the user's terms: on the host from tensor metadata,
plus one cheap label-range check; and the covariance kind every op encodes the same way.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

FLOAT_FEATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TRITON_FEATS = (torch.float32, torch.float16, torch.bfloat16)
INT_LABELS = (torch.int64, torch.int32)


class Covariance(str, enum.Enum):
    """The covariance kind, one name from a config to the kernels' constexprs, which take its
    ``.value`` (moments' SECOND_MODE, the loss's COV_MODE). A member equals its name, so
    ``"diag"`` works wherever ``Covariance.DIAG`` does.

    NONE: no second moment (the loss: ProtoCL; the update's first pass: sums only). DIAG:
    per-channel variances [C, D] (the official estimator's). FULL: covariance matrices [C, D, D].
    """
    NONE = "none"
    DIAG = "diag"
    FULL = "full"

    def __str__(self) -> str:  # "diag", as a config spells it, in messages and names
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def of(cls, cov) -> "Covariance":
        """The kind of a covariance tensor: None, [C, D] or [C, D, D]."""
        return cls.NONE if cov is None else (cls.FULL if cov.dim() == 3 else cls.DIAG)


def covariance_kind(value, allowed=tuple(Covariance)) -> Covariance:
    """``value`` (a ``Covariance`` or its name) as a ``Covariance`` among ``allowed``."""
    try:
        kind = Covariance(value)
    except (ValueError, TypeError):
        kind = None
    if kind not in allowed:
        names = ", ".join(repr(k.value) for k in allowed)
        raise ValueError(f"covariance must be one of {names}, got {value!r}")
    return kind


def check_feats(feats, name: str = "feats") -> None:
    """[N, D] rows or a [B, D, h, w] map of floating-point embeddings."""
    if not isinstance(feats, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(feats).__name__}")
    if feats.dim() not in (2, 4):
        raise ValueError(f"{name} must have shape [N, D] or [B, D, h, w], got {tuple(feats.shape)}")
    if feats.dtype not in FLOAT_FEATS:
        raise TypeError(f"{name} must be float32, float16 or bfloat16 (float64 on the torch "
                        f"backend), got {feats.dtype}")
    if feats.shape[1] < 1:
        raise ValueError(f"{name} must have at least one channel, got shape {tuple(feats.shape)}")


def pixel_shape(feats: torch.Tensor) -> tuple:
    """The shape of one value per pixel: [N] for rows [N, D], [B, h, w] for a map [B, D, h, w]."""
    return (feats.shape[0],) if feats.dim() == 2 else (feats.shape[0], *feats.shape[2:])


def check_pixel_values(t, feats, name: str) -> None:
    """``t`` holds one value per pixel of ``feats``: shape [N] or [B, h, w] (``pixel_shape``)."""
    want = pixel_shape(feats)
    if tuple(t.shape) != want:
        spelled = "[N]" if feats.dim() == 2 else "[B, h, w]"
        raise ValueError(f"{name} must have shape {spelled} = {list(want)} to match feats "
                         f"{tuple(feats.shape)}, got {tuple(t.shape)}")


def _check_label_tensor(labels) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in INT_LABELS:
        raise TypeError(f"labels must be int64 or int32, got {labels.dtype}")


def check_labels(labels, feats) -> None:
    _check_label_tensor(labels)
    check_pixel_values(labels, feats, "labels")


def _check_ignore_index(ignore_index) -> None:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} {ignore_index!r}")


def check_num_classes(num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes must be in [1, 256], got {num_classes}")


def check_same_device(**tensors) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first_name, first = next(iter(devices.items()))
    for k, dev in devices.items():
        if dev != first:
            raise ValueError(f"{k} is on {dev} but {first_name} is on {first}; move them to one device")


@dataclass(frozen=True)
class CheckedLabels:
    """Labels known to hold only [0, C) or ignore_index: made by ``checked_labels``, taken by
    every op in place of the label tensor. An op given one runs no range check (no reduction, no
    host sync); from metadata alone it checks that C and ignore_index are its own and that the
    tensor was not written in place since (its version counter)."""
    tensor: torch.Tensor
    num_classes: int
    ignore_index: int
    version: int | None  # None for an inference tensor, which keeps no version counter


def tensor_version(t: torch.Tensor | None) -> int | None:
    """``t``'s version counter (in-place writes bump it); None for None or an inference tensor,
    which keeps no counter."""
    return None if t is None or t.is_inference() else t._version


def checked_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = 255, *,
                   in_range: bool = False) -> CheckedLabels:
    """``labels`` (int64 or int32) range-checked once for (C, ignore_index): one reduction and
    one host sync, then any number of ops read them without either. ``in_range=True``: the
    caller made them in range (labels downscaled from checked ones, say), so nothing is checked."""
    _check_label_tensor(labels)
    check_num_classes(num_classes)
    _check_ignore_index(ignore_index)
    if not in_range:
        check_label_range(labels, num_classes, ignore_index)
    return CheckedLabels(labels, num_classes, ignore_index, tensor_version(labels))


def label_tensor(labels):
    """The tensor behind ``labels`` (a tensor or ``CheckedLabels``), for the shape and device checks."""
    return labels.tensor if isinstance(labels, CheckedLabels) else labels


def check_label_range(labels, num_classes: int, ignore_index: int) -> None:
    """Every label is ignore_index or in [0, C). A tensor: one reduction and one host sync. A
    ``CheckedLabels``: its C, ignore_index and version, from metadata."""
    _check_ignore_index(ignore_index)
    if isinstance(labels, CheckedLabels):
        if (labels.num_classes, labels.ignore_index) != (num_classes, ignore_index):
            raise ValueError(f"labels were checked for num_classes={labels.num_classes}, ignore_index="
                             f"{labels.ignore_index}; this op has num_classes={num_classes}, "
                             f"ignore_index={ignore_index}")
        if tensor_version(labels.tensor) != labels.version:
            raise ValueError("labels were written in place after kernels.checked_labels checked them; "
                             "check them again")
        return
    if labels.numel() == 0:
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(f"labels must be in [0, {num_classes}) or ignore_index={ignore_index}; "
                         f"found {value}")


def check_stats(mean, cov, num_classes: int | None, dim: int) -> None:
    """mean [C, D]; cov [C, D] (diagonal) or [C, D, D] (full) or None."""
    if not isinstance(mean, torch.Tensor):
        raise TypeError(f"mean must be a torch.Tensor, got {type(mean).__name__}")
    if mean.dim() != 2 or mean.shape[1] != dim or (num_classes is not None and mean.shape[0] != num_classes):
        want = f"[{num_classes if num_classes is not None else 'C'}, {dim}]"
        raise ValueError(f"mean must have shape {want}, got {tuple(mean.shape)}")
    if not mean.is_floating_point():
        raise TypeError(f"mean must be floating point, got {mean.dtype}")
    if not 1 <= mean.shape[0] <= 256:
        raise ValueError(f"mean must hold at least 1 and at most 256 classes, got C = {mean.shape[0]}")
    if cov is None:
        return
    if not isinstance(cov, torch.Tensor):
        raise TypeError(f"cov must be a torch.Tensor or None, got {type(cov).__name__}")
    c = mean.shape[0]
    if cov.shape not in ((c, dim), (c, dim, dim)):
        raise ValueError(f"cov must have shape [{c}, {dim}] (diagonal) or [{c}, {dim}, {dim}] "
                         f"(full) to match mean {tuple(mean.shape)}, got {tuple(cov.shape)}")
    if not cov.is_floating_point():
        raise TypeError(f"cov must be floating point, got {cov.dtype}")


def check_dim(dim: int, full: bool) -> None:
    limit = 256 if full else 1024
    if dim > limit:
        kind = "full" if full else "diagonal"
        raise ValueError(f"D = {dim} channels exceeds the {kind}-covariance limit of {limit}")


def sort_by_class(labels: torch.Tensor, num_classes: int, ignore_index: int):
    """Pixel indices grouped by class (stable, so the order inside a class is pixel order) and the
    [C + 1] offsets where each class starts; ignored pixels sort past the end of class C - 1."""
    key = torch.where(labels == ignore_index, torch.full_like(labels, num_classes), labels)
    sorted_key, order = torch.sort(key, stable=True)
    starts = torch.arange(num_classes + 1, device=labels.device, dtype=sorted_key.dtype)
    bounds = torch.searchsorted(sorted_key, starts)
    return order, bounds

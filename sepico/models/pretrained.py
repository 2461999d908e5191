"""Load ImageNet weights into an encoder from a local file, with strict key matching.

Never downloads. The file is a state dict, or a dict holding one under ``"state_dict"`` or
``"model"`` (the SegFormer ``mit_b*.pth`` files are plain state dicts, mmcv checkpoints hold one
under ``"state_dict"``). An ImageNet classifier (``head.*`` for MiT, ``fc.*`` for ResNet) is
dropped; every other key must match the encoder's exactly, in name and shape. The one tolerated absence is BatchNorm's ``num_batches_tracked`` counter, which checkpoints
saved before PyTorch 0.4 do not have. ``weight_problems`` is the strict check, shared with the
conversion of official checkpoints and ``model.init_checkpoint``.
"""
from __future__ import annotations

import os
import pickle
from typing import NamedTuple

import torch
from torch import nn

_SHOWN = 5  # how many offending keys an error names
_OPTIONAL_SUFFIX = ".num_batches_tracked"


class LoadedCheckpoint(NamedTuple):
    loaded: int                 # tensors copied into the encoder
    dropped: tuple[str, ...]    # classifier keys removed from the file


def load_pretrained_encoder(model: nn.Module, path: str | os.PathLike) -> LoadedCheckpoint:
    """Copy the ImageNet weights in ``path`` into ``model``'s encoder (or into ``model`` itself
    when it is an encoder). Raises ``ValueError`` naming the first few missing or unexpected keys,
    or the first shape mismatches, before anything is copied."""
    encoder = getattr(model, "encoder", model)
    prefixes = getattr(encoder, "CLASSIFIER_PREFIXES", None)
    if prefixes is None:
        raise TypeError(f"{type(model).__name__} is neither a sepico model nor one of its encoders")
    state = _read_state_dict(path)
    dropped = tuple(k for k in state if k.startswith(prefixes))
    state = {k: v for k, v in state.items() if not k.startswith(prefixes)}

    problems = weight_problems(encoder.state_dict(), state, optional_suffix=_OPTIONAL_SUFFIX)
    if problems:
        raise ValueError(f"{os.fspath(path)} does not match the {type(encoder).__name__} encoder: {problems}")
    # Keys are checked above; strict=False only lets an absent num_batches_tracked through.
    encoder.load_state_dict(state, strict=False)
    return LoadedCheckpoint(loaded=len(state), dropped=dropped)


def weight_problems(expected: dict, given: dict, *, name=str, optional_suffix: str | None = None) -> str | None:
    """What keeps ``given`` tensors from loading strictly into a module whose state dict is
    ``expected``: "N missing key(s): ...; M unexpected key(s): ...", else the shape mismatches,
    naming the first few (``name`` spells a key, e.g. under another naming scheme); None when every
    key is there with its shape. A missing key ending in ``optional_suffix`` is tolerated."""
    missing = [name(k) for k in expected if k not in given
               and not (optional_suffix and k.endswith(optional_suffix))]
    unexpected = [name(k) for k in given if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if problems:
        return "; ".join(problems)
    shapes = [f"{name(k)} {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model"
              for k, v in given.items() if tuple(v.shape) != tuple(expected[k].shape)]
    return f"{len(shapes)} shape mismatch(es): {_first(shapes)}" if shapes else None


def _read_state_dict(path) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint not found: {os.fspath(path)}")
    try:
        # weights_only: a checkpoint is data, and unpickling arbitrary objects would run code.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{os.fspath(path)} holds objects other than tensors and plain "
                         f"containers; save its state dict alone ({err})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ValueError(f"{os.fspath(path)} is not a state dict (a mapping of names to tensors), "
                         f"nor a dict holding one under 'state_dict' or 'model'")
    return obj


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")

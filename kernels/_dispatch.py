"""Backend choice, interpreter detection and input validation shared by every op.

Nothing here does math. Every public op validates its inputs with these helpers (on the host,
from tensor metadata, plus one cheap label-range check) and then asks `resolve_backend` which
implementation to run: the Triton kernels (compiled on CUDA, interpreted on CPU when
``TRITON_INTERPRET=1`` was set before triton was imported) or the chunked PyTorch path.
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch
import triton

BACKENDS = ("auto", "triton", "torch")
TILES = ("auto", "gpu")
FLOAT_FEATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TRITON_FEATS = (torch.float32, torch.float16, torch.bfloat16)
INT_LABELS = (torch.int64, torch.int32)
# The covariance kind, one encoding for every op: none (counts and sums only; ProtoCL), diagonal,
# full. The kernels take it as an int constexpr (moments' SECOND_MODE, the loss's COV_MODE).
COV_NONE, COV_DIAG, COV_FULL = 0, 1, 2

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("kernels_backend", default=None)
_forced_tiles: contextvars.ContextVar[str | None] = contextvars.ContextVar("kernels_tiles", default=None)


@triton.jit
def _probe_kernel():
    # Decorated when this module is imported, like every kernel of the package: its class says
    # whether the kernels were made interpreted (TRITON_INTERPRET=1 at import) or compiled.
    pass


def interpreting() -> bool:
    """True when the kernels run in the Triton interpreter (on CPU tensors)."""
    return type(_probe_kernel).__name__ == "InterpretedFunction"


@contextlib.contextmanager
def _forcing(var: contextvars.ContextVar, name: str, options: tuple, what: str):
    if name not in options:
        raise ValueError(f"{what} must be one of {options}, got {name!r}")
    token = var.set(name)
    try:
        yield
    finally:
        var.reset(token)


def _requested(var: contextvars.ContextVar, env: str, options: tuple) -> str:
    """The innermost forcing block's value, else the environment variable's, else auto."""
    name = var.get()
    if name is None:
        name = os.environ.get(env, "auto") or "auto"
    if name not in options:
        raise ValueError(f"{env} must be one of {options}, got {name!r}")
    return name


def backend(name: str):
    """Force the implementation inside a ``with`` block: ``"triton"``, ``"torch"`` or ``"auto"``."""
    return _forcing(_forced, name, BACKENDS, "backend")


def tiles(name: str):
    """Which launch configurations the kernels use inside a ``with`` block: ``"auto"`` (large
    tiles in the interpreter, where they make it fast; the GPU ones when compiled) or ``"gpu"``
    (the GPU ones everywhere: the interpreter then checks the numerics of exactly what a GPU runs,
    partial tiles, channel chunks and split reductions included). ``KERNELS_TILES`` sets the
    default."""
    return _forcing(_forced_tiles, name, TILES, "tiles")


def interpreter_tiles() -> bool:
    """True when the launch configurations should be the interpreter's (see ``tiles``)."""
    return _requested(_forced_tiles, "KERNELS_TILES", TILES) == "auto" and interpreting()


def requested_backend() -> str:
    """The backend asked for: the innermost ``backend(...)`` block, else ``KERNELS_BACKEND``, else auto."""
    return _requested(_forced, "KERNELS_BACKEND", BACKENDS)


def resolve_backend(*tensors: torch.Tensor | None) -> str:
    """Pick ``"triton"`` or ``"torch"`` for tensors that already share one device.

    auto: Triton on CUDA unless a float64 tensor is involved (float64 is the torch path's job:
    gradcheck and references), torch on CPU.
    """
    present = [t for t in tensors if t is not None]
    device = present[0].device
    has_f64 = any(t.dtype == torch.float64 for t in present)
    name = requested_backend()
    if name == "auto":
        return "triton" if device.type == "cuda" and not has_f64 else "torch"
    if name == "triton":
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                "the triton backend needs CUDA tensors, or TRITON_INTERPRET=1 set before triton "
                f"is first imported to run the kernels on {device.type} tensors")
        if has_f64:
            raise TypeError("the triton backend computes in float32; float64 inputs run on the "
                            "torch backend (use kernels.backend('torch') or 'auto')")
    return name


def poisoned_empty(*shape, dtype=torch.float32, device=None) -> torch.Tensor:
    """``torch.empty``, or NaN-filled when ``KERNELS_POISON=1`` so tests catch unwritten outputs."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if os.environ.get("KERNELS_POISON") == "1" and out.is_floating_point():
        out.fill_(float("nan"))
    return out


# --------------------------------------------------------------------------- validation

def check_feats(feats, name: str = "feats") -> None:
    if not isinstance(feats, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(feats).__name__}")
    if feats.dim() != 2:
        raise ValueError(f"{name} must have shape [N, D], got {tuple(feats.shape)}")
    if feats.dtype not in FLOAT_FEATS:
        raise TypeError(f"{name} must be float32, float16 or bfloat16 (float64 on the torch "
                        f"backend), got {feats.dtype}")
    if feats.shape[1] < 1:
        raise ValueError(f"{name} must have at least one channel, got shape {tuple(feats.shape)}")


def check_labels(labels, n: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in INT_LABELS:
        raise TypeError(f"labels must be int64 or int32, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape [N] = [{n}] to match feats, got "
                         f"{tuple(labels.shape)}")


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


def check_label_range(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """One reduction and one host sync: every label is ignore_index or in [0, C)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} {ignore_index!r}")
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

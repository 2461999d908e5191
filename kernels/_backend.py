"""Which implementation an op runs: the Triton kernels (compiled on CUDA, interpreted on CPU when
``TRITON_INTERPRET=1`` was set before triton was imported) or the chunked PyTorch path, and which
launch configurations the kernels use (``backend``, ``tiles``, ``resolve_backend``).
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch
import triton
import triton.language as tl  # noqa: F401  (the interpreter looks for it beside a jit function)

BACKENDS = ("auto", "triton", "torch")
TILES = ("auto", "gpu")

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

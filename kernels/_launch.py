"""What a launcher hands a kernel: the launch description (``Launch``, which the compile check
compiles too) and the output buffers (poisoned under ``KERNELS_POISON``; the gradient buffer in
the features' layout, backed by huge pages on Linux).
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from dataclasses import dataclass

import torch

from ._layout import channels_last


@dataclass(frozen=True)
class Launch:
    """One kernel launch, described once by its op module (``*_launch`` functions): the launcher
    calls it, ``kernels.compile_check`` compiles the same arguments ahead of time (with pointer
    stand-ins for the tensors)."""
    kernel: object
    args: tuple             # (parameter name, value) in the kernel's parameter order
    grid: tuple
    num_warps: int
    num_stages: int | None  # None: Triton's default
    maxnreg: int | None = None  # registers per thread ptxas may use; None: its own heuristic

    @property
    def options(self) -> dict:
        """The compile options (``num_warps``, ``num_stages``, ``maxnreg``) that are set."""
        opts = {"num_warps": self.num_warps, "num_stages": self.num_stages, "maxnreg": self.maxnreg}
        return {k: v for k, v in opts.items() if v is not None}

    def __call__(self):
        self.kernel[self.grid](*(value for _, value in self.args), **self.options)


def poisoned_empty(*shape, dtype=torch.float32, device=None) -> torch.Tensor:
    """``torch.empty``, or NaN-filled when ``KERNELS_POISON=1`` so tests catch unwritten outputs."""
    return _poison(torch.empty(*shape, dtype=dtype, device=device))


def _poison(out: torch.Tensor) -> torch.Tensor:
    if os.environ.get("KERNELS_POISON") == "1" and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def gradient_buffer(feats: torch.Tensor, dtype) -> torch.Tensor:
    """An empty tensor shaped like ``feats`` in its layout: channels-last for a channels-last map,
    else contiguous (so every image's rows are a view, `image_rows`). A CPU buffer of 32 MiB or
    more is backed by transparent huge pages faulted in at once (`_advise_huge_pages`). NaN-filled
    under ``KERNELS_POISON=1``."""
    fmt = torch.channels_last if channels_last(feats) else torch.contiguous_format
    out = torch.empty(feats.shape, dtype=dtype, device=feats.device, memory_format=fmt)
    if out.device.type == "cpu":
        _advise_huge_pages(out)
    return _poison(out)


MADV_HUGEPAGE = 14
MADV_POPULATE_WRITE = 23  # Linux 5.14; EINVAL before (no harm)
_HUGE_PAGE = 1 << 21


def _advise_huge_pages(out: torch.Tensor) -> None:
    """Back a fresh CPU buffer by transparent huge pages, faulted in at once.

    A fresh [N, D] buffer is faulted in page by page as its first writes arrive: with 4 KiB pages
    that cost 0.1 to 0.15 s for the 268 MB gradient at N = 262144, D = 256 on one core (a third
    of the whole forward + backward). Advised as huge pages (MADV_HUGEPAGE) it takes a quarter of
    that, but first-touch faults of huge pages were erratic on the 2-core VM the benchmarks ran on
    (0.04 to 0.5 s of kernel time per buffer); populating the range in one call
    (MADV_POPULATE_WRITE) was a steady 0.04 to 0.06 s. Linux only; elsewhere, or where madvise
    fails, the buffer stays ordinary memory. Nothing changes a value or the size.
    """
    madvise = _madvise()
    lo = (out.data_ptr() + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
    hi = (out.data_ptr() + out.numel() * out.element_size()) & ~(_HUGE_PAGE - 1)
    # Only from 32 MiB, glibc's largest mmap threshold: such a block is its own mapping, which
    # goes (advice and all) when the tensor is freed, never heap that smaller tensors reuse.
    if madvise is not None and hi - lo >= 16 * _HUGE_PAGE:
        madvise(lo, hi - lo, MADV_HUGEPAGE)
        madvise(lo, hi - lo, MADV_POPULATE_WRITE)


@functools.cache
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn

"""Where pixel n's channel d lives: pixel embeddings come as rows [N, D] or as the map a network
emits, [B, D, h, w] (any strides); ``PixelLayout`` describes either, so one launch covers a whole
batch and a gradient can be written in the map's own layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl  # noqa: F401  (the interpreter looks for it beside a jit function)


@dataclass(frozen=True)
class PixelLayout:
    """Where channel d of pixel p of image b lives: b * stride_b + p * stride_p + d * stride_d
    elements from the start, p = y w + x in image row order. ``rows``: the features are rows
    [N, D] (or a channels-last map, which is rows in memory: one image of B h w pixels) and their
    gradient buffer is contiguous [N, D]; else a map whose gradient buffer is a contiguous
    [B, D, h, w] (`gradient_buffer`). A map keeps its strides (no copy) when its h and w axes
    merge into one pixel axis (`pixel_map`)."""
    rows: bool
    batch: int
    hw: int        # pixels per image
    stride_b: int
    stride_p: int
    stride_d: int

    def args(self, tag: str) -> tuple:
        """Kernel arguments ``stride_{tag}b, stride_{tag}p, stride_{tag}d``."""
        return ((f"stride_{tag}b", self.stride_b), (f"stride_{tag}p", self.stride_p),
                (f"stride_{tag}d", self.stride_d))


def channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _merged_pixel_stride(t: torch.Tensor):
    """The stride of the merged h w pixel axis of a map, or None when h and w do not merge."""
    _, _, h, w = t.shape
    if h == 1:
        return t.stride(3)
    if w == 1:
        return t.stride(2)
    return t.stride(3) if t.stride(2) == w * t.stride(3) else None


def pixel_map(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself for rows and for maps whose h and w axes merge; a contiguous copy otherwise
    (a rare view, e.g. one with h and w swapped: autograd carries the gradient back)."""
    if t.dim() == 4 and _merged_pixel_stride(t) is None:
        return t.contiguous()
    return t


def pixel_layout(t: torch.Tensor) -> PixelLayout:
    if t.dim() == 2:
        return PixelLayout(rows=True, batch=1, hw=t.shape[0], stride_b=0, stride_p=t.stride(0),
                           stride_d=t.stride(1))
    b, dim, h, w = t.shape
    if channels_last(t):
        return PixelLayout(rows=True, batch=1, hw=b * h * w, stride_b=0, stride_p=dim, stride_d=1)
    stride_p = _merged_pixel_stride(t)
    if stride_p is None:
        raise ValueError("the h and w axes of this map do not merge into one pixel axis: pass "
                         "kernels._layout.pixel_map(t)")
    return PixelLayout(rows=False, batch=b, hw=h * w, stride_b=t.stride(0), stride_p=stride_p,
                       stride_d=t.stride(1))


@triton.jit
def pixel_offsets(n, HW, stride_b, stride_p):
    """Element offsets of flat pixel indices ``n`` = b * HW + p (int64) in a `PixelLayout`,
    channel 0."""
    b = n // HW
    return b * stride_b + (n - b * HW) * stride_p


def image_rows(t: torch.Tensor) -> list:
    """(first pixel, [P, D] rows) per image: rows [N, D] are one image; each image of a map
    [B, D, h, w] is a view when its h and w axes merge (`pixel_map`, the gradient buffers
    below), else a copy of that image."""
    if t.dim() == 2:
        return [(0, t)]
    _, dim, h, w = t.shape
    return [(i * h * w, image.reshape(dim, h * w).T) for i, image in enumerate(t.unbind(0))]


def _pixel_index(t: torch.Tensor, idx: torch.Tensor):
    """Flat pixel indices -> the index tuple of a [B, h, w, D] view of the map ``t``."""
    _, _, h, w = t.shape
    image, rest = idx.div(h * w, rounding_mode="floor"), idx.remainder(h * w)
    return image, rest.div(w, rounding_mode="floor"), rest.remainder(w)


def gather_pixels(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The embeddings [k, D] of the flat pixel indices ``idx`` [k] of rows [N, D] or a map."""
    if t.dim() == 2:
        return t[idx]
    return t.permute(0, 2, 3, 1)[_pixel_index(t, idx)]


def scatter_pixels(t: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> None:
    """``t``'s pixels ``idx`` (flat indices) set to ``values`` [k, D], in place."""
    if t.dim() == 2:
        t.index_copy_(0, idx, values)
    else:
        t.permute(0, 2, 3, 1).index_put_(_pixel_index(t, idx), values)

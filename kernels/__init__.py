"""Triton kernels for SePiCo: per-class moments, class-distribution updates and the fused
distribution-aware contrastive loss. Depends on torch and triton only.

CUDA tensors run the Triton kernels; CPU tensors run a chunked PyTorch path with the same memory
behaviour. ``KERNELS_BACKEND`` (``auto``, ``triton``, ``torch``) or ``with kernels.backend(...)``
forces one; with ``TRITON_INTERPRET=1`` set before triton is imported, the ``triton`` backend runs
the real kernels on CPU tensors through the Triton interpreter, with large interpreter tiles;
``with kernels.tiles("gpu")`` (or ``KERNELS_TILES=gpu``) makes it run the GPU launch
configurations instead.
"""
from ._dispatch import backend, interpreting, requested_backend, tiles
from .contrastive import dist_contrastive_loss
from .distribution import merge_class_moments, update_class_distribution
from .moments import class_moments

__all__ = ["backend", "class_moments", "dist_contrastive_loss", "interpreting",
           "merge_class_moments", "requested_backend", "tiles", "update_class_distribution"]

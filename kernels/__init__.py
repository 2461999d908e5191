"""Triton kernels for SePiCo: per-class moments, class-distribution updates, the fused
distribution-aware contrastive loss and the memory-bank contrastive loss. Depends on torch and
triton only. Every op takes pixel embeddings as rows [N, D] or as a whole [B, D, h, w] map (one
launch, read in place; the losses write their gradient in the map's layout).

CUDA tensors run the Triton kernels; CPU tensors run a chunked PyTorch path with the same memory
behaviour. ``KERNELS_BACKEND`` (``auto``, ``triton``, ``torch``) or ``with kernels.backend(...)``
forces one; with ``TRITON_INTERPRET=1`` set before triton is imported, the ``triton`` backend runs
the real kernels on CPU tensors through the Triton interpreter, with large interpreter tiles;
``with kernels.tiles("gpu")`` (or ``KERNELS_TILES=gpu``) makes it run the GPU launch
configurations instead.

Under ``torch.compile`` every op is a graph break (``torch.compiler.disable``): it runs as it does
eagerly, and the compiled graphs before and after it connect through autograd. Dynamo cannot
trace the ops' launch descriptions (``InternalTorchDynamoError`` on an H200 with torch 2.11), and
a fused kernel has nothing for the compiler to fuse.
"""
from ._backend import backend, interpreting, requested_backend, tiles
from ._checks import (CheckedLabels, check_label_range, check_num_classes, checked_labels, Covariance,
                      covariance_kind)
from .bank import bank_contrastive_loss, MemoryBank
from .contrastive import dist_contrastive_loss, scaled_statistics, ScaledStatistics
from .distribution import merge_class_moments, update_class_distribution
from .moments import class_moments

__all__ = ["CheckedLabels", "Covariance", "MemoryBank", "ScaledStatistics", "backend",
           "bank_contrastive_loss", "check_label_range", "check_num_classes", "checked_labels",
           "class_moments", "covariance_kind", "dist_contrastive_loss", "interpreting",
           "merge_class_moments", "requested_backend", "scaled_statistics", "tiles",
           "update_class_distribution"]

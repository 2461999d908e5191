"""The glue that keeps several processes (torchrun) in step; a single process calls none of it.

- ``init_distributed``: join the process group (nccl on GPUs, gloo on CPU) under torchrun.
- ``average_gradients``: the mean of every gradient over the ranks in flat buckets, what DDP does,
  without its rule that each forward pass must reach every parameter (the official passes each
  run only some of the heads).
- ``broadcast_from_first``: rank 0's tensors to every rank (initial weights, BatchNorm statistics).
- ``any_rank``: a flag raised on any rank, seen by all (a skipped step, a stop signal).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

BUCKET = 1 << 24  # elements per collective of flattened tensors


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank). Under torchrun (WORLD_SIZE > 1) this joins the process
    group: nccl on GPUs, gloo on CPU. A single process returns (0, 1, 0) and joins nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def average_gradients(parameters, world: int) -> None:
    """Replace each gradient by its mean over the ``world`` ranks (parameters without one skipped)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    for bucket in _buckets(grads, BUCKET):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        _unflatten_into(flat.div_(world), bucket)


def broadcast_from_first(tensors) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values."""
    for bucket in _buckets(list(tensors), BUCKET):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.broadcast(flat, 0)
        _unflatten_into(flat, bucket)


def any_rank(value: int, device) -> int:
    """The largest of ``value`` over the ranks (0 when no rank raised it)."""
    flag = torch.tensor([int(value)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def _buckets(tensors, limit: int):
    """Consecutive runs of same-dtype tensors of at most ``limit`` elements (or one larger tensor)."""
    bucket, size = [], 0
    for t in tensors:
        if bucket and (t.dtype != bucket[0].dtype or size + t.numel() > limit):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def _unflatten_into(flat, tensors) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


__all__ = ["BUCKET", "any_rank", "average_gradients", "broadcast_from_first", "init_distributed"]

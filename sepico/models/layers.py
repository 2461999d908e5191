"""Small building blocks shared by the encoders and heads.

Submodule names follow mmcv's ``ConvModule`` / ``DepthwiseSeparableConvModule`` (``conv``, ``bn``,
``depthwise_conv``, ``pointwise_conv``), so the heads' parameter names read like the DAFormer and
SePiCo heads they reproduce.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class ConvBNReLU(nn.Module):
    """Conv2d (no bias: the BatchNorm shift replaces it) -> BatchNorm2d -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *,
                 dilation: int = 1, groups: int = 1):
        super().__init__()
        padding = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding,
                              dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        # mmcv's ConvModule initialisation: Kaiming normal (fan_out, ReLU), BatchNorm 1 / 0.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """Depthwise 3x3 (dilated) conv-BN-ReLU followed by a pointwise 1x1 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvBNReLU(in_channels, in_channels, 3, dilation=dilation,
                                         groups=in_channels)
        self.pointwise_conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``drop_prob``.

    Kept samples are scaled by 1 / (1 - drop_prob) so the expectation is unchanged (timm's rule).
    Inactive in eval mode and when ``drop_prob`` is 0.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
        return x * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


# Modules whose randomness a teacher must switch off (see ``Segmentor.set_dropout``).
STOCHASTIC_MODULES = (nn.modules.dropout._DropoutNd, DropPath)


@contextlib.contextmanager
def _batch_norm_buffers_restored(module: nn.Module):
    """Undo what a recomputation does to training-mode BatchNorm buffers.

    Checkpointing runs a block's forward twice; the second run would apply the running-mean /
    running-var momentum update and the ``num_batches_tracked`` increment again. The buffers are
    tiny (a few vectors per block), so they are copied before the recomputation and written back
    after it: bit-exact, and the recomputation itself runs the very same ops (a requirement of
    non-reentrant checkpointing, which checks that it saves the same tensors).
    """
    # An eval-mode BatchNorm normalises by its running buffers and never updates them: skip it.
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats]
    saved = [[b.clone() for b in m.buffers()] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, copies in zip(norms, saved):
                for b, c in zip(m.buffers(), copies):
                    b.copy_(c)


def _checkpoint_contexts(module: nn.Module):
    return contextlib.nullcontext(), _batch_norm_buffers_restored(module)


def run_block(block: nn.Module, use_checkpoint: bool, *args):
    """``block(*args)``, through non-reentrant activation checkpointing when asked and useful.

    Checkpointing only pays when autograd records the graph; under ``no_grad`` /
    ``inference_mode`` (the EMA teacher) the block runs plainly. The RNG state is stashed and
    restored for the recomputation, so drop-path masks are identical in both passes.
    """
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False,
                          context_fn=functools.partial(_checkpoint_contexts, block))
    return block(*args)

"""Segmentation heads (DAFormer fusion head, DeepLab-V2 ASPP classifier) and SePiCo's projection
head.

Submodule names mirror the DAFormer / SePiCo heads (``embed_layers.0.proj``, ``fuse_layer.
aspp_modules.1.depthwise_conv.conv``, ``fuse_layer.bottleneck``, ``conv_seg``, ``convs.0.conv``),
so a trained DAFormer-family checkpoint maps onto them by renaming the top-level prefixes only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNReLU, SeparableConvBNReLU


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False, as mmseg's ``resize``); a no-op at the right size.

    Under ``torch.use_deterministic_algorithms`` a CUDA tensor that needs a gradient is resized as
    two matrix products with the interpolation weights instead: the same map (to rounding), whose
    backward is matrix products too, where ``F.interpolate``'s CUDA backward accumulates with
    atomics and has no deterministic kernel."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.is_cuda and x.requires_grad and torch.are_deterministic_algorithms_enabled():
        rows = bilinear_weights(x.shape[-2], int(size[0]), x)
        cols = bilinear_weights(x.shape[-1], int(size[1]), x)
        return torch.matmul(torch.matmul(rows, x), cols.t())
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def bilinear_weights(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """[n_out, n_in] weights of PyTorch's 1-D linear interpolation with align_corners=False: output
    i samples (i + 0.5) * n_in / n_out - 0.5, clamped at 0, between its two neighbours."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
    low = src.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = src - low
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, low), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights.to(device=like.device, dtype=like.dtype)


class MLPEmbedding(nn.Module):
    """A per-pixel linear map (SegFormer's ``MLP``), applied as a 1x1 conv to stay in NCHW."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)


class SeparableASPP(nn.Module):
    """DAFormer's fusion: ASPP with depthwise-separable dilated branches and no image pooling.

    Branch d = 1 is a 1x1 conv-BN-ReLU, the others a dilated depthwise 3x3 conv-BN-ReLU then a
    pointwise 1x1 conv-BN-ReLU; the concatenated branches go through a 3x3 conv-BN-ReLU bottleneck
    (DAFormer's ``ASPPWrapper`` with ``sep=True, pool=False``).
    """

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int] = (1, 6, 12, 18)):
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1) if d == 1
            else SeparableConvBNReLU(in_channels, channels, dilation=d) for d in dilations)
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class DAFormerHead(nn.Module):
    """Per-stage linear embedding to ``embed_dim``, resize to the first stage, concatenate,
    separable-ASPP fusion, dropout, 1x1 classifier. Logits come out at the first stage's stride."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, *, embed_dim: int = 256,
                 channels: int = 256, dilations: Sequence[int] = (1, 6, 12, 18),
                 dropout: float = 0.1):
        super().__init__()
        self.embed_layers = nn.ModuleDict(
            {str(i): MLPEmbedding(c, embed_dim) for i, c in enumerate(in_channels)})
        self.fuse_layer = SeparableASPP(embed_dim * len(in_channels), channels, dilations)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        # Embed before resizing: the coarse stages are upsampled at 256 channels, not at 320 / 512.
        embedded = [resize_to(self.embed_layers[str(i)](f), size) for i, f in enumerate(features)]
        return self.conv_seg(self.dropout(self.fuse_layer(torch.cat(embedded, dim=1))))


class ASPPClassifier(nn.Module):
    """DeepLab-V2 classifier (the official ``DLV2Head``): the sum of parallel dilated 3x3 convs
    (with bias, no norm, no activation) to the classes. Each conv sits in a module of its own as
    ``conv`` (mmcv's ``ConvModule`` without norm and activation), so the parameter names are the
    official ones: ``aspp_modules.0.conv.weight``, ``aspp_modules.0.conv.bias``, ..."""

    def __init__(self, in_channels: int, num_classes: int,
                 dilations: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.aspp_modules = nn.ModuleList(_Conv(nn.Conv2d(in_channels, num_classes, 1 if d == 1 else 3,
                                                          padding=0 if d == 1 else d, dilation=d))
                                          for d in dilations)
        for branch in self.aspp_modules:
            nn.init.normal_(branch.conv.weight, 0.0, 0.01)  # init_cfg Normal(std=0.01) on aspp_modules
            nn.init.zeros_(branch.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.aspp_modules[0](x)
        for branch in self.aspp_modules[1:]:
            out = out + branch(x)
        return out


class _Conv(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ProjectionHead(nn.Module):
    """SePiCo's projection head: resize the chosen stages to the first one's size, concatenate,
    two 1x1 conv-BN-ReLU layers (sum(in) -> hidden -> proj_dim), L2-normalise each pixel.

    ``hidden`` defaults to SePiCo's rule: sum(in_channels) / len(in_channels) (1024 -> 256 for four
    MiT stages, 2048 -> 2048 for one ResNet stage).

    The first layer is evaluated without building the concatenation: a 1x1 conv of a
    concatenation is the sum of per-stage 1x1 convs (the weight split along its input channels),
    and bilinear resizing is linear, so each stage is projected at its own resolution and then
    resized and summed. Same function and parameters; no [B, sum(in), h, w] tensor at stride 4.
    """

    def __init__(self, in_channels: Sequence[int], proj_dim: int = 256, hidden: int | None = None):
        super().__init__()
        self.in_channels = tuple(in_channels)
        total = sum(self.in_channels)
        hidden = total // len(self.in_channels) if hidden is None else hidden
        self.convs = nn.Sequential(ConvBNReLU(total, hidden, 1), ConvBNReLU(hidden, proj_dim, 1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(features)}")
        first = self.convs[0]
        size = features[0].shape[-2:]
        weights = first.conv.weight.split(self.in_channels, dim=1)
        x = resize_to(F.conv2d(features[0], weights[0]), size)
        for f, w in zip(features[1:], weights[1:]):
            x = x + resize_to(F.conv2d(f, w), size)
        x = self.convs[1](first.activate(first.bn(x)))
        return F.normalize(x, p=2, dim=1)

"""A small convolutional segmentor trained from scratch: the CPU demo's model.

Seven 3x3 conv-BN-ReLU layers in four stages (strides 2, 4, 8, 8; the last stage dilated), a 3x3
conv-BN-ReLU + 1x1 classifier on the last stage (logits at stride 8) and the SePiCo projection
head on the last stage (embeddings at stride 8), as in the calibration experiment of design
section 9. About 0.16 M parameters at the default width: a 128 x 256 scene takes milliseconds on a
CPU core. It is no stand-in for DAFormer or DeepLab-V2 on real data; it exists so the whole method
runs end to end, on the synthetic benchmark, on a laptop.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import ConvBNReLU, run_block
from .segmentors import Segmentor, _check_positive, _check_stages


class SmallConvEncoder(nn.Module):
    """Four stages of 3x3 conv-BN-ReLU layers; returns the four stage maps.

    ====  ===========================  ======  ===========
    stage layers                       stride  channels
    ====  ===========================  ======  ===========
    0     conv s2, conv                2       width
    1     conv s2, conv                4       2 width
    2     conv s2                      8       4 width
    3     conv d2, conv d4             8       4 width
    ====  ===========================  ======  ===========

    Each map is ceil(H / stride) x ceil(W / stride).
    """

    def __init__(self, in_chans: int = 3, width: int = 16, activation_checkpointing: bool = False,
                 norm: str = "batch"):
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")
        self.in_chans = in_chans
        c0, c1, c2 = width, 2 * width, 4 * width
        self.stages = nn.ModuleList([
            nn.Sequential(_strided(in_chans, c0), ConvBNReLU(c0, c0, 3)),
            nn.Sequential(_strided(c0, c1), ConvBNReLU(c1, c1, 3)),
            nn.Sequential(_strided(c1, c2)),
            nn.Sequential(ConvBNReLU(c2, c2, 3, dilation=2), ConvBNReLU(c2, c2, 3, dilation=4)),
        ])
        if norm == "group":
            # Per-image normalisation: no batch statistics, so a target batch cannot reach the
            # encoder through its normalisation layers (the ablation's question); the layer keeps
            # its attribute name so the rest of the code sees one layout.
            for layer in self.modules():
                if isinstance(layer, ConvBNReLU):
                    layer.bn = nn.GroupNorm(GROUPS, layer.bn.num_features)
        self.strides = (2, 4, 8, 8)
        self.out_channels = (c0, c1, c2, c2)
        self.activation_checkpointing = activation_checkpointing

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = run_block(stage, self.activation_checkpointing, x)
            features.append(x)
        return features


GROUPS = 8  # GroupNorm groups of the encoder with norm="group" (widths are multiples of 8 by default)


def _strided(in_channels: int, out_channels: int) -> ConvBNReLU:
    """A 3x3 conv-BN-ReLU with stride 2 (padding 1: output ceil(n / 2))."""
    layer = ConvBNReLU(in_channels, out_channels, 3)
    layer.conv.stride = (2, 2)
    return layer


class SmallSegHead(nn.Module):
    """3x3 conv-BN-ReLU then a 1x1 classifier, on the last stage."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, in_channels, 3)
        self.conv_seg = nn.Conv2d(in_channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.conv(x))


class SmallConvNet(Segmentor):
    """``SmallConvEncoder`` + ``SmallSegHead`` + projection head on the last stage (stride 8).

    ``build_model("convnet_small", num_classes=19, proj_dim=64)``; ``width`` sets the channels
    (16 -> 16 / 32 / 64 / 64 per stage); ``encoder_norm="group"`` puts GroupNorm in the encoder
    (the heads keep BatchNorm)."""

    def __init__(self, num_classes: int = 19, *, proj_dim: int = 64, proj_hidden: int | None = None,
                 width: int = 16, projection_stages: Sequence[int] = (3,),
                 activation_checkpointing: bool = False, encoder_norm: str = "batch"):
        _check_positive(num_classes=num_classes, proj_dim=proj_dim)
        _check_stages(projection_stages)
        backbone = SmallConvEncoder(3, width, activation_checkpointing, encoder_norm)
        head = SmallSegHead(backbone.out_channels[-1], num_classes)
        super().__init__(backbone, head, projection_stages=projection_stages, proj_dim=proj_dim,
                         proj_hidden=proj_hidden, logits_stage=-1)

    def _decode(self, features):
        return self.decode_head(features[-1])


__all__ = ["SmallConvEncoder", "SmallSegHead", "SmallConvNet"]

"""ResNet-V1c 18 / 50 / 101, the DeepLab-V2 encoder of the published SePiCo runs, with the
DeepLab-V2 dilation (output stride 8) by default.

This is mmseg's ``ResNetV1c``: a deep stem of three 3x3 conv-BN-ReLU layers (32, 32, 64 channels,
the first at stride 2) and a 3x3 / stride 2 max pool in place of the 7x7 conv; stride 2 sits in the
3x3 conv of a bottleneck ("pytorch" style); downsampling shortcuts are strided 1x1 conv + BN.
Module and parameter names are mmseg's (``stem.0.weight``, ``stem.1.running_mean``, ...,
``stem.7.weight``, ``layer1.0.conv1.weight``, ``layer1.0.bn1.weight``,
``layer2.0.downsample.0.weight``), so mmseg's ``resnet101_v1c`` ImageNet file and the backbone of a
released DeepLab-V2 SePiCo checkpoint (``backbone.*``) load into it; an ImageNet classifier
``fc.*``, where a file has one, is not part of the encoder (``sepico.models.pretrained`` drops it).

Dilation replaces the stride of the last stages: with output stride 8, layer3 runs at stride 1 with
dilation 2 and layer4 at stride 1 with dilation 4 (the published ``strides=(1, 2, 1, 1)``,
``dilations=(1, 1, 2, 4)``), and the first block of a dilated stage runs at half its dilation (1 and
2: mmseg's ``contract_dilation=True``). In a basic block only the first 3x3 conv is dilated (mmseg's
rule). The outputs are the four stage maps: strides 4, 8, 8, 8
at output stride 8 (4, 8, 16, 32 at output stride 32), each ceil(H / stride) x ceil(W / stride).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import run_block

# depth -> (block type, blocks per stage)
RESNET_DEPTHS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3)),
                 101: ("bottleneck", (3, 4, 23, 3))}
# output stride -> which of layer2, layer3, layer4 trade their stride 2 for dilation
_DILATE = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-V1c encoder: ``forward(x [B, 3, H, W])`` -> [layer1, layer2, layer3, layer4] outputs.

    With ``activation_checkpointing`` each residual block is recomputed in the backward; the
    recomputation does not update BatchNorm running statistics a second time.
    """

    def __init__(self, depth: int = 101, *, output_stride: int = 8, in_chans: int = 3,
                 activation_checkpointing: bool = False):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; "
                             f"choose one of {sorted(RESNET_DEPTHS)}")
        if output_stride not in _DILATE:
            raise ValueError(f"output_stride must be one of {sorted(_DILATE)}, got {output_stride}")
        kind, blocks = RESNET_DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.in_chans = in_chans
        self.activation_checkpointing = activation_checkpointing
        self.stem = nn.Sequential(
            _conv3x3(in_chans, 32, stride=2), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            _conv3x3(32, 32), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            _conv3x3(32, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        self._inplanes, self._dilation = 64, 1
        stride, strides = 4, []
        dilated = (False,) + _DILATE[output_stride]
        for i, (planes, dilate) in enumerate(zip((64, 128, 256, 512), dilated)):
            layer_stride = 1 if i == 0 or dilate else 2
            self.add_module(f"layer{i + 1}", self._make_layer(block, planes, blocks[i],
                                                              layer_stride, dilate))
            stride *= layer_stride
            strides.append(stride)
        del self._inplanes, self._dilation
        self.out_channels = tuple(p * block.expansion for p in (64, 128, 256, 512))
        self.strides = tuple(strides)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int,
                    dilate: bool) -> nn.Sequential:
        first_dilation = self._dilation
        if dilate:
            self._dilation *= 2
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self._inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self._inplanes, planes, stride, first_dilation, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes, 1, self._dilation) for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}"):
                x = run_block(block, self.activation_checkpointing, x)
            outs.append(x)
        return outs

"""Mix Transformer (MiT-B0 ... B5), the SegFormer encoder used by DAFormer.

Four stages; stage ``i`` is an overlapping patch embedding (a strided conv, 7x7 / stride 4 for the
first stage, 3x3 / stride 2 after), a stack of transformer blocks and a LayerNorm. A block is

    x = x + drop_path(attn(norm1(x)))      efficient self-attention: keys and values come from
                                           the tokens reduced by an sr x sr strided conv
                                           (+ LayerNorm)
    x = x + drop_path(mlp(norm2(x)))       Mix-FFN: fc1 -> depthwise 3x3 conv -> GELU -> fc2

The outputs are the four stage maps [B, C_i, ceil(H / s_i), ceil(W / s_i)], s = 4, 8, 16, 32.

Module and parameter names are those of the ImageNet checkpoints the SegFormer authors distribute
(``mit_b0.pth`` ... ``mit_b5.pth``, used by DAFormer and SePiCo): ``patch_embed1.proj.weight``,
``block1.0.attn.kv.weight``, ``block1.0.mlp.dwconv.dwconv.weight``, ``norm1.weight`` and so on.
Those checkpoints also hold the ImageNet classifier ``head.weight`` / ``head.bias``, which this
encoder does not have (``sepico.models.pretrained`` drops it, and reads the other published layouts
of the same weights). LayerNorm epsilons are the published ones: 1e-6
in the blocks and after each stage, PyTorch's default 1e-5 in the patch embeddings and after the
spatial reduction.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath, run_block

# name -> (embed dims, depths); every variant has heads (1, 2, 5, 8), sr ratios (8, 4, 2, 1) and
# MLP ratio 4 (NVlabs/SegFormer, mmseg/models/backbones/mix_transformer.py).
MIT_CONFIGS = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
NUM_HEADS = (1, 2, 5, 8)
SR_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4
BLOCK_NORM_EPS = 1e-6


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows, then LayerNorm over channels; returns tokens."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride,
                              padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced token map.

    ``kv`` packs keys then values along its output features ([k heads..., v heads...]), as in the
    published weights. The product runs through ``F.scaled_dot_product_attention`` (scale
    1 / sqrt(head_dim), the published one), so on GPU the N x N' score matrix is never stored.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).view(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(batch, dim, height, width))
            x = self.norm(reduced.flatten(2).transpose(1, 2))
        kv = self.kv(x).view(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DepthwiseConv(nn.Module):
    """Depthwise 3x3 conv on a token sequence laid out as a height x width map."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, dim = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(batch, dim, height, width))
        return x.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MixVisionTransformer(nn.Module):
    """MiT encoder: ``forward(x [B, 3, H, W])`` -> four maps at strides 4, 8, 16, 32.

    ``drop_path_rate`` grows linearly from 0 at the first block to this value at the last
    (0.1 in SegFormer, DAFormer and SePiCo). With ``activation_checkpointing`` each transformer
    block is recomputed in the backward instead of keeping its activations.
    """

    def __init__(self, embed_dims: Sequence[int], depths: Sequence[int], *,
                 num_heads: Sequence[int] = NUM_HEADS, sr_ratios: Sequence[int] = SR_RATIOS,
                 drop_path_rate: float = 0.1, in_chans: int = 3,
                 activation_checkpointing: bool = False):
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(num_heads) == len(sr_ratios) == 4):
            raise ValueError("embed_dims, depths, num_heads and sr_ratios need one entry per "
                             "stage (4)")
        self.out_channels = tuple(embed_dims)
        self.strides = (4, 8, 16, 32)
        self.in_chans = in_chans
        self.activation_checkpointing = activation_checkpointing
        total = sum(depths)
        rates = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]  # linspace(0, rate)
        first = 0
        for i in range(4):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            previous = in_chans if i == 0 else embed_dims[i - 1]
            self.add_module(f"patch_embed{i + 1}",
                            OverlapPatchEmbed(previous, embed_dims[i], patch, stride))
            self.add_module(f"block{i + 1}", nn.ModuleList(
                Block(embed_dims[i], num_heads[i], sr_ratios[i], rates[first + j])
                for j in range(depths[i])))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=BLOCK_NORM_EPS))
            first += depths[i]
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch = x.shape[0]
        outs = []
        for i in range(1, 5):
            x, height, width = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = run_block(block, self.activation_checkpointing, x, height, width)
            x = getattr(self, f"norm{i}")(x)
            x = x.transpose(1, 2).reshape(batch, -1, height, width)
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    """The SegFormer initialisation (used when no ImageNet checkpoint is loaded)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def mit(name: str, **kwargs) -> MixVisionTransformer:
    """``mit("mit_b5", drop_path_rate=0.1, activation_checkpointing=False)``."""
    if name not in MIT_CONFIGS:
        raise ValueError(f"unknown MiT variant {name!r}; choose one of {sorted(MIT_CONFIGS)}")
    embed_dims, depths = MIT_CONFIGS[name]
    return MixVisionTransformer(embed_dims, depths, **kwargs)

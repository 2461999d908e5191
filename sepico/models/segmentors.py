"""The two SePiCo model families: encoder + segmentation head + projection head, one encoder pass.

``model(x)`` returns ``(logits, embeddings)``:

=================  ====================  ========================  ==============================
family             logits                embeddings                projection input
=================  ====================  ========================  ==============================
DAFormer (MiT)     [B, C, H/4, W/4]      [B, proj_dim, H/4, W/4]   4 stages resized to stride 4
DeepLab-V2 (R)     [B, C, H/8, W/8]      [B, proj_dim, H/8, W/8]   last stage (stride 8)
=================  ====================  ========================  ==============================

(sizes are ceil(H / stride) x ceil(W / stride); ``logits_stride`` / ``embedding_stride`` hold the
strides). Logits are not upsampled: the caller resizes them to the label size it needs.
Embeddings have unit L2 norm per pixel (a pixel whose features the ReLU zeroed entirely stays 0).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .heads import ASPPClassifier, DAFormerHead, ProjectionHead
from .layers import STOCHASTIC_MODULES
from .mit import mit
from .resnet import ResNet


class Segmentor(nn.Module):
    """Common surface of the model families (``encoder``, ``decode_head``, ``projection_head``).

    - ``forward(x)`` -> (logits, embeddings); ``predict_logits(x)`` skips the projection head.
    - The three parts one at a time, for the training passes that run only some of them (SePiCo's
      target pass: encoder + projection head; its mix pass: encoder + decode head):
      ``encode(x)`` -> stage features, ``decode(features)`` -> logits, ``project(features)`` ->
      embeddings.
    - ``encoder_parameters()``; ``parameter_groups(lr, weight_decay, head_lr_mult=10)`` builds the official optimiser
      groups (heads at 10x lr, no decay on normalisation layers named ``norm``).
    - ``set_dropout(False)`` switches dropout and drop-path off and keeps them off across
      ``train()`` calls, while BatchNorm keeps following the train / eval mode (the EMA teacher
      of DAFormer and SePiCo runs like that); ``eval()`` switches everything off.
    - ``activation_checkpointing`` (settable) recomputes each encoder block in the backward.
    """

    encoder: nn.Module
    decode_head: nn.Module
    projection_head: ProjectionHead
    logits_stride: int
    embedding_stride: int

    def __init__(self, encoder: nn.Module, decode_head: nn.Module, *, projection_stages: Sequence[int],
                 proj_dim: int, proj_hidden: int | None, logits_stage: int):
        """``encoder`` exposes ``out_channels``, ``strides`` and ``in_chans`` per stage; the
        projection head reads the ``projection_stages``, the logits come at ``logits_stage``'s
        stride."""
        super().__init__()
        self.projection_stages = tuple(projection_stages)
        self._dropout_enabled = True
        self.encoder = encoder
        self.decode_head = decode_head
        self.projection_head = ProjectionHead([encoder.out_channels[i] for i in self.projection_stages],
                                              proj_dim, proj_hidden)
        self.logits_stride = encoder.strides[logits_stage]
        self.embedding_stride = encoder.strides[self.projection_stages[0]]

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encode(x)
        return self.decode(features), self.project(features)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits only (evaluation, pseudo labels), without the projection head's cost."""
        return self.decode(self.encode(x))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's stage features of images [B, in_chans, H, W]."""
        return self.encoder(self._check_input(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits from the encoder's stage features."""
        return self._decode(features)

    def project(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Unit-norm embeddings from the encoder's stage features."""
        return self.projection_head([features[i] for i in self.projection_stages])

    def _decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        in_chans = self.encoder.in_chans
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != in_chans:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected images of shape [B, {in_chans}, H, W], got {shape}")
        return x

    # ------------------------------------------------------------------ parameters

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def parameter_groups(self, lr: float, weight_decay: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Optimiser groups as mmcv's ``DefaultOptimizerConstructor`` builds them for the published
        ``paramwise_cfg.custom_keys`` (``head``: lr x 10; ``pos_block`` and ``norm``: no weight
        decay): a parameter takes the first key its name contains, longest key first (ties in
        alphabetical order), and that key only. So the LayerNorms of MiT (``norm1``, ``attn.norm``,
        ``patch_embed*.norm``, ``norm1..4``) do not decay, every head parameter decays at 10x lr
        (``head`` wins over ``norm``), and BatchNorms named ``bn`` decay like the convolutions.
        Groups: ``encoder``, then ``norm`` / ``pos_block`` / ``head`` where they have parameters."""
        rules = {"head": (head_lr_mult, 1.0), "norm": (1.0, 0.0), "pos_block": (1.0, 0.0)}
        order = sorted(sorted(rules), key=len, reverse=True)
        groups: dict[str, dict] = {}
        for name, param in self.named_parameters():
            key = next((k for k in order if k in name), None)
            lr_mult, decay_mult = rules.get(key, (1.0, 1.0))
            group = groups.setdefault(key or "encoder", {"name": key or "encoder", "params": [],
                                                         "lr": lr * lr_mult,
                                                         "weight_decay": weight_decay * decay_mult})
            group["params"].append(param)
        return sorted(groups.values(), key=lambda g: ["encoder", "norm", "pos_block", "head"].index(g["name"]))

    # ------------------------------------------------------------------ modes

    @property
    def activation_checkpointing(self) -> bool:
        return self.encoder.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        self.encoder.activation_checkpointing = bool(enabled)

    def set_dropout(self, enabled: bool) -> "Segmentor":
        """Switch dropout and drop-path on or off, independently of train / eval mode."""
        self._dropout_enabled = bool(enabled)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Segmentor":
        super().train(mode)
        if not self._dropout_enabled:
            for m in self.modules():
                if isinstance(m, STOCHASTIC_MODULES):
                    m.training = False
        return self


class DAFormer(Segmentor):
    """MiT encoder + DAFormer separable-ASPP fusion head + projection head on all four stages.

    Published SePiCo setting: ``encoder="mit_b5"``, ``embed_dim = channels = 256``, dilations
    (1, 6, 12, 18), dropout 0.1, drop-path 0.1, projection 1024 -> 256 -> 512 (``proj_dim=512``).
    """

    def __init__(self, num_classes: int = 19, encoder: str = "mit_b5", *, proj_dim: int = 256,
                 proj_hidden: int | None = None, projection_stages: Sequence[int] = (0, 1, 2, 3),
                 embed_dim: int = 256, channels: int = 256,
                 dilations: Sequence[int] = (1, 6, 12, 18), dropout: float = 0.1,
                 drop_path_rate: float = 0.1, activation_checkpointing: bool = False):
        _check_positive(num_classes=num_classes, proj_dim=proj_dim)
        _check_stages(projection_stages)
        backbone = mit(encoder, drop_path_rate=drop_path_rate,
                       activation_checkpointing=activation_checkpointing)
        head = DAFormerHead(backbone.out_channels, num_classes, embed_dim=embed_dim,
                            channels=channels, dilations=dilations, dropout=dropout)
        super().__init__(backbone, head, projection_stages=projection_stages, proj_dim=proj_dim,
                         proj_hidden=proj_hidden, logits_stage=0)

    def _decode(self, features):
        return self.decode_head(features)


class DeepLabV2(Segmentor):
    """Dilated ResNet (output stride 8) + DeepLab-V2 ASPP classifier + projection head on the last
    stage. Published SePiCo setting: ResNet-101, dilations (6, 12, 18, 24), projection
    2048 -> 2048 -> 512 (``proj_dim=512``)."""

    def __init__(self, num_classes: int = 19, depth: int = 101, *, proj_dim: int = 256,
                 proj_hidden: int | None = None, projection_stages: Sequence[int] = (3,),
                 dilations: Sequence[int] = (6, 12, 18, 24),
                 activation_checkpointing: bool = False):
        _check_positive(num_classes=num_classes, proj_dim=proj_dim)
        _check_stages(projection_stages)
        backbone = ResNet(depth, output_stride=8, activation_checkpointing=activation_checkpointing)
        head = ASPPClassifier(backbone.out_channels[-1], num_classes, dilations)
        super().__init__(backbone, head, projection_stages=projection_stages, proj_dim=proj_dim,
                         proj_hidden=proj_hidden, logits_stage=-1)

    def _decode(self, features):
        return self.decode_head(features[-1])


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_stages(stages: Sequence[int]) -> None:
    stages = tuple(stages)
    if not stages or len(set(stages)) != len(stages) or any(s not in (0, 1, 2, 3) for s in stages):
        raise ValueError(f"projection_stages must be distinct stage indices in 0..3, got {stages}")

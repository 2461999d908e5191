"""Segmentation models for SePiCo in plain PyTorch: DAFormer (MiT-B0..B5) and DeepLab-V2
(dilated ResNet-V1c 18/50/101, mmseg's), each with the SePiCo projection head, under the official
parameter names."""
from .mit import MIT_CONFIGS, MixVisionTransformer, mit
from .pretrained import (LoadedCheckpoint, format_provenance, inspect_weights, load_pretrained_encoder,
                         weight_problems)
from .resnet import RESNET_DEPTHS, ResNet
from .registry import MODEL_NAMES, build_model, build_run_model
from .segmentors import DAFormer, DeepLabV2, Segmentor

__all__ = [
    "DAFormer", "DeepLabV2", "Segmentor", "build_model", "build_run_model", "MODEL_NAMES",
    "MixVisionTransformer", "mit", "MIT_CONFIGS", "ResNet", "RESNET_DEPTHS",
    "load_pretrained_encoder", "LoadedCheckpoint", "inspect_weights", "format_provenance", "weight_problems",
]

"""Segmentation models for SePiCo in plain PyTorch: DAFormer (MiT-B0..B5) and DeepLab-V2
(dilated ResNet-18/50/101), each with the SePiCo projection head."""
from .mit import MIT_CONFIGS, MixVisionTransformer, mit
from .pretrained import LoadedCheckpoint, load_pretrained_encoder
from .resnet import RESNET_DEPTHS, ResNet
from .segmentors import MODEL_NAMES, DAFormer, DeepLabV2, Segmentor, build_model

__all__ = [
    "DAFormer", "DeepLabV2", "Segmentor", "build_model", "MODEL_NAMES",
    "MixVisionTransformer", "mit", "MIT_CONFIGS", "ResNet", "RESNET_DEPTHS",
    "load_pretrained_encoder", "LoadedCheckpoint",
]

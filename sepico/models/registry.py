"""The model registry: every buildable model by name (``MODEL_NAMES``), ``build_model`` and
``build_run_model`` (the model of a run's ``ModelConfig``).

It sits above the model files (the base class, the two published families and the CPU demo's
small network), so that none of them imports another through it.
"""
from __future__ import annotations

from .mit import MIT_CONFIGS
from .resnet import RESNET_DEPTHS
from .segmentors import DAFormer, DeepLabV2, Segmentor
from .small import SmallConvNet

MODEL_NAMES = tuple([f"daformer_{v}" for v in MIT_CONFIGS]
                    + [f"deeplabv2_r{d}" for d in RESNET_DEPTHS]
                    + ["convnet_small"])  # sepico.models.small: the CPU demo's model


def build_run_model(model_cfg) -> Segmentor:
    """The segmentor a run's ``ModelConfig`` describes (random weights)."""
    name = model_cfg.name
    extra = ({"embed_dim": model_cfg.head_channels, "channels": model_cfg.head_channels} if name.startswith("daformer")
             else {"encoder_norm": model_cfg.encoder_norm} if name == "convnet_small" else {})
    return build_model(name, num_classes=model_cfg.num_classes, proj_dim=model_cfg.proj_dim, **extra)


def build_model(name: str, **kwargs) -> Segmentor:
    """``build_model("daformer_mit_b5", num_classes=19, proj_dim=256)``; names in
    ``MODEL_NAMES``, keyword arguments as in ``DAFormer`` / ``DeepLabV2`` / ``SmallConvNet``."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if name == "convnet_small":
        return SmallConvNet(**kwargs)
    family, variant = name.split("_", 1)
    if family == "daformer":
        return DAFormer(encoder=variant, **kwargs)
    return DeepLabV2(depth=int(variant[1:]), **kwargs)

"""The SePiCo self-training loop: configuration, data streams, augmentation, checkpoints."""
from sepico.train.config import Config, apply_overrides, load_config
from sepico.errors import ConfigError
from sepico.train.trainer import Trainer

__all__ = ["Config", "ConfigError", "Trainer", "apply_overrides", "load_config"]

"""The SePiCo self-training loop: configuration, data streams, augmentation, checkpoints."""
from sepico.train.config import Config, ConfigError, apply_overrides, load_config
from sepico.train.trainer import Trainer

__all__ = ["Config", "ConfigError", "Trainer", "apply_overrides", "load_config"]

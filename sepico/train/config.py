"""Training configuration: plain dataclasses, loaded from a TOML file and overridden with
``--set section.field=value``. Every error names the field it is about (`ConfigError`)."""
from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from kernels import Covariance
from sepico.data.names import DAY_NIGHT_TARGETS, SOURCES, TARGETS
from sepico.data.real import ACDC_CONDITIONS
from sepico.errors import ConfigError
from sepico.method import CONTRASTIVE_VARIANTS, RATIO_SCHEDULES

VARIANTS = CONTRASTIVE_VARIANTS + ("self_training", "source_only")
COVARIANCES = (Covariance.DIAG.value, Covariance.FULL.value)  # the kinds an estimator keeps
PSEUDO_WEIGHTS = ("dacs", "pixel")
TEACHER_STATISTICS = ("batch", "running")
TARGET_PASSES = ("projection", "full")
MIX_CLASSES = ("batch", "image")
CE_REDUCTIONS = ("all", "valid")
ENCODER_NORMS = ("batch", "group")
ON_NONFINITE = ("stop", "skip")
MAX_SCENES = 10_000_000  # synthetic scenes per split


@dataclass
class DataConfig:
    source: str = "synthetic"        # dataset of labelled source images
    target: str = "synthetic"        # dataset of unlabelled target images (labelled test split)
    source_root: str = ""            # folder of a real source dataset
    target_root: str = ""            # folder of a real target dataset
    size: tuple = (128, 256)         # (H, W) of the synthetic scenes
    train_length: int = 2000         # synthetic scenes per domain in the train split
    test_length: int = 100           # synthetic target scenes to evaluate on
    seed: int = 0                    # synthetic scene seed
    num_workers: int = 0             # DataLoader workers
    # Real datasets (gta5, synthia, cityscapes, dark_zurich, acdc). Sizes are (H, W); (0, 0) = as stored.
    source_size: tuple = (0, 0)      # source images resized to this before cropping (GTA5: 720, 1280)
    target_size: tuple = (0, 0)      # target training images resized (Cityscapes: 640, 1280)
    test_size: tuple = (0, 0)        # evaluation images resized; logits go back to the label size
    keep_ratio: bool = False         # the three sizes are mmseg keep-ratio scales (published: true)
    crop_size: tuple = (0, 0)        # random training crop of both streams (published: 640, 640)
    flip: bool = True                # random horizontal flip of training crops
    cat_max_ratio: float = 0.75      # source crop retried (10x) while one class covers more than this
    rcs_temperature: float = 0.0     # rare-class sampling of source images; 0 = off (published: 0.01)
    rcs_min_pixels: int = 3000       # an image counts as holding a class from this many pixels on
    rcs_min_crop_ratio: float = 0.5  # crop retried until it holds min_pixels x this of the drawn class
    class_stats: str = ""            # JSON cache of per-image class counts ("" = beside the run)
    strict_labels: bool = True       # unknown label id: error (false: ignore it)
    eval_protocol: int = 0           # classes the mIoU averages: 19 | 16 | 13; 0 = 16 for SYNTHIA, else 19
    eval_mode: str = "whole"         # whole | slide
    dark_zurich_test_prior: float = 0.16  # class-prior scale s on Dark Zurich test images (official); 0 = off
    acdc_conditions: tuple[str, ...] = ACDC_CONDITIONS  # ACDC: the conditions read (any of fog, night, rain, snow)
    eval_window: tuple = (1024, 1024)  # sliding-window size (H, W)
    eval_stride: tuple = (768, 768)    # sliding-window stride (H, W)


@dataclass
class ModelConfig:
    name: str = "daformer_mit_b5"    # see sepico.models.MODEL_NAMES
    num_classes: int = 19
    proj_dim: int = 256              # projection head output (published runs: 512)
    head_channels: int = 256         # DAFormer decode-head width (smaller for quick runs)
    pretrained: str = ""             # ImageNet encoder weights: a file, a hub folder or "hf:nvidia/mit-b5" ("" = random init)
    init_checkpoint: str = ""        # sepico weight file (converted or trained) the whole model starts from
    activation_checkpointing: bool = False
    encoder_norm: str = "batch"      # convnet_small only: batch | group (GroupNorm, 8 groups)


@dataclass
class OptimConfig:
    lr: float = 6e-5                 # AdamW, encoder
    head_lr_mult: float = 10.0       # decode and projection heads at lr x this
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_iters: int = 1500         # linear warm-up, then polynomial decay
    warmup_ratio: float = 1e-6
    power: float = 1.0


@dataclass
class MethodConfig:
    variant: str = "dist"            # dist | proto | bank | self_training | source_only
    covariance: str = "diag"         # dist: diag | full
    temperature: float = 100.0
    ratio: float = 1.0               # covariance ratio r (final value of the schedule)
    ratio_schedule: str = "constant"  # constant | linear (0 -> ratio over the run)
    reg_weight: float = 1.0          # regulariser, added to each contrastive call
    contrast_weight: float = 1.0     # weight of the source and target contrastive losses
    start_distribution_iter: int = 3000  # contrastive losses from this iteration on
    memory_length: int = 200         # bank variant: queue length per class
    momentum: typing.Optional[float] = None  # None: count-weighted merge; (0, 1): forgetting
    use_avg_pool: bool = True        # labels to feature resolution by majority vote
    scale_min_ratio: float = 0.75
    ema_alpha: float = 0.999
    # The official iteration (mmseg/models/uda/sepico.py); the alternatives reproduce this
    # project's earlier loop, for comparison (docs/ablation.md).
    teacher_statistics: str = "batch"  # batch: teacher BatchNorm on its batch, EMA of parameters only;
    #                                    running: eval-mode teacher, EMA of buffers too
    target_pass: str = "projection"  # target contrastive pass: encoder + projection head | full (+ decode head)
    pseudo_crop: bool = False        # class-balanced crop (data.crop_size) of whole target images with
    #                                  pseudo labels regenerated on the crop (published: true)
    mix_classes: str = "batch"       # ClassMix: half the classes of the batch's labels (DACS) | of each image
    ce_reduction: str = "all"        # source CE mean over all pixels, ignored counting 0 (mmseg) | valid
    day_night: bool = False          # Dark Zurich, ACDC: pseudo labels fused from each image and its daytime image
    day_ratio: float = 0.8           # weight of the day probability (shift-insensitive classes, day > 0.4)
    class_prior: float = 0.0         # class-prior scale s for the fused pseudo labels and the decode-head
    #                                  cross-entropy (Dark Zurich published: 0.05); 0 = no class weights
    start_self_training_iter: int = 0  # source-only warm-up before pseudo labels are used
    pseudo_threshold: float = 0.968
    pseudo_weight: str = "dacs"      # dacs: one share-of-confident-pixels weight per batch; pixel: mask
    ignore_top: int = 0              # target rows without pseudo-label weight (GTA5: 15)
    ignore_bottom: int = 0           # (GTA5: 120)
    mix: bool = True                 # ClassMix (DACS) cross-entropy on mixed images
    color_jitter_strength: float = 0.2
    color_jitter_p: float = 0.8
    blur_p: float = 0.5


@dataclass
class TrainConfig:
    max_iters: int = 40000
    batch_size: int = 2              # source images per step (and as many target images)
    global_batch_size: int = 0       # under torchrun: source images per step over all N processes (each
    #                                  takes global_batch_size / N); 0 = each takes batch_size (N x it in all)
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    amp: bool = False                # bfloat16 autocast on GPU (ignored on CPU); official runs: float32
    deterministic: bool = False      # deterministic cuDNN / PyTorch algorithms (bitwise-repeatable GPU runs)
    on_nonfinite: str = "stop"       # a NaN / inf loss: stop (checkpoint of the last finite state) | skip the step
    log_interval: int = 50
    checkpoint_interval: int = 2000
    keep_checkpoints: int = 3
    eval_interval: int = 0           # 0: evaluate at the end only
    run_dir: str = ""                # default: runs/<name>


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(path: str, hint, value):
    """Convert a TOML value or a --set string to the field's type, or raise naming the field."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[float]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return _coerce(path, inner, value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            try:
                return tuple(float(v) if "." in str(v) or "e" in str(v).lower() else int(v) for v in items)
            except ValueError:
                pass
    elif hint == tuple[str, ...]:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return tuple(items)
        hint = "a list of names"
    kind = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config field '{path}' must be {kind}, got {value!r}")


def _set(cfg: Config, key: str, value) -> None:
    parts = key.split(".")
    if parts == ["name"]:
        cfg.name = _coerce("name", str, value)
        return
    sections = {f.name for f in dataclasses.fields(Config) if f.name != "name"}
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(f"unknown config key '{key}' (sections: name, {', '.join(sorted(sections))})")
    section = getattr(cfg, parts[0])
    hints = typing.get_type_hints(type(section))
    if parts[1] not in hints:
        raise ConfigError(f"unknown config key '{key}' ({parts[0]} has: {', '.join(hints)})")
    setattr(section, parts[1], _coerce(key, hints[parts[1]], value))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (the CLI's --set). A value is a TOML value
    (``[32, 64]``, ``"text"``, ``true``, ``1e-4``) or the plain form (``32,64``, ``text``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set takes section.field=value, got {item!r}")
        key, value = item.split("=", 1)
        _set(cfg, key.strip(), _toml_value(value.strip()))
    return cfg


def _toml_value(text: str):
    """The TOML value ``text`` spells, for the forms plain text cannot mean: arrays, quoted
    strings, booleans; anything else stays text for the field's own conversion."""
    if not text or text[0] not in "[\"'" and text not in ("true", "false"):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--set value {text!r} is not a TOML value ({err})") from None


def from_dict(data: dict) -> Config:
    cfg = Config()
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                _set(cfg, f"{key}.{sub}", v)
        else:
            _set(cfg, key, value)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a TOML config file (sections data, model, optim, method, train), then overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason}); TOML files "
                          "are UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    cfg = from_dict(data)
    if "name" not in data:
        cfg.name = path.stem
    apply_overrides(cfg, list(overrides))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Values that parse but make no sense, named by field."""
    def choice(key, value, options):
        if value not in options:
            raise ConfigError(f"config field '{key}' must be one of {', '.join(options)}, got {value!r}")

    def positive(key, value, zero_ok=False):
        if value < 0 or (value == 0 and not zero_ok):
            raise ConfigError(f"config field '{key}' must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")

    def within(key, value, low, high, *, low_open=False, high_open=False):
        if (value < low or value > high or (low_open and value == low) or (high_open and value == high)):
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            raise ConfigError(f"config field '{key}' must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")

    _check_finite(cfg)
    method_cfg, train_cfg, optim_cfg = cfg.method, cfg.train, cfg.optim
    choice("method.variant", method_cfg.variant, VARIANTS)
    choice("method.covariance", method_cfg.covariance, COVARIANCES)
    choice("method.pseudo_weight", method_cfg.pseudo_weight, PSEUDO_WEIGHTS)
    choice("method.ratio_schedule", method_cfg.ratio_schedule, RATIO_SCHEDULES)
    choice("method.teacher_statistics", method_cfg.teacher_statistics, TEACHER_STATISTICS)
    choice("method.target_pass", method_cfg.target_pass, TARGET_PASSES)
    choice("method.mix_classes", method_cfg.mix_classes, MIX_CLASSES)
    choice("method.ce_reduction", method_cfg.ce_reduction, CE_REDUCTIONS)
    choice("train.on_nonfinite", train_cfg.on_nonfinite, ON_NONFINITE)
    if method_cfg.pseudo_crop and (cfg.data.target == "synthetic" or 0 in tuple(cfg.data.crop_size)):
        raise ConfigError("config field 'method.pseudo_crop' needs a real target dataset and "
                          "data.crop_size (the crop cut from each whole target image)")
    if method_cfg.day_night and cfg.data.target not in DAY_NIGHT_TARGETS:
        raise ConfigError(f"config field 'method.day_night' needs a target whose images have daytime "
                          f"counterparts ({', '.join(DAY_NIGHT_TARGETS)}), got data.target = {cfg.data.target!r}")
    if not 0.0 <= method_cfg.day_ratio <= 1.0:
        raise ConfigError(f"config field 'method.day_ratio' must be in [0, 1], got {method_cfg.day_ratio!r}")
    positive("method.class_prior", method_cfg.class_prior, zero_ok=True)
    positive("data.dark_zurich_test_prior", cfg.data.dark_zurich_test_prior, zero_ok=True)
    if method_cfg.class_prior and cfg.model.num_classes != 19:
        raise ConfigError("config field 'method.class_prior' weighs the 19 Cityscapes classes (Dark Zurich "
                          f"frequencies); model.num_classes is {cfg.model.num_classes}")
    positive("method.temperature", method_cfg.temperature)
    positive("method.memory_length", method_cfg.memory_length, zero_ok=method_cfg.variant != "bank")
    if method_cfg.momentum is not None and not 0.0 < method_cfg.momentum < 1.0:
        raise ConfigError(f"config field 'method.momentum' must be none or in (0, 1), got {method_cfg.momentum!r}")
    if not 0.0 <= method_cfg.ema_alpha < 1.0:
        raise ConfigError(f"config field 'method.ema_alpha' must be in [0, 1), got {method_cfg.ema_alpha!r}")
    positive("train.max_iters", train_cfg.max_iters)
    positive("train.batch_size", train_cfg.batch_size)
    positive("train.global_batch_size", train_cfg.global_batch_size, zero_ok=True)
    positive("train.log_interval", train_cfg.log_interval)
    positive("train.checkpoint_interval", train_cfg.checkpoint_interval)
    positive("train.keep_checkpoints", train_cfg.keep_checkpoints)
    positive("train.eval_interval", train_cfg.eval_interval, zero_ok=True)
    positive("optim.lr", optim_cfg.lr)
    positive("optim.head_lr_mult", optim_cfg.head_lr_mult)
    positive("optim.weight_decay", optim_cfg.weight_decay, zero_ok=True)
    positive("optim.warmup_iters", optim_cfg.warmup_iters, zero_ok=True)
    within("optim.warmup_ratio", optim_cfg.warmup_ratio, 0.0, 1.0)
    positive("optim.power", optim_cfg.power, zero_ok=True)
    if len(optim_cfg.betas) != 2:
        raise ConfigError(f"config field 'optim.betas' must have two values, got {optim_cfg.betas!r}")
    for beta in optim_cfg.betas:
        within("optim.betas", beta, 0.0, 1.0, high_open=True)
    positive("method.ratio", method_cfg.ratio, zero_ok=True)
    positive("method.reg_weight", method_cfg.reg_weight, zero_ok=True)
    positive("method.contrast_weight", method_cfg.contrast_weight, zero_ok=True)
    positive("method.start_distribution_iter", method_cfg.start_distribution_iter, zero_ok=True)
    positive("method.start_self_training_iter", method_cfg.start_self_training_iter, zero_ok=True)
    positive("method.ignore_top", method_cfg.ignore_top, zero_ok=True)
    positive("method.ignore_bottom", method_cfg.ignore_bottom, zero_ok=True)
    for key in ("pseudo_threshold", "scale_min_ratio", "color_jitter_strength", "color_jitter_p", "blur_p"):
        within(f"method.{key}", getattr(method_cfg, key), 0.0, 1.0)
    if len(cfg.data.size) != 2 or any(not isinstance(v, int) or v < 1 for v in cfg.data.size):
        raise ConfigError(f"config field 'data.size' must be (H, W) of integers > 0, got {cfg.data.size!r}")
    _check_name(cfg.name)
    for key in ("train_length", "test_length"):
        value = getattr(cfg.data, key)
        positive(f"data.{key}", value)
        if value > MAX_SCENES:  # each epoch draws a permutation of the scenes: 8 bytes a scene
            raise ConfigError(f"config field 'data.{key}' must be at most {MAX_SCENES:,} scenes, got {value:,}")
    _validate_data(cfg.data, choice, positive)
    validate_model(cfg.model)
    if "synthetic" in (cfg.data.source, cfg.data.target):
        from sepico.data.synthetic import SYNTHETIC_CLASSES

        if cfg.model.num_classes <= max(SYNTHETIC_CLASSES):
            raise ConfigError(f"config field 'model.num_classes' must be > {max(SYNTHETIC_CLASSES)} for the "
                              f"synthetic scenes (their labels are Cityscapes train ids), got {cfg.model.num_classes}")
    if cfg.model.pretrained:
        from sepico.models.pretrained import check_source

        if cfg.model.name == "convnet_small":
            raise ConfigError("config field 'model.pretrained': convnet_small has no ImageNet weights to start from")
        try:
            check_source(cfg.model.pretrained)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"config field 'model.pretrained': {err}") from None
    if cfg.model.init_checkpoint and not Path(cfg.model.init_checkpoint).is_file():
        raise ConfigError(f"config field 'model.init_checkpoint': no file at {cfg.model.init_checkpoint}")
    if cfg.model.pretrained and cfg.model.init_checkpoint:
        raise ConfigError("config fields 'model.pretrained' and 'model.init_checkpoint' exclude each other (the "
                          "init checkpoint holds the whole model, encoder included)")


def validate_model(m: ModelConfig) -> None:
    """The fields that build the network: a known model with positive widths."""
    from sepico.models import MODEL_NAMES

    for key in ("num_classes", "proj_dim", "head_channels"):
        if getattr(m, key) < 1:
            raise ConfigError(f"config field 'model.{key}' must be > 0, got {getattr(m, key)!r}")
    if m.name not in MODEL_NAMES:
        raise ConfigError(f"config field 'model.name' must be one of {', '.join(MODEL_NAMES)}, got {m.name!r}")
    if m.encoder_norm not in ENCODER_NORMS:
        raise ConfigError(f"config field 'model.encoder_norm' must be one of {', '.join(ENCODER_NORMS)}, "
                          f"got {m.encoder_norm!r}")
    if m.encoder_norm != "batch" and m.name != "convnet_small":
        raise ConfigError(f"config field 'model.encoder_norm' applies to convnet_small only (model.name is {m.name!r})")


def _check_name(name: str) -> None:
    """``name`` names the run (its folder is runs/<name>): a name, not a path."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.strip() != name:
        raise ConfigError(f"config field 'name' must be a plain name (no '/', '\\', '..', no leading or "
                          f"trailing spaces, not empty), got {name!r}; train.run_dir chooses the folder")


def _check_finite(cfg: Config) -> None:
    """No NaN or infinity in any number of the configuration."""
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            for item in (v if isinstance(v, tuple) else (v,)):
                if isinstance(item, float) and not math.isfinite(item):
                    raise ConfigError(f"config field '{section.name}.{f.name}' must be a finite number, got {v!r}")


def _validate_data(d: DataConfig, choice, positive) -> None:
    """The real-dataset fields of `DataConfig`."""
    choice("data.source", d.source, SOURCES)
    choice("data.target", d.target, TARGETS)
    for key in ("source_size", "target_size", "test_size", "crop_size", "eval_window", "eval_stride"):
        value = getattr(d, key)
        if len(value) != 2 or any(not isinstance(v, int) or v < 0 for v in value):
            raise ConfigError(f"config field 'data.{key}' must be (H, W) of integers >= 0, got {value!r}")
        if key in ("eval_window", "eval_stride") and 0 in value:
            raise ConfigError(f"config field 'data.{key}' must be > 0, got {value!r}")
        if (value[0] == 0) != (value[1] == 0):
            raise ConfigError(f"config field 'data.{key}' must be (0, 0) or two sizes > 0, got {value!r}")
    conditions = tuple(d.acdc_conditions)
    if not conditions or len(set(conditions)) < len(conditions) or not set(conditions) <= set(ACDC_CONDITIONS):
        raise ConfigError(f"config field 'data.acdc_conditions' must name some of {', '.join(ACDC_CONDITIONS)}, "
                          f"each once, got {list(conditions)}")
    if not 0.0 < d.cat_max_ratio <= 1.0:
        raise ConfigError(f"config field 'data.cat_max_ratio' must be in (0, 1], got {d.cat_max_ratio!r}")
    positive("data.rcs_temperature", d.rcs_temperature, zero_ok=True)
    positive("data.rcs_min_pixels", d.rcs_min_pixels, zero_ok=True)
    positive("data.rcs_min_crop_ratio", d.rcs_min_crop_ratio, zero_ok=True)
    positive("data.num_workers", d.num_workers, zero_ok=True)
    if d.eval_protocol not in (0, 19, 16, 13):
        raise ConfigError(f"config field 'data.eval_protocol' must be 0 (auto), 19, 16 or 13, "
                          f"got {d.eval_protocol!r}")
    choice("data.eval_mode", d.eval_mode, ("whole", "slide"))
    if d.rcs_temperature > 0 and d.source == "synthetic":
        raise ConfigError("config field 'data.rcs_temperature': rare-class sampling needs a real "
                          "source dataset (gta5, synthia, cityscapes)")
    for key, name, root in (("data.source_root", d.source, d.source_root),
                            ("data.target_root", d.target, d.target_root)):
        if name != "synthetic" and not root:
            raise ConfigError(f"config field '{key}' must name the {name} folder")

"""Weight files: official SePiCo / DAFormer checkpoints converted (``sepico convert``), and any
sepico weight file loaded for inference (``sepico eval``, ``sepico predict``) or to start a run
(``model.init_checkpoint``).

An official checkpoint is what mmcv's runner saves, ``{"meta", "state_dict", "optimizer"}``, with
the student under ``model.`` and the EMA teacher under ``ema_model.``; a published file holds the
student alone (``tools/publish_model.py`` drops the optimizer, the meta data and the teacher), and
a state dict may also come with bare keys (``backbone.*``, as ``tools/test.py`` loads it after
removing ``model.``). Inside a model the parts are ``backbone.*``, ``decode_head.*`` and
``auxiliary_head.*`` (SePiCo's projection head); they become this project's ``encoder.*``,
``decode_head.*`` and ``projection_head.*``, whose inner names are the official ones.

A converted file is ``{"format", "config", "model", "weights", "source"}``: the configuration of a
run with the model's widths read off the tensor shapes (and, by default, the published Cityscapes
evaluation setting), and one set of weights. Class statistics are not in official checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import torch

from sepico.models import build_run_model, weight_problems
from sepico.models.pretrained import _first
from sepico.errors import ConfigError, OutputError
from sepico.files import same_file
from sepico.train.checkpoint import atomic_save, read_checkpoint
from sepico.train.config import Config, ModelConfig, load_config

FORMAT = "sepico-converted-1"
RENAMES = (("backbone.", "encoder."), ("decode_head.", "decode_head."), ("auxiliary_head.", "projection_head."))
STUDENT, TEACHER = "model.", "ema_model."
OTHER_MODELS = ("imnet_model.",)  # DAFormer's ImageNet feature-distance model: not converted


class ConversionError(ConfigError):
    """An official checkpoint that does not hold the model it is converted to."""


def official_weights(obj: dict, *, teacher: bool = False, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The student's (or with ``teacher`` the EMA teacher's) tensors of an official checkpoint,
    under this project's names (``encoder.*``, ``decode_head.*``, ``projection_head.*``)."""
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConversionError(f"{where}: no state dict of tensors (neither the file itself nor its 'state_dict')")
    teachers = {k[len(TEACHER):]: v for k, v in state.items() if k.startswith(TEACHER)}
    students = {k[len(STUDENT):]: v for k, v in state.items() if k.startswith(STUDENT)}
    bare = {k: v for k, v in state.items()
            if not k.startswith((TEACHER, STUDENT) + OTHER_MODELS)}
    if teacher:
        if not teachers:
            raise ConversionError(f"{where}: no EMA teacher (no ema_model.* keys; a released file keeps the "
                                  "student alone): convert without --teacher")
        chosen = teachers
    elif students and bare:
        raise ConversionError(f"{where}: holds model.* keys and keys without a model prefix "
                              f"({_first(sorted(bare))}): not one model")
    else:
        chosen = students or bare
        if not chosen:
            raise ConversionError(f"{where}: no student weights (no model.* keys, no backbone.* keys)")
    renamed, unknown = {}, []
    for key, value in chosen.items():
        for old, new in RENAMES:
            if key.startswith(old):
                renamed[new + key[len(old):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{where}: {len(unknown)} key(s) outside backbone / decode_head / auxiliary_head: "
                              f"{_first(sorted(unknown))}")
    return renamed


def model_widths(weights: dict[str, torch.Tensor], name: str, where: str = "checkpoint") -> dict:
    """num_classes, proj_dim and head_channels of model ``name`` read off the tensor shapes."""
    if name.startswith("daformer"):
        classifier, channels = "decode_head.conv_seg.weight", "decode_head.fuse_layer.bottleneck.conv.weight"
    elif name.startswith("deeplabv2"):
        classifier, channels = "decode_head.aspp_modules.0.conv.weight", None
    else:
        raise ConversionError(f"--model {name}: official checkpoints hold DAFormer (daformer_mit_b*) or "
                              "DeepLab-V2 (deeplabv2_r*) models")
    if classifier not in weights:
        other = ("DeepLab-V2 (--model deeplabv2_r101)" if "decode_head.aspp_modules.0.conv.weight" in weights
                 else "DAFormer (--model daformer_mit_b5)" if "decode_head.conv_seg.weight" in weights else None)
        hint = f"; it looks like a {other} checkpoint" if other else ""
        raise ConversionError(f"{where}: no {_official(classifier)}: not a {name} checkpoint{hint}")
    widths = {"num_classes": int(weights[classifier].shape[0])}
    if channels is not None:
        widths["head_channels"] = int(weights[channels].shape[0]) if channels in weights else ModelConfig.head_channels
    projection = "projection_head.convs.1.conv.weight"
    if projection in weights:
        widths["proj_dim"] = int(weights[projection].shape[0])
    return widths


def convert(src, dst, *, model: str | None = None, teacher: bool = False, config=None, force: bool = False) -> dict:
    """Convert the official checkpoint ``src`` into the sepico weight file ``dst`` (written
    atomically, only once everything matched). ``config``: a TOML run configuration whose data
    and evaluation settings the file keeps (default: the published Cityscapes evaluation). An
    existing ``dst`` is replaced only with ``force``, and never when it is ``src`` itself (also
    through a link). Returns a summary (model, widths, weights, notes)."""
    src, dst = Path(src), Path(dst)
    _check_destination(src, dst, force)
    cfg = load_config(config, []) if config else _cityscapes_evaluation()
    name = model or (cfg.model.name if config else "daformer_mit_b5")
    weights = official_weights(read_checkpoint(src), teacher=teacher, where=str(src))
    widths = model_widths(weights, name, str(src))
    cfg.model = dataclasses.replace(cfg.model, name=name, pretrained="", init_checkpoint="", **widths)
    cfg.name = f"converted_{src.stem}"
    net = build_run_model(cfg.model)
    expected = net.state_dict()
    notes = []
    if not any(k.startswith("projection_head.") for k in weights):
        weights |= {k: v for k, v in expected.items() if k.startswith("projection_head.")}
        notes.append("no auxiliary_head (projection head) in the file: a DAFormer checkpoint; the projection "
                     "head is freshly initialised (evaluation and prediction do not use it)")
    problems = weight_problems(expected, weights, name=_official)
    if problems:
        raise ConversionError(f"{src} does not hold a {name} model: {problems}")
    net.load_state_dict(weights)
    label = "teacher" if teacher else "student"
    atomic_save({"format": FORMAT, "config": cfg.to_dict(), "model": net.state_dict(), "weights": label,
                 "source": str(src)}, dst)
    notes.append("official checkpoints hold no class statistics (feature means / covariances): a run "
                 "started from this file (model.init_checkpoint) estimates them afresh")
    return {"model": name, **widths, "weights": label, "tensors": len(expected), "out": str(dst), "notes": notes}


class LoadedModel(NamedTuple):
    model: torch.nn.Module   # with the file's weights, on the CPU
    config: Config           # the file's run configuration (pretrained / init_checkpoint cleared)
    weights: str             # "student" | "teacher"
    iteration: int | None    # training iteration of a training checkpoint (None: converted file)


def load_model(path, *, teacher: bool = False) -> LoadedModel:
    """The model of a sepico weight file: a training checkpoint (its student, or with ``teacher``
    its EMA teacher) or a converted file."""
    from sepico.train.config import from_dict, validate_model
    state = read_checkpoint(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise ConfigError(f"{path} is neither a sepico training checkpoint nor a converted file (no config / "
                          "model); convert an official checkpoint with `sepico convert`")
    if teacher and "teacher" not in state:
        raise ConfigError(f"{path} holds one set of weights (the {state.get('weights', 'student')} of "
                          f"{state.get('source', 'its source')}); --teacher does not apply")
    try:
        cfg = from_dict(state["config"])
        validate_model(cfg.model)
    except ConfigError as err:
        raise ConfigError(f"{path}: its configuration is not valid ({err})") from None
    cfg.model.pretrained = cfg.model.init_checkpoint = ""  # the weights come from the file
    net = build_run_model(cfg.model)
    weights = state["teacher" if teacher else "model"]
    problems = weight_problems(net.state_dict(), weights) if isinstance(weights, dict) else "not a state dict"
    if problems:
        raise ConfigError(f"{path} does not match its own configuration: {problems}")
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ConfigError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values ({_first(bad)}); "
                          "the model would predict garbage")
    net.load_state_dict(weights)
    return LoadedModel(net, cfg, "teacher" if teacher else state.get("weights", "student"), state.get("iteration"))


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    if os.path.lexists(dst) and not dst.is_dir():
        if same_file(src, dst):
            raise OutputError(f"{dst} is the file being converted; it is never replaced (give another name)")
        if not force:
            raise OutputError(f"{dst} exists; choose another name, or --force to replace it")
    elif dst.is_dir():
        raise OutputError(f"{dst} is a folder; give the name of the file to write")
    elif not dst.parent.is_dir():
        raise OutputError(f"no folder {dst.parent} to write {dst.name} into")


def _cityscapes_evaluation() -> Config:
    """Defaults, with the published evaluation: Cityscapes val, whole images in a keep-ratio
    1280 x 640 scale (the official test pipeline's ``img_scale=(1280, 640)``, ``keep_ratio=True``)."""
    cfg = Config()
    cfg.data.target, cfg.data.test_size, cfg.data.keep_ratio, cfg.data.eval_mode = "cityscapes", (640, 1280), True, "whole"
    return cfg


def _official(key: str) -> str:
    for old, new in RENAMES:
        if key.startswith(new):
            return old + key[len(new):]
    return key


__all__ = ["FORMAT", "ConversionError", "LoadedModel", "convert", "load_model", "model_widths",
           "official_weights"]

"""Load ImageNet weights into an encoder, in whichever published layout they come.

A source (``model.pretrained``, ``sepico info --weights``) is

- a file: a torch file (``.pth`` / ``.pt`` / ``.bin``: zip or legacy pickle, read with
  ``weights_only=True``, so a pickled class or function is refused, never run) or a safetensors
  file, told apart by their content, never by their suffix;
- a folder as ``hf download REPO --local-dir DIR`` (huggingface_hub's CLI) leaves it: ``model.safetensors``
  (else ``pytorch_model.bin``) beside ``config.json``, whose architecture fields (transformers'
  ``SegformerConfig``) must describe the model asked for;
- ``hf:owner/name`` or ``hf:owner/name@revision``: the same two files through huggingface_hub
  (``pip install 'sepico[hub]'``), downloaded once into its cache and read from there afterwards
  (with ``HF_HUB_OFFLINE=1`` from the cache only).

The layout is recognised from the tensor names (``LAYOUTS``): the SegFormer release
(``mit_b*.pth``, also segmentation_models_pytorch's ``smp-hub/mit_b*.imagenet``: the same names),
transformers' SegFormer (``nvidia/mit-b*``), mmcv's ResNet-V1c, and torchvision-style ResNets,
which are refused (a 7x7 stem is not V1c's deep stem). The file's ImageNet classifier is dropped;
every other tensor must then match the encoder exactly, in name and shape, before anything is
copied. The one tolerated absence is BatchNorm's ``num_batches_tracked`` counter, which files saved
before PyTorch 0.4 lack. ``weight_problems`` is the strict check, shared with the conversion of
official checkpoints and ``model.init_checkpoint``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from .mit import MIT_CONFIGS, MixVisionTransformer
from .registry import MODEL_NAMES, build_model
from .resnet import ResNet

_SHOWN = 5  # how many offending keys an error names
_OPTIONAL_SUFFIX = ".num_batches_tracked"
HUB_PREFIX = "hf:"
# What a folder from the Hugging Face hub holds, in the order transformers prefers the weights.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_CONFIG_FILE = "config.json"
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(@[\w./-]+)?")
_HUB_MISSING = "reading weights from the Hugging Face hub needs huggingface_hub: pip install 'sepico[hub]'"
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit on its JSON header


@dataclass(frozen=True)
class Layout:
    """How one family of published files names an encoder's tensors."""

    name: str                   # recorded in a run's provenance, printed by ``sepico info --weights``
    title: str                  # in the publisher's terms, for messages
    encoder_type: type          # the encoder class its tensors belong to
    keys: re.Pattern            # the encoder tensor names it uses (full match)
    classifier: re.Pattern      # its ImageNet classifier, dropped
    examples: tuple[str, ...]   # a few of its names: shown in messages, and what "closest" compares
    refusal: str = ""           # why a file in this layout cannot load ("" when it can)


_P = r"\.(?:weight|bias)"
_BN = r"\.(?:weight|bias|running_mean|running_var|num_batches_tracked)"
_RESNET_BLOCKS = rf"layer[1-4]\.\d+\.(?:conv[1-3]\.weight|bn[1-3]{_BN}|downsample\.0\.weight|downsample\.1{_BN})"

SEGFORMER = Layout(
    "segformer", "the SegFormer release layout (mit_b*.pth; smp-hub/mit_b*.imagenet)", MixVisionTransformer,
    re.compile(r"(?:patch_embed[1-4]\.(?:proj|norm)|norm[1-4]|block[1-4]\.\d+\.(?:norm[12]|attn\.(?:q|kv|proj|sr|norm)"
               rf"|mlp\.(?:fc1|fc2|dwconv\.dwconv))){_P}"),
    re.compile(rf"head{_P}"),
    ("patch_embed1.proj.weight", "block1.0.attn.kv.weight", "block1.0.mlp.dwconv.dwconv.weight", "norm1.weight",
     "head.weight"))
TRANSFORMERS = Layout(
    "transformers", "transformers' SegFormer layout (nvidia/mit-b*)", MixVisionTransformer,
    re.compile(r"(?:segformer\.)?encoder\.(?:patch_embeddings\.[0-3]\.(?:proj|layer_norm)|layer_norm\.[0-3]"
               r"|block\.[0-3]\.\d+\.(?:layer_norm_[12]|attention\.self\.(?:query|key|value|sr|layer_norm)"
               rf"|attention\.output\.dense|mlp\.(?:dense1|dense2|dwconv\.dwconv))){_P}"),
    re.compile(rf"classifier{_P}"),
    ("segformer.encoder.patch_embeddings.0.proj.weight", "segformer.encoder.block.0.0.attention.self.query.weight",
     "segformer.encoder.block.0.0.mlp.dense1.weight", "segformer.encoder.layer_norm.0.weight", "classifier.weight"))
MMCV_RESNET = Layout(
    "mmcv_resnet", "mmcv's ResNet-V1c layout (resnet101_v1c-e67eebb6.pth)", ResNet,
    re.compile(rf"stem\.[036]\.weight|stem\.[147]{_BN}|{_RESNET_BLOCKS}"),
    re.compile(rf"fc{_P}"),
    ("stem.0.weight", "stem.1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
     "layer1.0.downsample.0.weight", "fc.weight"))
TORCHVISION_RESNET = Layout(
    "torchvision_resnet", "a torchvision-style ResNet (one 7x7 conv1 stem)", ResNet,
    re.compile(rf"conv1\.weight|bn1{_BN}|{_RESNET_BLOCKS}"),
    re.compile(rf"fc{_P}"),
    ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn1.weight", "fc.weight"),
    refusal="a torchvision-style ResNet (one 7x7 conv1 stem, ResNet V1.5) is not the ResNet-V1c of DeepLab-V2 "
            "(a deep stem of three 3x3 convs): use mmcv's resnet101_v1c-e67eebb6.pth (open-mmlab://resnet101_v1c)")
LAYOUTS = (SEGFORMER, TRANSFORMERS, MMCV_RESNET, TORCHVISION_RESNET)

# transformers' module names inside a SegFormer block -> ours (modeling_segformer.py of transformers 4.x,
# the names its hub files keep). Keys and values are two Linear layers there and one here:
# kv = cat([key, value]) along the output features (its conversion script splits kv in that order).
_HF_BLOCK_MODULES = {"layer_norm_1": "norm1", "layer_norm_2": "norm2", "attention.self.query": "attn.q",
                     "attention.self.sr": "attn.sr", "attention.self.layer_norm": "attn.norm",
                     "attention.output.dense": "attn.proj", "mlp.dense1": "mlp.fc1",
                     "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.dense2": "mlp.fc2"}
_HF_KV = ("attention.self.key", "attention.self.value")
_HF_KEY = re.compile(r"(?P<prefix>(?:segformer\.)?encoder\.)(?:patch_embeddings\.(?P<embed>\d)\.(?P<embed_part>proj|layer_norm)"
                     r"|layer_norm\.(?P<norm>\d)|block\.(?P<stage>\d)\.(?P<index>\d+)\.(?P<module>[\w.]+))"
                     r"\.(?P<param>weight|bias)")
_OUR_MIT_KEY = re.compile(r"(?:patch_embed(?P<embed>\d)\.(?P<embed_part>proj|norm)|norm(?P<norm>\d)"
                          r"|block(?P<stage>\d)\.(?P<index>\d+)\.(?P<module>[\w.]+))\.(?P<param>weight|bias)")
# SegformerConfig fields (transformers configuration_segformer.py) that fix the encoder's architecture.
_SEGFORMER_FIELDS = ("num_channels", "num_encoder_blocks", "hidden_sizes", "depths", "num_attention_heads",
                     "sr_ratios", "patch_sizes", "strides", "mlp_ratios", "hidden_act")


class LoadedCheckpoint(NamedTuple):
    loaded: int                 # tensors copied into the encoder
    dropped: tuple[str, ...]    # classifier keys removed from the file
    provenance: dict            # where the weights came from (``Weights.provenance``): a run records it


class Weights(NamedTuple):
    """ImageNet weights as read from their source, before any renaming."""

    source: str                     # as given: a path, or "hf:owner/name[@revision]"
    file: Path                      # the file the tensors were read from
    revision: str | None            # the hub commit for hf: sources, else None
    config: dict | None             # the folder's config.json, when it has one
    sha256: str                     # of the file's bytes
    state: dict[str, torch.Tensor]  # as stored (unwrapped from "state_dict" / "model")

    def provenance(self, layout: Layout) -> dict:
        """Source, revision, file, layout, SHA-256 and tensor count: what a run records of its weights."""
        return {"source": self.source, "revision": self.revision, "file": str(self.file),
                "layout": layout.name, "sha256": self.sha256, "tensors": len(self.state)}


def format_provenance(provenance: dict) -> str:
    """The provenance in one line, as the trainer prints it at start."""
    revision = f" revision {provenance['revision']}," if provenance["revision"] else ""
    return (f"{provenance['source']} ({provenance['file']},{revision} {provenance['layout']} layout, "
            f"{provenance['tensors']} tensors, sha256 {provenance['sha256']})")


def load_pretrained_encoder(model: nn.Module, path: str | os.PathLike) -> LoadedCheckpoint:
    """Copy the ImageNet weights of ``path`` (a file, a hub folder or ``hf:owner/name``) into
    ``model``'s encoder (or into ``model`` itself when it is an encoder). Raises ``ValueError`` /
    ``FileNotFoundError`` in one line (an unknown layout named by its closest known one and the
    first keys that do not fit it, a config.json for another model, the first missing,
    unexpected or mis-shaped tensors) before anything is copied."""
    encoder = getattr(model, "encoder", model)
    if not isinstance(encoder, (MixVisionTransformer, ResNet)):
        raise TypeError(f"{type(model).__name__} is neither a sepico model with ImageNet weights nor one of "
                        f"their encoders")
    weights = read_weights(path)
    layout = recognise(weights)
    if layout.refusal:
        raise ValueError(f"{weights.file}: {layout.refusal}")
    state, dropped = encoder_state(layout, weights.state)
    if not isinstance(encoder, layout.encoder_type):
        raise ValueError(f"{weights.file} holds weights in {layout.title} (they fit {_fitting_text(state)}); the "
                         f"model asks for {_model_name(encoder)}")
    mismatch = weights.config is not None and config_mismatch(weights.config, encoder)
    if mismatch:
        raise ValueError(f"{weights.source} holds {_config_model(weights.config)}, the model asks for "
                         f"{_model_name(encoder)} ({mismatch})")
    problems = weight_problems(encoder.state_dict(), state, name=_file_names(layout, weights.state),
                               optional_suffix=_OPTIONAL_SUFFIX)
    if problems:
        raise ValueError(f"{weights.file} ({layout.title}; the tensors fit {_fitting_text(state)}) does not match "
                         f"the {_model_name(encoder)} encoder: {problems}")
    # Keys are checked above; strict=False only lets an absent num_batches_tracked through.
    encoder.load_state_dict(state, strict=False)
    return LoadedCheckpoint(loaded=len(state), dropped=dropped, provenance=weights.provenance(layout))


def inspect_weights(source: str | os.PathLike) -> dict:
    """What ``source`` holds, for ``sepico info --weights``: the file read, its layout, the sepico
    models it fits, its tensor count and SHA-256. Raises as ``load_pretrained_encoder`` does for a
    source that cannot be read or a layout that is not known."""
    weights = read_weights(source)
    layout = recognise(weights)
    state, dropped = encoder_state(layout, weights.state)
    fits = [name for name in _fitting_models(state)
            if weights.config is None or not config_mismatch(weights.config, _encoder_of(name))]
    report = {"weights": weights.source, "file": str(weights.file)}
    if weights.revision:
        report["revision"] = weights.revision
    report |= {"layout": f"{layout.name}: {layout.title}",
               "fits": f"none: {layout.refusal}" if layout.refusal else ", ".join(fits) or "no sepico model",
               "tensors": f"{len(weights.state)} ({len(dropped)} of the ImageNet classifier, not loaded)",
               "sha256": weights.sha256}
    return report


def check_source(source: str | os.PathLike) -> None:
    """Cheap checks of a source before any work: an ``hf:owner/name[@revision]`` id with
    huggingface_hub installed, or an existing file or folder. Raises ``ValueError`` /
    ``FileNotFoundError`` in one line."""
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        if not _HUB_ID.fullmatch(text[len(HUB_PREFIX):]):
            raise ValueError(f"{text} is not a hub id: hf:owner/name or hf:owner/name@revision (e.g. hf:nvidia/mit-b5)")
        if importlib.util.find_spec("huggingface_hub") is None:
            raise ValueError(f"{text}: {_HUB_MISSING}")
    elif not Path(text).exists():
        raise FileNotFoundError(f"no file or folder at {text}")


def read_weights(source: str | os.PathLike) -> Weights:
    """Resolve ``source`` (file, folder, ``hf:`` id), then read and hash its weights file."""
    check_source(source)
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        file, config_file, revision = _from_hub(text)
    else:
        file, config_file, revision = _from_path(Path(text)) + (None,)
    config = _read_config(config_file) if config_file is not None else None
    data = file.read_bytes()  # read once: the hash is that of the bytes the tensors come from
    return Weights(source=text, file=file, revision=revision, config=config,
                   sha256=hashlib.sha256(data).hexdigest(), state=_tensors(data, file))


def recognise(weights: Weights) -> Layout:
    """The layout most of the file's tensor names fit (the first in ``LAYOUTS`` on a tie). A file
    none of whose names fits any layout is refused in one line naming the layout it looks closest
    to (the most name parts in common with its ``examples``) and its first keys."""
    if not weights.state:
        raise ValueError(f"{weights.file} holds no tensors")
    counts = [sum(1 for k in weights.state if _fits(layout, k)) for layout in LAYOUTS]
    if max(counts) > 0:
        return LAYOUTS[counts.index(max(counts))]
    parts = {p for k in weights.state for p in k.split(".") if not p.isdigit()}
    shared = [len(parts & {p for k in layout.examples for p in k.split(".")}) for layout in LAYOUTS]
    closest = LAYOUTS[shared.index(max(shared))]
    raise ValueError(f"{weights.file} is in no known weights layout; closest: {closest.title}, whose names look like "
                     f"{', '.join(closest.examples[:2])}; first keys that do not fit: {_first(list(weights.state))}")


def encoder_state(layout: Layout, state: dict[str, torch.Tensor]) -> tuple[dict, tuple[str, ...]]:
    """``state`` under our encoder names, without the classifier (whose names are returned too).
    Names the layout does not know are kept as they are, for the strict check to name."""
    dropped = tuple(k for k in state if layout.classifier.fullmatch(k))
    kept = {k: v for k, v in state.items() if k not in dropped}
    return (_from_transformers(kept) if layout is TRANSFORMERS else kept), dropped


def config_mismatch(config: dict, encoder: nn.Module) -> str | None:
    """How a folder's config.json (transformers' ``SegformerConfig``) differs from ``encoder``'s
    architecture, e.g. "depths [3, 4, 6, 3] in config.json, [3, 6, 40, 3] in the model"; None when
    it agrees, or when it describes no SegFormer (segmentation_models_pytorch's config.json holds
    preprocessing settings only: the tensors alone are checked then)."""
    if config.get("model_type") != "segformer":
        return None
    if not isinstance(encoder, MixVisionTransformer):
        return f"config.json describes a SegFormer (MiT) encoder, the model has a {type(encoder).__name__}"
    ours = _segformer_config(encoder)
    differing = [f"{field} {config[field]} in config.json, {ours[field]} in the model"
                 for field in _SEGFORMER_FIELDS if field in config and config[field] != ours[field]]
    return "; ".join(differing) or None


def weight_problems(expected: dict, given: dict, *, name=str, optional_suffix: str | None = None) -> str | None:
    """What keeps ``given`` tensors from loading strictly into a module whose state dict is
    ``expected``: "N missing key(s): ...; M unexpected key(s): ...", else the shape mismatches (in
    the module's order), naming the first few (``name`` spells a key, e.g. under another naming
    scheme); None when every key is there with its shape. A missing key ending in
    ``optional_suffix`` is tolerated."""
    missing = [name(k) for k in expected if k not in given
               and not (optional_suffix and k.endswith(optional_suffix))]
    unexpected = [name(k) for k in given if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if problems:
        return "; ".join(problems)
    shapes = [f"{name(k)} {tuple(given[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in given and tuple(given[k].shape) != tuple(v.shape)]
    return f"{len(shapes)} shape mismatch(es): {_first(shapes)}" if shapes else None


# --------------------------------------------------------------------------- sources

def _from_path(path: Path) -> tuple[Path, Path | None]:
    """A file is its own weights; a folder holds a hub weights file and, usually, its config.json."""
    if path.is_file():
        return path, None
    for name in HUB_WEIGHT_FILES:
        if (path / name).is_file():
            config = path / HUB_CONFIG_FILE
            return path / name, config if config.is_file() else None
    raise FileNotFoundError(f"{path} holds neither {' nor '.join(HUB_WEIGHT_FILES)} (what `hf download "
                            "--local-dir` leaves); name a weights file or such a folder")


def _from_hub(source: str) -> tuple[Path, Path | None, str]:
    """config.json and the weights file of a hub repository, through huggingface_hub's cache;
    returns them with the commit they belong to."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:
        raise ValueError(f"{source}: {_HUB_MISSING}") from None
    repo_id, _, revision = source[len(HUB_PREFIX):].partition("@")
    offline = False

    def download(filename: str) -> Path | None:
        nonlocal offline
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision or None))
        except EntryNotFoundError as err:
            offline = offline or isinstance(err, LocalEntryNotFoundError)
            return None

    try:
        config = download(HUB_CONFIG_FILE)
        file = next(filter(None, map(download, HUB_WEIGHT_FILES)), None)
    except (OSError, ValueError) as err:  # huggingface_hub's HTTP, repository and revision errors
        raise ValueError(f"{source}: {_first_line(err)}") from None
    if file is None:
        where = ("in the local hub cache, and the hub was not reached (HF_HUB_OFFLINE, or no connection)"
                 if offline else "in the repository")
        raise FileNotFoundError(f"{source}: no {' or '.join(HUB_WEIGHT_FILES)} {where}")
    return file, config, file.parent.name  # the cache keeps each commit's files in snapshots/<commit>/


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not a readable JSON file ({_first_line(err)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds no JSON object")
    return config


def _tensors(data: bytes, file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (an 8-byte little-endian header length, then the JSON
    header) or of a torch file (a zip archive, or a pickle from the legacy format)."""
    header = int.from_bytes(data[:8], "little")
    if data[8:9] == b"{" and header <= _SAFETENSORS_MAX_HEADER:
        try:
            return load_safetensors(data)
        except SafetensorError as err:
            raise ValueError(f"{file} is a damaged or truncated safetensors file ({_first_line(err)})") from None
    if data[:4] != b"PK\x03\x04" and data[:1] != b"\x80":
        raise ValueError(f"{file} is neither a torch file (zip or pickle) nor a safetensors file")
    try:
        # weights_only: a checkpoint is data, and unpickling arbitrary objects would run code.
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        raise ValueError(f"{file} holds objects other than tensors and plain containers"
                         f"{f' ({named.group(1)})' if named else ''}, refused without running them; "
                         "save its state dict alone") from None
    except Exception as err:  # noqa: BLE001 - a damaged archive or pickle fails anywhere in the reader
        raise ValueError(f"{file} is a damaged or truncated torch file ({type(err).__name__}: "
                         f"{_first_line(err)})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ValueError(f"{file} is not a state dict (a mapping of names to tensors), "
                         f"nor a dict holding one under 'state_dict' or 'model'")
    return obj


# --------------------------------------------------------------------------- layouts

def _fits(layout: Layout, key: str) -> bool:
    return bool(layout.keys.fullmatch(key) or layout.classifier.fullmatch(key))


def _from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' SegFormer names -> ours; each block's key and value tensors become one kv."""
    out, kv = {}, {}
    for key, value in state.items():
        m = _HF_KEY.fullmatch(key)
        module = m and m["module"]
        if m is None or (module and module not in _HF_BLOCK_MODULES and module not in _HF_KV):
            out[key] = value
        elif m["embed"]:
            out[f"patch_embed{int(m['embed']) + 1}.{'proj' if m['embed_part'] == 'proj' else 'norm'}.{m['param']}"] = value
        elif m["norm"]:
            out[f"norm{int(m['norm']) + 1}.{m['param']}"] = value
        elif module in _HF_KV:
            kv.setdefault(f"block{int(m['stage']) + 1}.{m['index']}.attn.kv.{m['param']}", {})[module] = (key, value)
        else:
            out[f"block{int(m['stage']) + 1}.{m['index']}.{_HF_BLOCK_MODULES[module]}.{m['param']}"] = value
    for ours, parts in kv.items():
        if len(parts) == len(_HF_KV):
            out[ours] = torch.cat([parts[name][1] for name in _HF_KV])
        else:  # half a pair stays under its own name: the strict check names it and the missing kv
            out.update(parts.values())
    return out


def _file_names(layout: Layout, state: dict):
    """How the file spells one of our keys, for messages (unknown names are returned as they are)."""
    if layout is not TRANSFORMERS:
        return str
    prefix = next((m["prefix"] for m in map(_HF_KEY.fullmatch, state) if m), "segformer.encoder.")
    theirs = {ours: hf for hf, ours in _HF_BLOCK_MODULES.items()} | {"attn.kv": "attention.self.key/value"}

    def name(key: str) -> str:
        m = _OUR_MIT_KEY.fullmatch(key)
        if m is None or (m["module"] and m["module"] not in theirs):
            return key
        if m["embed"]:
            part = "proj" if m["embed_part"] == "proj" else "layer_norm"
            return f"{prefix}patch_embeddings.{int(m['embed']) - 1}.{part}.{m['param']}"
        if m["norm"]:
            return f"{prefix}layer_norm.{int(m['norm']) - 1}.{m['param']}"
        return f"{prefix}block.{int(m['stage']) - 1}.{m['index']}.{theirs[m['module']]}.{m['param']}"

    return name


# --------------------------------------------------------------------------- which model

@functools.lru_cache(maxsize=None)
def _encoder_of(name: str) -> nn.Module:
    """The encoder of sepico model ``name``, on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return build_model(name).encoder


def _fitting_models(state: dict) -> list[str]:
    """The sepico models whose encoder ``state`` (our names) loads into strictly."""
    return [name for name in MODEL_NAMES if isinstance(_encoder_of(name), (MixVisionTransformer, ResNet))
            and weight_problems(_encoder_of(name).state_dict(), state, optional_suffix=_OPTIONAL_SUFFIX) is None]


def _fitting_text(state: dict) -> str:
    return " / ".join(_fitting_models(state)) or "no sepico model"


def _model_name(encoder: nn.Module) -> str:
    """The sepico model whose encoder this is, e.g. "daformer_mit_b5" (else the encoder's class)."""
    return next(iter(_fitting_models(encoder.state_dict())), f"a {type(encoder).__name__} encoder")


def _segformer_config(encoder: MixVisionTransformer) -> dict:
    """``encoder``'s architecture in ``SegformerConfig`` fields."""
    embeds = [getattr(encoder, f"patch_embed{i}") for i in range(1, 5)]
    blocks = [getattr(encoder, f"block{i}") for i in range(1, 5)]
    return {"num_channels": encoder.in_chans, "num_encoder_blocks": len(blocks),
            "hidden_sizes": list(encoder.out_channels), "depths": [len(b) for b in blocks],
            "num_attention_heads": [b[0].attn.num_heads for b in blocks],
            "sr_ratios": [b[0].attn.sr_ratio for b in blocks],
            "patch_sizes": [e.proj.kernel_size[0] for e in embeds], "strides": [e.proj.stride[0] for e in embeds],
            "mlp_ratios": [b[0].mlp.fc1.out_features // b[0].mlp.fc1.in_features for b in blocks],
            "hidden_act": "gelu"}  # nn.GELU(): the exact GELU, transformers' "gelu"


def _config_model(config: dict) -> str:
    """The MiT variant a SegformerConfig describes ("mit_b2"), or its widths and depths."""
    sizes, depths = config.get("hidden_sizes"), config.get("depths")
    found = [name for name, (dims, ds) in MIT_CONFIGS.items() if list(dims) == sizes and list(ds) == depths]
    return found[0] if found else f"a SegFormer with hidden_sizes {sizes} and depths {depths}"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")

"""ImageNet weights in every published layout, from files, hub folders and the hub cache, and every
refusal: each foreign file is written here from our own randomly initialised encoder, renamed by the
facts below (not by the loader's tables), loaded into a fresh model, and must give the same outputs.

Facts, from the publishers' sources:
- transformers' SegFormer, the names its hub files (``nvidia/mit-b0`` ... ``b5``) hold: transformers
  4.57.6 ``src/transformers/models/segformer/modeling_segformer.py``: ``SegformerOverlapPatchEmbeddings``
  ``proj`` / ``layer_norm`` (lines 103, 111); ``SegformerEfficientSelfAttention`` ``query`` / ``key`` /
  ``value`` (141-143), ``sr`` / ``layer_norm`` when sr_ratio > 1 (149, 152); ``SegformerSelfOutput.dense``
  under ``attention.output`` (215, 233); ``SegformerDWConv.dwconv`` (265) in ``mlp.dwconv``;
  ``SegformerMixFFN`` ``dense1`` / ``dense2`` (280, 286); ``SegformerLayer`` ``layer_norm_1`` /
  ``attention`` / ``layer_norm_2`` / ``mlp`` (304-314); ``SegformerEncoder`` ``patch_embeddings``,
  ``block``, ``layer_norm`` lists (363, 386, 389); ``SegformerModel.encoder`` (465),
  ``base_model_prefix = "segformer"`` (438), ``SegformerForImageClassification`` ``segformer`` +
  ``classifier`` (521, 524). So a hub MiT file holds ``segformer.encoder.*`` + ``classifier.*``, a bare
  ``SegformerModel`` save ``encoder.*``. Every LayerNorm there is ``nn.LayerNorm(hidden_size)``, eps
  1e-5 (the official MiT: 1e-6 in the blocks and stage norms; the weights are the same).
  ``convert_segformer_original_to_pytorch.py`` (huggingface/transformers): ``rename_keys`` prefixes
  the ``mit`` encoder keys with ``segformer.encoder.`` and renames ``head`` to ``classifier``;
  ``read_in_k_v`` splits ``kv`` into ``key`` = kv[:hidden_size] and ``value`` = kv[hidden_size:]
  ("keys and values (in that order)"). transformers 5 renamed its modules but keeps these names in
  files: ``conversion_mapping.py`` "SegformerModel" maps them on load and ``save_pretrained`` reverts
  the mapping on save.
  ``configuration_segformer.py`` (4.57.6): ``model_type = "segformer"`` (line 97); the architecture
  fields num_channels, num_encoder_blocks, depths, sr_ratios, hidden_sizes, patch_sizes, strides,
  num_attention_heads, mlp_ratios, hidden_act (lines 101-110).
- segmentation_models_pytorch (qubvel-org/segmentation_models.pytorch, 0.6):
  ``segmentation_models_pytorch/encoders/mix_transformer.py`` names ``q`` / ``kv`` / ``proj`` /
  ``sr`` / ``norm`` (lines 96-105; Identity, no tensors, at sr_ratio 1: 107-109), ``norm1`` /
  ``attn`` / ``norm2`` / ``mlp`` (180-194), ``fc1`` / ``dwconv.dwconv`` / ``fc2`` (45-48, 510),
  ``patch_embed1..4`` with ``proj`` / ``norm`` (239-246, 295-322), ``block1..4`` / ``norm1..4``
  (329-406): the SegFormer release names; its ``load_state_dict`` drops ``head.*`` (588-591).
  ``encoders/__init__.py`` (128-135) downloads ``config.json`` and ``model.safetensors`` from
  ``smp-hub/mit_b*.imagenet`` (repo ids: mix_transformer.py 599 ...) and loads the file straight into
  the encoder: bare encoder keys. The smp config.json holds preprocessing settings (mean, std,
  input_space, input_range: ``get_preprocessing_params``, 167-177), no architecture.
- mmcv ResNet-V1c: ``stem.*`` and ``layer*`` names, as in tests/test_models.py;
  torchvision ResNet (``torchvision/models/resnet.py`` 0.29, lines 197-206): ``conv1`` 7x7, ``bn1``,
  ``fc``.
- huggingface_hub 2.4 ``file_download.py``: the cache holds ``models--{owner}--{name}/refs/<branch>``
  (the commit hash) and ``snapshots/<commit>/<file>`` (``hf_hub_download`` docstring, 878-905;
  ``repo_folder_name``, 747-755); without the hub, ``refs/<revision>`` is read and the snapshot file
  returned (1140-1160).
- safetensors: an 8-byte little-endian header length, then that many bytes of JSON, then the data.
"""
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sepico.cli import main
from sepico.models import build_model, load_pretrained_encoder
from sepico.models.pretrained import check_source
from sepico.train import Trainer
from sepico.train.config import ConfigError, validate
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MIT_B0_CONFIG = {"model_type": "segformer", "architectures": ["SegformerForImageClassification"],
                 "num_channels": 3, "num_encoder_blocks": 4, "depths": [2, 2, 2, 2], "sr_ratios": [8, 4, 2, 1],
                 "hidden_sizes": [32, 64, 160, 256], "patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2],
                 "num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [4, 4, 4, 4], "hidden_act": "gelu",
                 "layer_norm_eps": 1e-06, "reshape_last_stage": False}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- foreign layouts, from the facts

def random_model(name, seed):
    """A float64 model whose every encoder tensor (LayerNorm / BatchNorm affine and statistics too) is
    random, so a tensor loaded into the wrong place changes the outputs."""
    torch.manual_seed(seed)
    model = build_model(name).double().eval()
    with torch.no_grad():
        for key, t in model.encoder.state_dict().items():
            if key.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.1)
    return model


def stage_outputs(model):
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model.encoder(x)


def transformers_names(state, prefix="segformer.encoder.", kv_order=("key", "value")):
    """Our MiT state dict under transformers' hub names (modeling_segformer.py, see above), kv split
    into key = kv[:C], value = kv[C:] (read_in_k_v); ``kv_order`` reversed writes them swapped."""
    block = {"norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
             "attn.sr": "attention.self.sr", "attn.norm": "attention.self.layer_norm",
             "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.dense1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
             "mlp.fc2": "mlp.dense2"}
    out = {}
    for key, t in state.items():
        head, _, param = key.rpartition(".")
        parts = head.split(".")
        if parts[0].startswith("patch_embed"):
            i = int(parts[0][-1]) - 1
            out[f"{prefix}patch_embeddings.{i}.{'proj' if parts[1] == 'proj' else 'layer_norm'}.{param}"] = t
        elif parts[0].startswith("block"):
            base = f"{prefix}block.{int(parts[0][-1]) - 1}.{parts[1]}"
            module = ".".join(parts[2:])
            if module == "attn.kv":
                half = t.shape[0] // 2
                out[f"{base}.attention.self.{kv_order[0]}.{param}"] = t[:half].clone()
                out[f"{base}.attention.self.{kv_order[1]}.{param}"] = t[half:].clone()
            else:
                out[f"{base}.{block[module]}.{param}"] = t
        else:  # norm{i}: the stage norm
            out[f"{prefix}layer_norm.{int(parts[0][-1]) - 1}.{param}"] = t
    return out


def mit_release(state):  # mit_b*.pth: our names plus the ImageNet classifier head.*
    return dict(state, **{"head.weight": torch.randn(1000, 256, dtype=torch.float64),
                          "head.bias": torch.randn(1000, dtype=torch.float64)})


def resnet_v1c(state):  # mmcv: our names plus fc.* (its shape does not matter: it is dropped)
    return dict(state, **{"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)})


def write_torch(path, state, wrap=None):
    torch.save(state if wrap is None else {wrap: state, "meta": {"epoch": 100}}, path)
    return path


def write_safetensors(path, state):
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def r18():
    """One random ResNet-18 V1c encoder state (our names = mmcv's)."""
    return random_model("deeplabv2_r18", seed=6).encoder.state_dict()


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- every layout loads

@pytest.mark.parametrize("model_name, layout, write", [
    # the SegFormer release file: torch, head.* dropped
    ("daformer_mit_b0", "segformer", lambda p, s: write_torch(p / "mit_b0.pth", mit_release(s))),
    # smp-hub/mit_b0.imagenet: the same names, no classifier, model.safetensors
    ("daformer_mit_b0", "segformer", lambda p, s: write_safetensors(p / "model.safetensors", s)),
    # nvidia/mit-b0 (SegformerForImageClassification): segformer.encoder.* + classifier.*
    ("daformer_mit_b0", "transformers", lambda p, s: write_safetensors(p / "model.safetensors", dict(
        transformers_names(s), **{"classifier.weight": torch.randn(1000, 256), "classifier.bias": torch.randn(1000)}))),
    # a bare SegformerModel save: encoder.*, pytorch_model.bin
    ("daformer_mit_b0", "transformers", lambda p, s: write_torch(p / "pytorch_model.bin",
                                                                 transformers_names(s, prefix="encoder."))),
    # mmcv ResNet-V1c, an mmcv checkpoint (state_dict + meta)
    ("deeplabv2_r18", "mmcv_resnet", lambda p, s: write_torch(p / "resnet18_v1c.pth", resnet_v1c(s), "state_dict")),
    ("deeplabv2_r50", "mmcv_resnet", lambda p, s: write_safetensors(p / "r50.safetensors", resnet_v1c(s))),
])
def test_each_layout_loads_into_a_fresh_model_with_equal_outputs(tmp_path, model_name, layout, write):
    source = random_model(model_name, seed=1)
    path = write(tmp_path, source.encoder.state_dict())
    fresh = build_model(model_name).double().eval()
    report = load_pretrained_encoder(fresh, path)
    assert report.provenance["layout"] == layout and report.provenance["sha256"] == sha256(path)
    assert report.loaded == len(fresh.encoder.state_dict())
    for ours, theirs in zip(stage_outputs(fresh), stage_outputs(source)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_a_key_value_split_in_the_wrong_order_would_be_caught(tmp_path):
    """The comparison above can fail: value before key loads (same names and shapes) but the
    attention differs."""
    source = random_model("daformer_mit_b0", seed=1)
    swapped = transformers_names(source.encoder.state_dict(), kv_order=("value", "key"))
    fresh = build_model("daformer_mit_b0").double().eval()
    load_pretrained_encoder(fresh, write_safetensors(tmp_path / "swapped.safetensors", swapped))
    worst = max((a - b).abs().max().item() for a, b in zip(stage_outputs(fresh), stage_outputs(source)))
    assert worst > 1e-3


# --------------------------------------------------------------------------- files and folders

def test_the_format_is_read_from_the_content_not_the_suffix(tmp_path):
    state = random_model("daformer_mit_b0", seed=2).encoder.state_dict()
    for path in (write_safetensors(tmp_path / "weights.pth", state), write_torch(tmp_path / "weights.safetensors", state),
                 write_torch(tmp_path / "weights", state)):
        fresh = build_model("daformer_mit_b0")
        assert load_pretrained_encoder(fresh, path).loaded == len(state)
        torch.testing.assert_close(fresh.encoder.norm4.weight, state["norm4.weight"].float(), rtol=0, atol=0)


def hub_folder(folder, state, config=MIT_B0_CONFIG, weights="model.safetensors"):
    """What `hf download nvidia/mit-b0 --local-dir FOLDER` leaves."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    hf = transformers_names(state)
    (write_safetensors if weights.endswith(".safetensors") else write_torch)(folder / weights, hf)
    return folder


def test_a_downloaded_folder_loads_preferring_model_safetensors(tmp_path):
    state = random_model("daformer_mit_b0", seed=3).encoder.state_dict()
    folder = hub_folder(tmp_path / "mit-b0", state)
    other = random_model("daformer_mit_b0", seed=4).encoder.state_dict()
    write_torch(folder / "pytorch_model.bin", transformers_names(other))  # beside it: not read
    fresh = build_model("daformer_mit_b0")
    report = load_pretrained_encoder(fresh, folder)
    assert report.provenance["file"] == str(folder / "model.safetensors")
    torch.testing.assert_close(fresh.encoder.block2[1].attn.kv.weight, state["block2.1.attn.kv.weight"].float(),
                               rtol=0, atol=0)
    only_bin = hub_folder(tmp_path / "bin", state, weights="pytorch_model.bin")
    assert load_pretrained_encoder(build_model("daformer_mit_b0"), only_bin).provenance["file"].endswith(".bin")
    # segmentation_models_pytorch's config.json holds no architecture: the tensors alone decide
    smp = tmp_path / "smp"
    smp.mkdir()
    (smp / "config.json").write_text(json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                                 "input_space": "RGB", "input_range": [0, 1]}))
    write_safetensors(smp / "model.safetensors", state)
    assert load_pretrained_encoder(build_model("daformer_mit_b0"), smp).provenance["layout"] == "segformer"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "pytorch_model.bin"]


@pytest.mark.parametrize("change, message", [
    ({"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3]},
     r"mit-b2 holds mit_b2, the model asks for daformer_mit_b0 \(hidden_sizes \[64, 128, 320, 512\] in config\.json, "
     r"\[32, 64, 160, 256\] in the model; depths \[3, 4, 6, 3\] in config\.json, \[2, 2, 2, 2\] in the model\)"),
    ({"num_attention_heads": [1, 2, 4, 8]},
     r"num_attention_heads \[1, 2, 4, 8\] in config\.json, \[1, 2, 5, 8\] in the model"),
    ({"hidden_act": "relu"}, r"hidden_act relu in config\.json, gelu in the model"),
])
def test_a_folder_whose_config_names_another_model_is_refused_in_one_line(tmp_path, change, message):
    state = random_model("daformer_mit_b0", seed=3).encoder.state_dict()
    folder = hub_folder(tmp_path / "mit-b2", state, config=dict(MIT_B0_CONFIG, **change))
    with pytest.raises(ValueError, match=message) as err:
        load_pretrained_encoder(build_model("daformer_mit_b0"), folder)
    assert "\n" not in str(err.value)



def test_a_segformer_config_beside_resnet_tensors_is_refused(tmp_path, r18):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MIT_B0_CONFIG))
    write_safetensors(folder / "model.safetensors", r18)
    with pytest.raises(ValueError, match=r"odd holds mit_b0, the model asks for deeplabv2_r18 \(config\.json describes "
                                         r"a SegFormer \(MiT\) encoder, the model has a ResNet\)"):
        load_pretrained_encoder(build_model("deeplabv2_r18"), folder)


# --------------------------------------------------------------------------- the hub cache, offline

HUB_SCRIPT = """
import json, sys, torch
from sepico.cli import main
from sepico.models import build_model, load_pretrained_encoder
out = {}
for source in sys.argv[2:]:
    model = build_model("daformer_mit_b0")
    try:
        out[source] = load_pretrained_encoder(model, source).provenance
        torch.save(model.encoder.state_dict(), sys.argv[1])
    except (ValueError, FileNotFoundError) as err:
        out[source] = str(err)
print(json.dumps(out))
sys.exit(main(["info", "--weights", sys.argv[2]]))
"""


def hub_cache(cache, repo, state, weights="model.safetensors"):
    """A repository as huggingface_hub caches it: refs/main -> COMMIT, snapshots/COMMIT/files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return hub_folder(folder / "snapshots" / COMMIT, state, weights=weights) / weights


def test_hf_ids_resolve_from_the_hub_cache_offline(tmp_path):
    state = random_model("daformer_mit_b0", seed=5).encoder.state_dict()
    cache = tmp_path / "hub"
    file = hub_cache(cache, "nvidia/mit-b0", state)
    hub_cache(cache, "someone/mit-b0-bin", state, weights="pytorch_model.bin")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"),
               HF_HUB_DISABLE_TELEMETRY="1")
    sources = ["hf:nvidia/mit-b0", f"hf:nvidia/mit-b0@{COMMIT}", "hf:someone/mit-b0-bin", "hf:nvidia/mit-b1"]
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(tmp_path / "loaded.pt"), *sources], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    results = json.loads(lines[0])
    main_ref = results["hf:nvidia/mit-b0"]
    assert main_ref == {"source": "hf:nvidia/mit-b0", "revision": COMMIT, "file": main_ref["file"],
                        "layout": "transformers", "sha256": sha256(file), "tensors": len(transformers_names(state))}
    assert Path(main_ref["file"]).resolve() == file.resolve()
    assert results[f"hf:nvidia/mit-b0@{COMMIT}"]["sha256"] == sha256(file)
    assert results["hf:someone/mit-b0-bin"]["file"].endswith("pytorch_model.bin")
    assert "hf:nvidia/mit-b1: no model.safetensors or pytorch_model.bin in the local hub cache" in results["hf:nvidia/mit-b1"]
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)  # the last one that loaded
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value.float(), rtol=0, atol=0)
    info = dict(line.split(None, 1) for line in lines[1:])
    assert info["revision"] == COMMIT and info["sha256"] == sha256(file) and info["fits"] == "daformer_mit_b0"
    assert info["layout"].startswith("transformers")


def test_without_huggingface_hub_an_hf_id_asks_for_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now fails
    for call in (lambda: check_source("hf:nvidia/mit-b5"),
                 lambda: load_pretrained_encoder(build_model("daformer_mit_b0"), "hf:nvidia/mit-b5")):
        with pytest.raises(ValueError, match=r"hf:nvidia/mit-b5: .*needs huggingface_hub: pip install 'sepico\[hub\]'"):
            call()
    cfg = tiny_config(model="daformer_mit_b0")
    cfg.model.pretrained = "hf:nvidia/mit-b5"
    with pytest.raises(ConfigError, match=r"config field 'model.pretrained': .*pip install 'sepico\[hub\]'"):
        validate(cfg)
    with pytest.raises(ValueError, match=r"not a hub id: hf:owner/name"):
        check_source("hf:mit-b5")


# --------------------------------------------------------------------------- refusals, one line each

def one_line(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_torchvision_resnet_is_refused(tmp_path, r18):
    state = {k: v for k, v in r18.items() if not k.startswith("stem.")}
    state |= {"conv1.weight": torch.randn(64, 3, 7, 7), "bn1.weight": torch.ones(64), "bn1.bias": torch.zeros(64),
              "bn1.running_mean": torch.zeros(64), "bn1.running_var": torch.ones(64),
              "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    with pytest.raises(ValueError, match=r"torchvision-style ResNet \(one 7x7 conv1 stem, ResNet V1\.5\) is not the "
                                         r"ResNet-V1c .*resnet101_v1c-e67eebb6\.pth") as err:
        load_pretrained_encoder(build_model("deeplabv2_r18"), write_torch(tmp_path / "resnet18-f37072fd.pth", state))
    one_line(err)


def test_a_file_in_no_layout_names_the_closest_and_its_first_misfits(tmp_path, r18):
    wrapped = {f"module.{k}": v for k, v in r18.items()}  # a DataParallel save
    with pytest.raises(ValueError, match=r"in no known weights layout; closest: mmcv's ResNet-V1c layout .*; first keys "
                                         r"that do not fit: module\.stem\.0\.weight, module\.stem\.1\.weight") as err:
        load_pretrained_encoder(build_model("deeplabv2_r18"), write_torch(tmp_path / "dp.pth", wrapped))
    one_line(err)
    hub_like = {f"model.{k}": v for k, v in transformers_names(random_model("daformer_mit_b0", 1).encoder.state_dict()).items()}
    with pytest.raises(ValueError, match=r"closest: transformers' SegFormer layout .*first keys that do not fit: "
                                         r"model\.segformer\.encoder\."):
        load_pretrained_encoder(build_model("daformer_mit_b0"), write_safetensors(tmp_path / "x.safetensors", hub_like))


def test_misfits_inside_a_layout_are_named_in_the_files_own_terms(tmp_path):
    hf = transformers_names(random_model("daformer_mit_b0", 1).encoder.state_dict())
    path = write_safetensors(tmp_path / "b0.safetensors", hf)
    with pytest.raises(ValueError, match=r"the tensors fit daformer_mit_b0\) does not match the daformer_mit_b1 encoder: "
                                         r".*shape mismatch.*segformer\.encoder\.patch_embeddings\.0\.proj\.weight "
                                         r"\(32, 3, 7, 7\) in the file, \(64, 3, 7, 7\) in the model"):
        load_pretrained_encoder(build_model("daformer_mit_b1"), path)
    half = {k: v for k, v in hf.items() if k != "segformer.encoder.block.1.0.attention.self.value.weight"}
    with pytest.raises(ValueError, match=r"1 missing key\(s\): segformer\.encoder\.block\.1\.0\.attention\.self\."
                                         r"key/value\.weight; 1 unexpected key\(s\): segformer\.encoder\.block\.1\.0\."
                                         r"attention\.self\.key\.weight"):
        load_pretrained_encoder(build_model("daformer_mit_b0"), write_safetensors(tmp_path / "half.safetensors", half))
    with pytest.raises(ValueError, match=r"holds weights in transformers' SegFormer layout .*\(they fit daformer_mit_b0\); "
                                         r"the model asks for deeplabv2_r18"):
        load_pretrained_encoder(build_model("deeplabv2_r18"), path)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) // 2], "damaged or truncated torch file"),
    (lambda data: b"", "neither a torch file"),
    (lambda data: b"not weights at all\n" * 4, "neither a torch file"),
])
def test_damaged_torch_files_cost_one_line(tmp_path, r18, damage, message):
    good = io.BytesIO()
    torch.save(r18, good)
    path = tmp_path / "r18.pth"
    path.write_bytes(damage(good.getvalue()))
    with pytest.raises(ValueError, match=message) as err:
        load_pretrained_encoder(build_model("deeplabv2_r18"), path)
    assert str(path) in one_line(err)


def test_a_truncated_safetensors_file_costs_one_line(tmp_path, r18):
    path = write_safetensors(tmp_path / "model.safetensors", r18)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="damaged or truncated safetensors file") as err:
        load_pretrained_encoder(build_model("deeplabv2_r18"), path)
    one_line(err)


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("write", [
    lambda path, obj: torch.save({"state_dict": {"w": obj}}, path),              # a torch zip file
    lambda path, obj: path.write_bytes(pickle.dumps({"w": obj}, protocol=2)),    # a plain pickle
])
def test_a_pickle_with_foreign_code_is_refused_without_running_it(tmp_path, write):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    write(path, Payload(marker))
    with pytest.raises(ValueError, match=r"holds objects other than tensors and plain containers.*refused without "
                                         r"running them") as err:
        load_pretrained_encoder(build_model("deeplabv2_r18"), path)
    one_line(err)
    assert not marker.exists()


# --------------------------------------------------------------------------- sepico info --weights, provenance

def test_sepico_info_reports_layout_fits_tensors_and_sha256(tmp_path, capsys, r18):
    mit_state = random_model("daformer_mit_b0", seed=1).encoder.state_dict()
    cases = [
        (write_torch(tmp_path / "mit_b0.pth", mit_release(mit_state)), "segformer", "daformer_mit_b0", 178),
        (hub_folder(tmp_path / "mit-b0", mit_state), "transformers", "daformer_mit_b0", len(transformers_names(mit_state))),
        (write_torch(tmp_path / "r18.pth", resnet_v1c(r18), "state_dict"), "mmcv_resnet",
         "deeplabv2_r18", len(r18) + 2),
    ]
    for path, layout, fits, tensors in cases:
        assert main(["info", "--weights", str(path)]) == 0
        info = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
        file = path / "model.safetensors" if path.is_dir() else path
        assert info["file"] == str(file) and info["sha256"] == sha256(file)
        assert info["layout"].startswith(f"{layout}: ") and info["fits"] == fits
        assert info["tensors"].startswith(f"{tensors} (")
    assert main(["info", "--weights", str(tmp_path / "nothing.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sepico: error: no file or folder at {tmp_path / 'nothing.pth'}"


def test_a_run_records_and_prints_its_weights_provenance(tmp_path, capsys, r18):
    path = write_torch(tmp_path / "resnet18_v1c.pth", resnet_v1c(r18), "state_dict")
    cfg = tiny_config(model="deeplabv2_r18")
    cfg.model.pretrained, cfg.train.max_iters = str(path), 1
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.train()
    record = json.loads((tmp_path / "run" / "pretrained.json").read_text())
    assert record == {"source": str(path), "revision": None, "file": str(path), "layout": "mmcv_resnet",
                      "sha256": sha256(path), "tensors": len(r18) + 2}
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("model.pretrained: ")]
    assert printed == [f"model.pretrained: {path} ({path}, mmcv_resnet layout, {record['tensors']} tensors, "
                       f"sha256 {record['sha256']})"]
    write_torch(path, r18, "state_dict")  # another file under the same name: a resume keeps the first record
    cfg.train.max_iters = 2
    Trainer(cfg, tmp_path / "run", resume=True, progress=False).train()
    assert record["sha256"] != sha256(path) and json.loads((tmp_path / "run" / "pretrained.json").read_text()) == record
    cfg.model.pretrained = str(write_torch(tmp_path / "mit_b0.pth", random_model("daformer_mit_b0", 1).encoder.state_dict()))
    with pytest.raises(ConfigError, match=r"config field 'model.pretrained': .*mit_b0\.pth holds weights in the "
                                          r"SegFormer release layout .*the model asks for deeplabv2_r18"):
        Trainer(cfg, tmp_path / "other", progress=False)


def test_the_weights_page_commands_parse():
    """Every `sepico` command of docs/weights.md is one the CLI accepts."""
    import re
    import shlex

    from sepico.cli import build_parser

    text = (ROOT / "docs" / "weights.md").read_text()
    lines = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S)).splitlines()
    commands = [line.split("#")[0].replace("...", "").strip() for line in lines if line.startswith("sepico ")]
    assert {c.split()[1] for c in commands} == {"train", "info"}
    for command in commands:
        assert build_parser().parse_args(shlex.split(command)[1:]).command == command.split()[1]

"""The CPU demo (``python -m sepico.demo``): a two-iteration run writes a valid summary and both
figures; the demo's small conv model follows the Segmentor interface."""
import json
import math

import pytest
import torch

from sepico.models import MODEL_NAMES, build_model
from sepico.train.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.system
def test_two_iteration_demo_writes_summary_and_figures(tmp_path):
    from sepico import demo

    out = tmp_path / "demo"
    summary = demo.main(["--iters", "2", "--out", str(out), "--threads", "1", "--no-progress",
                         "--eval-points", "1", "--examples", "2",
                         "--set", "data.test_length=4", "--set", "data.train_length=8"])
    data = json.loads((out / "summary.json").read_text())
    assert data["iterations"] == 2 and data["seeds"] == [0] and data["device"] == "cpu"
    assert data["wall_time_s"] > 0
    names = {"road", "sidewalk", "building", "fence", "pole", "vegetation", "sky", "person", "car"}
    for key in ("source_only", "adapted"):
        assert 0.0 <= data[f"{key}_miou"] <= 100.0
        per_class = data[f"{key}_per_class_iou"]
        assert set(per_class) == names
        assert all(v is None or 0.0 <= v <= 100.0 for v in per_class.values())
        run = data["per_seed"][0][key]
        assert math.isclose(run["target_miou"], data[f"{key}_miou"])
        assert 0.0 <= run["source_miou"] <= 100.0
        assert (out / "seed0" / key / "metrics.jsonl").is_file()
    assert 0.0 <= data["source_only_source_domain_miou"] <= 100.0
    assert math.isclose(data["gain"], data["adapted_miou"] - data["source_only_miou"])
    assert set(data["spread"]) == {"source_only_miou", "adapted_miou", "gain"}
    assert summary["adapted_miou"] == data["adapted_miou"]
    for png in ("results.png", "examples.png"):
        raw = (out / png).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000


def test_demo_config_runs_the_source_only_warm_up_and_small_model():
    from sepico.demo import DEFAULT_CONFIG, parse_args, run_configs

    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.model.name == "convnet_small" and cfg.method.variant == "dist"
    assert cfg.method.pseudo_weight == "pixel"
    assert cfg.method.start_self_training_iter == cfg.train.max_iters // 4
    source_only, adapted = run_configs(parse_args(["--iters", "40"]), seed=3)
    assert source_only.method.variant == "source_only" and adapted.method.variant == "dist"
    assert source_only.train.seed == adapted.train.seed == 3
    assert source_only.train.max_iters == adapted.train.max_iters == 40
    assert adapted.method.start_self_training_iter == 10
    # the same data, model and optimiser: only the method differs
    for section in ("data", "model", "optim"):
        assert getattr(source_only, section) == getattr(adapted, section)


@pytest.mark.parametrize("size", [(64, 128), (50, 70)])
def test_small_model_shapes_strides_and_unit_embeddings(size):
    assert "convnet_small" in MODEL_NAMES
    torch.manual_seed(0)
    model = build_model("convnet_small", num_classes=5, proj_dim=8)
    x = torch.randn(2, 3, *size)
    logits, emb = model(x)
    ceil = lambda n, s: -(-n // s)  # noqa: E731
    assert (model.logits_stride, model.embedding_stride) == (8, 8)
    assert logits.shape == (2, 5, ceil(size[0], 8), ceil(size[1], 8))
    assert emb.shape == (2, 8, ceil(size[0], 8), ceil(size[1], 8))
    norms = emb.norm(dim=1)  # unit length, or 0 where the ReLU zeroed a pixel's features
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0)) and (norms > 0).float().mean() > 0.9
    features = model.encoder(x)
    assert [f.shape[1] for f in features] == list(model.encoder.out_channels)
    assert [tuple(f.shape[2:]) for f in features] == [
        (ceil(size[0], s), ceil(size[1], s)) for s in model.encoder.strides]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.predict_logits(x), model(x)[0], rtol=0, atol=0)
    params = list(model.parameters())
    groups = model.parameter_groups(1e-3, 0.01)
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_small_model_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = build_model("convnet_small", num_classes=4, proj_dim=8)
    b = build_model("convnet_small", num_classes=4, proj_dim=8)
    b.load_state_dict(a.state_dict())
    b.activation_checkpointing = True
    assert b.encoder.activation_checkpointing and not a.activation_checkpointing
    x = torch.randn(2, 3, 32, 48)
    for m in (a, b):
        logits, emb = m(x)
        (logits.square().mean() + emb.sum()).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)
    for ba, bb in zip(a.buffers(), b.buffers()):
        torch.testing.assert_close(ba, bb)

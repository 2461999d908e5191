"""The self-training loop end to end on tiny synthetic scenes, resume, signals and its pieces."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import kernels
from sepico.data.transforms import normalize
from sepico.evaluation import evaluate
from sepico.train import Trainer, augment
from sepico.train.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from sepico.train.config import Config, apply_overrides, load_config
from sepico.errors import ConfigError
from sepico.models import build_run_model
from sepico.train.trainer import lr_factor
from tests.helpers import assert_same, cli, tiny_config, trainer_state

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("variant,model,extra", [
    ("dist", "deeplabv2_r18", {}),
    ("dist", "daformer_mit_b0", {"covariance": "full"}),
    ("proto", "deeplabv2_r18", {}),
    ("bank", "daformer_mit_b0", {}),
    ("self_training", "deeplabv2_r18", {"pseudo_weight": "pixel", "ignore_top": 3}),
    ("source_only", "daformer_mit_b0", {}),
])
def test_every_variant_trains_end_to_end(tmp_path, variant, model, extra):
    trainer = Trainer(tiny_config(variant, model, **extra), tmp_path, progress=False)
    result = trainer.train()
    assert trainer.iteration == 3
    # The reported mIoU is the trained student's, on the target test scenes, and the checkpoint holds it.
    final = read_checkpoint(list_checkpoints(tmp_path)[-1])
    again = build_run_model(trainer.cfg.model)
    again.load_state_dict(final["model"])
    direct = evaluate(again, trainer.data.target_test, num_classes=trainer.cfg.model.num_classes,
                      classes=trainer.data.eval_classes, batch_size=2)
    assert result["miou"] == pytest.approx(direct["miou"], abs=1e-9) and result["confusion"] == direct["confusion"]
    assert sum(map(sum, direct["confusion"])) == 4 * 64 * 128 - sum(
        int((label == 255).sum()) for _, label in trainer.data.target_test)  # every labelled test pixel
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # three training lines, then the final evaluation
    assert json.loads(lines[-1]) == {"iteration": 3, "miou": result["miou"]}
    last = json.loads(lines[-2])
    for key in ("loss_ce", "lr"):
        assert key in last and last[key] == last[key]  # present and not NaN
    assert ("loss_cl_src" in last) == (variant in ("dist", "proto", "bank"))
    assert ("loss_mix" in last) == (variant != "source_only")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000002.pt", "ckpt_00000003.pt"]
    if variant in ("dist", "proto", "bank"):
        assert trainer.sepico.estimator.count.sum() > 0


@pytest.mark.system
@pytest.mark.parametrize("variant", ["dist", "bank"])
def test_resume_is_bit_exact(tmp_path, variant):
    cfg = tiny_config(variant)
    cfg.train.max_iters = 4
    straight = Trainer(cfg, tmp_path / "straight", progress=False)
    straight.train()
    first = Trainer(cfg, tmp_path / "split", progress=False)
    for _ in range(2):
        first.step()
    first.save_checkpoint()
    resumed = Trainer(cfg, tmp_path / "split", resume=True, progress=False)
    assert resumed.iteration == 2
    resumed.train()
    assert_same(trainer_state(straight), trainer_state(resumed))


@pytest.mark.system
def test_sigterm_writes_a_checkpoint_and_the_run_resumes(tmp_path):
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text(
        'name = "tiny"\n[data]\nsize = [64, 128]\ntrain_length = 12\ntest_length = 2\n'
        '[model]\nname = "deeplabv2_r18"\nproj_dim = 16\n'
        '[method]\nvariant = "dist"\nstart_distribution_iter = 1\n'
        '[train]\nmax_iters = 500\nbatch_size = 1\ncheckpoint_interval = 2\nlog_interval = 1\n')
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sepico.cli", "train", str(cfg_file), "--no-progress",
           "--set", f"train.run_dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "ckpt_00000002.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "stopped by signal" in err
    last = latest_checkpoint(run)
    stopped_at = int(last.stem.split("_")[1])
    assert stopped_at >= 2 and not list(run.glob(".*.tmp"))
    state = torch.load(last, weights_only=True)
    assert state["iteration"] == stopped_at
    done = subprocess.run(cmd + ["--resume", str(run), "--set", f"train.max_iters={stopped_at + 1}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert latest_checkpoint(run).name == f"ckpt_{stopped_at + 1:08d}.pt"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in records if "miou" not in r]
    assert iterations == list(range(1, stopped_at + 2))  # no duplicate lines after the resume
    assert [r["iteration"] for r in records if "miou" in r] == [stopped_at + 1]  # the final evaluation


def test_ema_update_rule(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    before = [t.clone() for t in trainer.teacher.parameters()]
    trainer.iteration = 9  # alpha = min(1 - 1/10, 0.999) = 0.9
    trainer.task.update_teacher(trainer.iteration)
    for t, b, s in zip(trainer.teacher.parameters(), before, trainer.model.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    trainer.iteration = 0  # alpha = 0: the teacher becomes a copy of the student
    trainer.task.update_teacher(trainer.iteration)
    for t, s in zip(trainer.teacher.parameters(), trainer.model.parameters()):
        assert torch.equal(t, s)


def test_class_mix_masks_take_half_the_classes():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 3], [4, 4, 4, 4]]])
    mask = augment.class_mix_masks(labels, gen, per="image")
    chosen = torch.unique(labels[mask])
    assert len(chosen) == 3  # 5 classes present: half, rounded up
    assert not mask[labels == 255].any()
    assert torch.equal(mask, torch.isin(labels, chosen))
    src = torch.zeros(1, 3, 3, 4)
    tgt = torch.ones(1, 3, 3, 4)
    mixed = augment.mix(mask, src, tgt)
    assert torch.equal(mixed[0, 0] == 0, mask[0])
    assert torch.equal(augment.mix(mask, labels, torch.full_like(labels, 7)), torch.where(mask, labels, 7))


def test_pseudo_labels_and_weights():
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1, :2] = 10.0  # top half confident in class 1
    labels, w = augment.pseudo_labels(logits, (4, 4), threshold=0.968, mode="dacs")
    assert torch.equal(labels[0, :2], torch.ones(2, 4, dtype=torch.long))
    assert torch.allclose(w, torch.full_like(w, 0.5))  # half the pixels are confident
    labels, w = augment.pseudo_labels(logits, (4, 4), threshold=0.968, mode="pixel", ignore_top=1)
    assert w[0, 0].sum() == 0 and w[0, 1].sum() == 4 and w[0, 2:].sum() == 0


def test_estimator_is_fed_teacher_source_embeddings_only(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    seen = []
    original = trainer.sepico.estimator.update
    monkeypatch.setattr(trainer.sepico.estimator, "update",
                        lambda f, l, **k: (seen.append((f.clone(), l.tensor.clone())), original(f, l, **k)))
    probe = Trainer(tiny_config(), tmp_path / "probe", progress=False)
    images, labels = probe.source.next()
    trainer.step()
    assert len(seen) == 1
    feats, lbl = seen[0]
    with torch.no_grad():  # the teacher as the step ran it: training-mode BatchNorm, dropout off
        _, emb = trainer.teacher(normalize(images))
    # The teacher was updated (EMA) at the start of the step, before embedding; its parameters
    # have not changed since (the optimiser only moves the student), and its BatchNorm layers
    # normalise with the batch's statistics, so embedding again reproduces it.
    torch.testing.assert_close(feats, emb)  # the map as the projection head emits it
    assert lbl.shape == (emb.shape[0], *emb.shape[2:])


def test_learning_rate_schedule():
    assert lr_factor(0, 100, 10, 1e-6, 1.0) == pytest.approx(1e-6)
    assert lr_factor(5, 100, 10, 1e-6, 1.0) == pytest.approx(0.95 * (0.5 + 0.5e-6))
    assert lr_factor(10, 100, 10, 1e-6, 1.0) == pytest.approx(0.9)
    assert lr_factor(100, 100, 10, 1e-6, 1.0) == 0.0


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optim.lr=fast", "config field 'optim.lr' must be float"),
    ("method.variant=magic", "config field 'method.variant' must be one of"),
    ("method.covariance=none", "config field 'method.covariance' must be one of diag, full, got 'none'"),
    ("train.max_iters=0", "config field 'train.max_iters' must be > 0"),
    ("data.source=gta6", "config field 'data.source' must be one of"),
    ("model.pretrained=/no/such/file.pth", "config field 'model.pretrained': no file"),
])
def test_bad_configuration_is_one_clear_line(tmp_path, override, message):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[train]\nmax_iters = 2\n')
    proc = cli("train", cfg_file, "--set", override, "--set", f"train.run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert message in proc.stderr


def test_config_file_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[optim]\nlr = 0.01\nbetas = [0.8, 0.9]\n[method]\nvariant = "proto"\n')
    cfg = load_config(cfg_file, ["method.temperature=0.5", "train.amp=false"])
    assert cfg.name == "c" and cfg.optim.lr == 0.01 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.method.variant == "proto" and cfg.method.temperature == 0.5 and cfg.train.amp is False
    with pytest.raises(ConfigError, match="--set takes section.field=value"):
        apply_overrides(Config(), ["optim.lr"])


def test_cli_eval_and_info(tmp_path):
    trainer = Trainer(tiny_config("source_only"), tmp_path, progress=False)
    trainer.step()
    ckpt = trainer.save_checkpoint()
    out = tmp_path / "eval.json"
    proc = cli("eval", ckpt, "--out", out)
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(out.read_text())
    assert result["iteration"] == 1 and 0.0 <= result["miou"] <= 100.0
    from sepico.data.cityscapes import CLASS_NAMES

    assert result["command"] == "sepico eval"
    assert list(result["class_ids"].values()) == list(trainer.data.eval_classes)  # ids beside the names
    assert list(result["iou"]) == [CLASS_NAMES[c] for c in trainer.data.eval_classes]
    direct = trainer.evaluate()
    assert result["miou"] == pytest.approx(direct["miou"])
    with kernels.backend("torch"):
        info = cli("info")
    assert info.returncode == 0 and "kernel_backend_requested   torch" in info.stdout
    import sepico

    assert f"sepico                     {sepico.__version__}" in info.stdout
    missing = cli("eval", tmp_path / "none.pt")
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr


def test_deterministic_switch_sets_the_torch_flags(tmp_path):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    try:
        Trainer(tiny_config(), tmp_path / "plain", progress=False)
        assert not torch.are_deterministic_algorithms_enabled()
        cfg = tiny_config()
        cfg.train.deterministic = True
        Trainer(cfg, tmp_path / "det", progress=False)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def test_set_takes_toml_values_and_the_plain_form():
    cfg = apply_overrides(Config(), ['data.size=[32, 64]', 'name="my run"', "train.amp=true",
                                     "optim.betas=[0.8, 0.9]", "method.momentum=none", "train.seed=3"])
    assert cfg.data.size == (32, 64) and cfg.name == "my run" and cfg.train.amp is True
    assert cfg.optim.betas == (0.8, 0.9) and cfg.method.momentum is None and cfg.train.seed == 3
    assert apply_overrides(Config(), ["data.size=32,64"]).data.size == (32, 64)
    with pytest.raises(ConfigError, match="is not a TOML value"):
        apply_overrides(Config(), ["data.size=[32,"])

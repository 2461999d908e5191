"""Runs that run no foreign code and lose no work: checkpoint reading, run folders, resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sepico import ablation
from sepico.train import Trainer
from sepico.train.checkpoint import CheckpointError, read_checkpoint
from tests.helpers import assert_same, cli, tiny_config, trainer_state

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class _Payload:
    """Pickles to a call that creates a marker file when the pickle is loaded with full unpickling."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil_checkpoint(path: Path, marker: Path, cfg) -> Path:
    torch.save({"iteration": 2, "config": cfg.to_dict(), "model": _Payload(marker)}, path)
    return path


def _config_file(tmp_path, **train) -> Path:
    lines = ['name = "tiny"', "[data]", "size = [32, 64]", "train_length = 8", "test_length = 2",
             "[model]", 'name = "convnet_small"', "proj_dim = 8", "[method]", 'variant = "dist"',
             "start_distribution_iter = 1", "[train]", "batch_size = 2", "log_interval = 1",
             *(f"{k} = {v}" for k, v in {"max_iters": 4, "checkpoint_interval": 2, **train}.items())]
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_crafted_checkpoint_runs_nothing_in_eval_resume_and_ablate(tmp_path):
    marker = tmp_path / "marker"
    cfg = tiny_config()
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker, cfg)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: it holds more than tensors"):
        read_checkpoint(evil)
    proc = cli("eval", evil)
    assert proc.returncode == 2 and "refused" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # --resume: the run's only checkpoint is the crafted one.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    _evil_checkpoint(run / "ckpt_00000002.pt", marker, cfg)
    proc = cli("train", "--resume", run, "--no-progress")
    assert proc.returncode == 2 and "refused" in proc.stderr and "no checkpoint in" in proc.stderr
    # sepico ablate resumes an interrupted run from its checkpoint.
    out = tmp_path / "ablation"
    first = ablation.plan([0], quick=True)[0]
    (out / "runs" / first.name).mkdir(parents=True)
    _evil_checkpoint(out / "runs" / first.name / "ckpt_00000001.pt", marker, cfg)
    with pytest.raises(CheckpointError):
        ablation.execute(first, ablation.DEFAULT_CONFIG, out, 2, [], False)
    assert not marker.exists()


def test_checkpoints_we_write_load_without_full_unpickling(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    trainer.step()
    state = torch.load(trainer.save_checkpoint(), weights_only=True)
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)


def test_a_used_run_folder_is_refused_unless_resumed_or_overwritten(tmp_path):
    config = _config_file(tmp_path)
    run = tmp_path / "run"
    assert cli("train", config, "--no-progress", "--set", f"train.run_dir={run}").returncode == 0
    before = (run / "metrics.jsonl").read_text()
    again = cli("train", config, "--no-progress", "--set", f"train.run_dir={run}")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "already holds a run" in again.stderr and "--resume" in again.stderr
    assert (run / "metrics.jsonl").read_text() == before and (run / "ckpt_00000004.pt").exists()
    over = cli("train", config, "--no-progress", "--overwrite", "--set", f"train.run_dir={run}",
                "--set", "train.max_iters=2")
    assert over.returncode == 0, over.stderr
    assert "--overwrite: removing" in over.stderr and "ckpt_00000004.pt" in over.stderr
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == ["ckpt_00000002.pt"]
    assert [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss_ce" in line] == [1, 2]


def test_resume_takes_the_stored_configuration(tmp_path):
    config = _config_file(tmp_path, max_iters=2)
    run = tmp_path / "run"
    assert cli("train", config, "--no-progress", "--set", f"train.run_dir={run}").returncode == 0
    bad = cli("train", "--resume", run, "--set", "data.size=64,64", "--set", "train.max_iters=4")
    assert bad.returncode == 2 and "--set data.size would change what the run already computed" in bad.stderr
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace("proj_dim = 8", "proj_dim = 16").replace(
        "size = [32, 64]", "size = [32, 32]"))
    diff = cli("train", other, "--resume", run)
    assert diff.returncode == 2 and "data.size, model.proj_dim" in diff.stderr
    good = cli("train", "--resume", run, "--no-progress", "--set", "train.max_iters=3")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout.strip().splitlines()[-1])["iteration"] == 3
    stored = json.loads((run / "config.json").read_text())
    assert stored["data"]["size"] == [32, 64] and stored["train"]["max_iters"] == 3


@pytest.mark.system
def test_resume_recovers_from_a_damaged_latest_checkpoint_metrics_line_and_temporary(tmp_path, capsys):
    cfg = tiny_config()
    cfg.train.max_iters, cfg.train.checkpoint_interval, cfg.train.keep_checkpoints = 4, 1, 5
    straight = Trainer(cfg, tmp_path / "straight", progress=False)
    straight.train()
    run = tmp_path / "run"
    first = Trainer(cfg, run, progress=False)
    lines = []
    for _ in range(3):  # checkpoints 1, 2, 3 and their metrics lines, as train() writes them
        lines.append(json.dumps({"iteration": first.iteration + 1, **first.step()}))
        first.save_checkpoint()
    (run / "ckpt_00000003.pt").write_bytes((run / "ckpt_00000003.pt").read_bytes()[:1000])  # truncated
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:20])  # a kill mid-write
    (run / ".ckpt_00000004.pt.tmp").write_bytes(b"\0" * 100)  # a kill during a save
    capsys.readouterr()
    resumed = Trainer(cfg, run, resume=True, progress=False)
    err = capsys.readouterr().err
    assert resumed.iteration == 2 and "skipping" in err and "ckpt_00000003.pt" in err
    assert ".ckpt_00000004.pt.tmp" in err and not (run / ".ckpt_00000004.pt.tmp").exists()
    resumed.train()
    assert "dropping a partial last line" in capsys.readouterr().err
    assert_same(trainer_state(straight), trainer_state(resumed))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines if "loss_ce" in line] == [1, 2, 3, 4]


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, os.urandom(4096)])
def test_unreadable_checkpoint_files_are_named_in_one_line(tmp_path, content):
    bad = tmp_path / "ckpt_00000001.pt"
    bad.write_bytes(content)
    proc = cli("eval", bad)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "ckpt_00000001.pt: not a readable checkpoint" in proc.stderr
    folder = cli("eval", tmp_path)
    assert folder.returncode == 2 and "is a folder" in folder.stderr


@pytest.mark.system
def test_sigkill_at_random_moments_and_resume_ends_bit_identical(tmp_path):
    """Fault injection: a run is killed with SIGKILL three times (twice while a checkpoint is being
    written, once at a random moment) and resumed each time; it ends where an uninterrupted run
    ends, bit for bit, with one metrics line per iteration."""
    import random
    import signal
    import time

    config = tmp_path / "kill.toml"
    config.write_text(
        'name = "kill"\n[data]\nsize = [64, 128]\ntrain_length = 12\ntest_length = 2\n'
        '[model]\nname = "deeplabv2_r18"\nproj_dim = 16\nhead_channels = 32\n'
        '[method]\nvariant = "dist"\nstart_distribution_iter = 1\n'
        '[train]\nmax_iters = 6\nbatch_size = 2\ncheckpoint_interval = 1\nkeep_checkpoints = 2\nlog_interval = 1\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "sepico.cli", "train", "--no-progress"]
    straight = tmp_path / "straight"
    done = subprocess.run(base + [str(config), "--set", f"train.run_dir={straight}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    run, rng, kills = tmp_path / "run", random.Random(0), []
    plan = ["during_save", "random", "during_save"]
    for _ in range(12):  # launches
        if any(run.glob("ckpt_*.pt")):
            cmd = base + ["--resume", str(run)]
        else:  # killed before its first checkpoint: start again
            cmd = base + [str(config), "--overwrite", "--set", f"train.run_dir={run}"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if len(kills) < len(plan):
            how, deadline = plan[len(kills)], time.time() + (rng.uniform(2.0, 6.0) if plan[len(kills)] == "random" else 300)
            while proc.poll() is None and time.time() < deadline:
                if how == "during_save" and any(run.glob(".ckpt_*.tmp")):
                    break
                time.sleep(0.002)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills.append((how, sorted(p.name for p in run.iterdir())))
                continue
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        if len(kills) == len(plan):
            break
    assert [how for how, _ in kills] == plan, kills
    assert any(name.endswith(".tmp") for _, names in kills for name in names)  # killed mid-save
    a = torch.load(straight / "ckpt_00000006.pt", weights_only=True)
    b = torch.load(run / "ckpt_00000006.pt", weights_only=True)
    for key in ("model", "teacher", "estimator", "iteration"):
        assert_same(a[key], b[key], key)
    assert_same(a["optimizer"]["state"], b["optimizer"]["state"], "optimizer")
    iterations = [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()
                  if "loss_ce" in line]
    assert iterations == list(range(1, 7))
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("override,message", [
    ("optim.lr=nan", "'optim.lr' must be a finite number"),
    ("optim.lr=inf", "'optim.lr' must be a finite number"),
    ("method.temperature=nan", "'method.temperature' must be a finite number"),
    ("optim.betas=1.5,0.9", "'optim.betas' must be in [0, 1)"),
    ("model.num_classes=5", "'model.num_classes' must be > 13 for the synthetic scenes"),
    ("data.size=0,0", "'data.size' must be (H, W) of integers > 0"),
    ("data.train_length=0", "'data.train_length' must be > 0"),
    ("method.pseudo_threshold=1.5", "'method.pseudo_threshold' must be in [0, 1]"),
    ("optim.weight_decay=-1", "'optim.weight_decay' must be >= 0"),
])
def test_numbers_out_of_range_are_one_line_errors(tmp_path, override, message):
    proc = cli("train", _config_file(tmp_path), "--set", override, "--set", f"train.run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert message in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_non_finite_loss_stops_with_the_last_finite_state_or_is_skipped(tmp_path, monkeypatch, policy):
    from sepico.errors import NonFiniteLoss

    cfg = tiny_config()
    cfg.train.max_iters, cfg.train.on_nonfinite = 3, policy
    trainer = Trainer(cfg, tmp_path, progress=False)
    source_ce = trainer.task.source_ce
    monkeypatch.setattr(trainer.task, "source_ce", lambda logits, label: source_ce(logits, label) * (
        float("nan") if trainer.iteration == 1 else 1.0))
    trainer.step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    if policy == "stop":
        with pytest.raises(NonFiniteLoss, match=r"non-finite loss at iteration 2 \(loss_ce = nan\).*ckpt_00000001"):
            trainer.train()
        state = torch.load(tmp_path / "ckpt_00000001.pt", weights_only=True)
        params = dict(trainer.model.named_parameters())
        assert all(torch.equal(state["model"][k], before[k]) for k in params)  # no update from the NaN step
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
        return
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "loss_ce" in line]
    assert [r.get("skipped", 0) for r in lines] == [1, 0]  # iteration 2 skipped, 3 trained
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("env,args,message", [
    ({"KERNELS_BACKEND": "bogus"}, ["info"], "KERNELS_BACKEND must be one of"),
    ({"KERNELS_BACKEND": "triton", "TRITON_INTERPRET": "0"}, ["info"], "KERNELS_BACKEND=triton needs a CUDA device"),
    ({}, ["eval", "x.pt", "--batch-size", "0"], "--batch-size must be >= 1"),
    ({}, ["eval", "x.pt", "--out", "/no/such/folder/result.json"], "--out: no folder"),
])
def test_cli_mistakes_are_one_line(tmp_path, env, args, message):
    proc = subprocess.run([sys.executable, "-m", "sepico.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert message in proc.stderr


def test_a_damaged_image_met_mid_run_stops_with_a_checkpoint(tmp_path):
    from sepico.errors import ConfigError
    from tests.helpers import make_cityscapes, make_gta5, real_config

    gta5, cityscapes = make_gta5(tmp_path / "gta5"), make_cityscapes(tmp_path / "cityscapes")
    cfg = real_config(tmp_path, "gta5", gta5, "cityscapes", cityscapes)
    cfg.train.max_iters = 3
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.step()
    for image in (gta5 / "images").iterdir():
        image.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"cannot read the image.*stopped at iteration 1; checkpoint .*ckpt_00000001"):
        trainer.train()
    assert torch.load(tmp_path / "run" / "ckpt_00000001.pt", weights_only=True)["iteration"] == 1

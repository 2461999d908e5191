"""Run cards: a tiny synthetic run writes one with every field filled; its data manifest follows the
file list (the synthetic scene set, a real-layout tree); ``sepico card`` shows a changed seed and a
changed weight file, settings before results; eval and ablate write theirs; the commit is read
from ``.git`` (a folder, a worktree's gitdir file, packed refs) without running git."""
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch

from sepico import ablation
from sepico.card import CARD_FORMAT, dataset_manifest, git_commit, read_card
from sepico.data.cityscapes import CLASS_NAMES
from sepico.data.real import SegmentationFolder
from sepico.data.synthetic import SyntheticStreets
from sepico.errors import ConfigError
from sepico.train.checkpoint import atomic_save
from sepico.train.config import load_config
from sepico.train.data import TrainingView
from sepico.train.trainer import build_run_model
from tests.helpers import cli, make_gta5, tiny_toml, write_png

HEX64 = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four tiny runs: A (seed 0, weight file 1), B (seed 1), C (weight file 2), D (another scene set)."""
    tmp = tmp_path_factory.mktemp("cards")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = tiny_toml(tmp)
    model = build_run_model(load_config(config).model)
    weights = [tmp / "w1.pt", tmp / "w2.pt"]
    atomic_save({"model": model.state_dict()}, weights[0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    next(v for v in state.values() if v.is_floating_point()).add_(0.5)
    atomic_save({"model": state}, weights[1])
    folders = {}
    for name, seed, w, scenes in (("A", 0, weights[0], 8), ("B", 1, weights[0], 8), ("C", 0, weights[1], 8),
                                  ("D", 0, weights[0], 9)):
        folders[name] = tmp / name
        code, _, err = cli("train", config, "--no-progress", "--set", f"train.run_dir={folders[name]}",
                           "--set", f"train.seed={seed}", "--set", f"model.init_checkpoint={w}",
                           "--set", f"data.train_length={scenes}")
        assert code == 0, err
    torch.set_num_threads(threads)
    return folders | {"weights": weights, "tmp": tmp}


def _leaves(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _leaves(item, f"{path}[{k}]")
    else:
        yield path, value


def test_a_run_card_has_every_field_filled(runs):
    card = read_card(runs["A"])
    assert card["format"] == CARD_FORMAT and card["command"] == "sepico train"
    assert card == json.loads((runs["A"] / "card.json").read_text())
    blanks = [k for k, v in _leaves({s: v for s, v in card.items() if s != "config"})
              if v is None or v == "" or (isinstance(v, str) and "unknown" in v)]
    assert not blanks, blanks
    code = card["code"]
    assert re.fullmatch(r"[0-9a-f]{40}", code["commit"]) or code["commit"].startswith("not a git checkout")
    env = card["environment"]
    assert env["torch"] == torch.__version__ and env["torch_threads"] == 1 and env["device"].startswith("cpu")
    assert card["config"]["train"]["seed"] == 0 and card["seeds"] == {"train.seed": 0, "data.seed": 0}
    start = card["weights"]["model.init_checkpoint"]
    assert start["sha256"] == hashlib.sha256(runs["weights"][0].read_bytes()).hexdigest()
    assert card["weights"]["model.pretrained"].startswith("not set")
    manifest = card["data"]["manifest"]
    assert set(manifest) == {"source", "target", "target_test", "sha256"}
    assert all(HEX64.fullmatch(m["sha256"]) for m in (manifest["source"], manifest["target"], manifest["target_test"]))
    assert manifest["source"]["synthetic scenes"] == {"domain": "source", "split": "train", "size": [32, 64],
                                                      "length": 8, "seed": 0}
    assert card["data"]["check"]["source"]["dataset"] == "synthetic"
    assert card["run"] | {"folder": ""} == {"folder": "", "iterations": 2, "max_iters": 2, "started_at_iteration": 0,
                                            "processes": 1}
    m = card["measurements"]
    assert m["wall_time_s"] > 0 and m["peak_memory"]["bytes"] > 2**20
    result = card["result"]
    eval_json = json.loads((runs["A"] / "eval.json").read_text())
    assert result["miou"] == pytest.approx(eval_json["miou"]) and result["classes"] == 9
    assert list(result["iou"]) == [CLASS_NAMES[int(c)] for c in eval_json["iou"]]
    page = (runs["A"] / "card.md").read_text()
    assert page.startswith(f"<!-- {CARD_FORMAT} -->") and "mIoU" in page and start["sha256"] in page


def test_sepico_card_shows_a_changed_seed_settings_first(runs):
    code, out, err = cli("card", runs["A"], runs["B"])
    assert code == 0, err
    lines = out.splitlines()
    settings = lines.index(next(line for line in lines if line.startswith("settings that differ")))
    results = lines.index(next(line for line in lines if line.startswith("results")))
    assert settings < results
    changed = [line.split()[0] for line in lines[settings + 1:results]]
    assert changed == ["config.train.seed"], out  # the run's name, folder and creation time are not compared
    assert re.search(r"config\.train\.seed\s+A 0\s+B 1", out)


def test_sepico_card_shows_a_changed_weight_file(runs):
    code, out, err = cli("card", runs["A"] / "card.json", runs["C"])
    assert code == 0, err
    hashes = [hashlib.sha256(w.read_bytes()).hexdigest() for w in runs["weights"]]
    assert re.search(rf"weights\.model\.init_checkpoint\.sha256\s+A {hashes[0]}\s+B {hashes[1]}", out), out
    assert "config.model.init_checkpoint" in out and "config.train.seed" not in out


def test_a_run_on_another_scene_set_has_another_manifest(runs):
    a, d = read_card(runs["A"])["data"]["manifest"], read_card(runs["D"])["data"]["manifest"]
    assert a["source"]["sha256"] != d["source"]["sha256"] and a["target"]["sha256"] != d["target"]["sha256"]
    assert a["target_test"] == d["target_test"] and a["sha256"] != d["sha256"]
    code, out, _ = cli("card", runs["A"], runs["D"])
    assert code == 0 and re.search(rf"data\.manifest\.source\.sha256\s+A {a['source']['sha256']}", out), out


def test_the_manifest_follows_the_file_list(tmp_path):
    scenes = dict(domain="source", split="train", size=(32, 64), length=8)
    assert dataset_manifest(SyntheticStreets(**scenes, seed=0)) == dataset_manifest(SyntheticStreets(**scenes, seed=0))
    assert (dataset_manifest(SyntheticStreets(**scenes, seed=0))["sha256"]
            != dataset_manifest(SyntheticStreets(**scenes, seed=1))["sha256"])
    root = make_gta5(tmp_path / "gta5")
    shutil.copytree(root, tmp_path / "elsewhere")

    def manifest(where):
        return dataset_manifest(TrainingView(SegmentationFolder("gta5", where), crop=(16, 32)))

    before = manifest(root)
    assert before["files"] == 8 and HEX64.fullmatch(before["sha256"])
    assert manifest(tmp_path / "elsewhere")["sha256"] == before["sha256"]  # paths relative to the dataset folder
    write_png(root / "labels" / "00002.png", np.full((40, 72), 7, np.uint8))  # one training file changes
    after = manifest(root)
    assert after["sha256"] != before["sha256"] and after["bytes"] != before["bytes"]


def test_cards_that_cannot_be_read_are_one_line(tmp_path, runs):
    (tmp_path / "plain.json").write_text('{"miou": 3}')
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "empty").mkdir()
    for bad, words in ((tmp_path / "empty", "no card.json"), (tmp_path / "plain.json", "not a sepico run card"),
                       (tmp_path / "text.json", "not JSON"), (tmp_path / "nothing", "no such file")):
        code, out, err = cli("card", runs["A"], bad)
        assert code == 2 and not out and len(err.strip().splitlines()) == 1 and words in err, err
    with pytest.raises(ConfigError, match="not a sepico run card"):
        read_card(tmp_path / "plain.json")


def test_eval_writes_its_card_beside_the_result(runs, tmp_path):
    ckpt = runs["A"] / "ckpt_00000002.pt"
    out = tmp_path / "r.json"
    for _ in range(2):  # the second run replaces the card of the first
        code, _, err = cli("eval", ckpt, "--no-progress", "--out", out)
        assert code == 0, err
    card = read_card(tmp_path / "r.card.json")
    assert card["command"] == "sepico eval" and (tmp_path / "r.card.md").is_file()
    assert card["weights"]["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert card["result"]["miou"] == pytest.approx(json.loads(out.read_text())["miou"])
    assert set(card["data"]["manifest"]) == {"target_test", "sha256"}


def test_ablate_writes_a_card_of_the_whole_ablation(tmp_path, monkeypatch):
    config = tiny_toml(tmp_path, name="demo")
    one = ablation.plan([0], quick=True)[0]
    monkeypatch.setattr(ablation, "plan", lambda *args, **kwargs: [one])
    ablation.ablate(seeds=(0,), quick=True, iters=2, out=tmp_path / "ab", config=config, progress=False)
    card = read_card(tmp_path / "ab")
    assert card["command"] == "sepico ablate" and card["run"]["seeds"] == [0] and card["run"]["runs"] == 1
    assert list(card["result"]["variants"]) == [one.variant] and card["config"]["train"]["max_iters"] == 2
    assert read_card(tmp_path / "ab" / "runs" / one.name)["command"] == "sepico train"


def test_the_commit_is_read_from_the_git_files(tmp_path):
    sha, other = "a" * 40, "b" * 40
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "refs" / "heads" / "main").write_text(sha + "\n")
    assert git_commit(repo) == sha
    (repo / ".git" / "refs" / "heads" / "main").unlink()
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert git_commit(repo) == sha
    # a worktree: .git is a file naming its gitdir, whose commondir holds the branches
    tree = tmp_path / "tree"
    gitdir = repo / ".git" / "worktrees" / "tree"
    gitdir.mkdir(parents=True)
    (tree).mkdir()
    (tree / ".git").write_text(f"gitdir: {gitdir}\n")
    (gitdir / "HEAD").write_text("ref: refs/heads/feature\n")
    (gitdir / "commondir").write_text("../..\n")
    (repo / ".git" / "refs" / "heads" / "feature").write_text(other + "\n")
    assert git_commit(tree) == other
    (gitdir / "HEAD").write_text(sha + "\n")  # detached
    assert git_commit(tree) == sha
    assert git_commit(tmp_path / "plain") == "not a git checkout"

"""What a newcomer meets first: the version, help on every argument, what a run prints, the
predict options mmseg's image demo has, and the links of the pages."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sepico
from sepico.cli import build_parser
from tests.helpers import cli, tiny_toml, write_image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_version_and_info_name_sepicos_version():
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"sepico {sepico.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", sepico.__version__)
    setup = (ROOT / "setup.py").read_text()
    assert "version=VERSION" in setup and "sepico/__init__.py" in setup  # one place holds the version


def _actions(parser, where="sepico"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{where} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield where, action


def test_every_argument_has_help_text():
    missing = [f"{where} {action.option_strings or action.dest}" for where, action in _actions(build_parser())
               if not action.help]
    assert not missing, missing


@pytest.mark.parametrize("script", ["profile_loss", "memory_losses", "train_memory", "train_gpu", "gpu_check"])
def test_bench_scripts_print_help_instead_of_working(script, monkeypatch, capsys):
    import importlib

    module = importlib.import_module(f"bench.{script}")
    monkeypatch.setattr(sys, "argv", [f"python -m bench.{script}", "--help"])
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


def test_a_run_says_where_it_goes_logs_every_interval_and_prints_the_table(tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("train", tiny_toml(tmp_path, max_iters=4, log_interval=2, eval_interval=2), "--no-progress",
                         "--set", f"train.run_dir={run}")
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith(f"sepico train: run folder {run}")
    logs = [line for line in lines if line.startswith("iter ")]
    assert [line.split()[1] for line in logs] == ["2/4", "4/4"]  # every log_interval, without a progress bar
    for word in ("loss_ce", "lr", "s/it", "mem", "eta"):
        assert all(word in line for line in logs), logs
    assert sum(line.startswith("evaluation at iteration") for line in lines) == 2  # at 2 and at the end
    assert sum(line.startswith("mIoU ") for line in lines) == 2
    assert json.loads(out)["iteration"] == 4


def test_predict_palette_and_opacity(tmp_path, weights):
    pixels = np.asarray(Image.open(write_image(tmp_path / "in" / "a.png", 24, 30, 4)).convert("RGB"))
    colours = [[(7 * c) % 256, (31 * c) % 256, (101 * c) % 256] for c in range(19)]
    (tmp_path / "colours.json").write_text(json.dumps(colours))
    code, _, err = cli("predict", weights, tmp_path / "in", "--out", tmp_path / "out", "--overlay", "--trainids",
                       "--palette", tmp_path / "colours.json", "--opacity", "0.3", "--no-progress")
    assert code == 0, err
    ids = np.asarray(Image.open(tmp_path / "out" / "a_labelTrainIds.png"))
    colour = np.asarray(Image.open(tmp_path / "out" / "a_color.png"))
    np.testing.assert_array_equal(colour, np.asarray(colours, dtype=np.uint8)[ids])
    overlay = np.asarray(Image.open(tmp_path / "out" / "a_overlay.png"))
    # mmseg's show_result (lhoyer/DAFormer mmseg/models/segmentors/base.py l. 246-247): a float64
    # blend cut to uint8, not rounded.
    np.testing.assert_array_equal(overlay, (pixels * 0.7 + colour * 0.3).astype(np.uint8))
    assert not np.array_equal(overlay, np.rint(pixels * 0.7 + colour * 0.3).astype(np.uint8))


def test_every_local_link_of_the_pages_resolves():
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "kernels" / "README.md"]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken

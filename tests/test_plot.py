"""curves.png from a run's metrics.jsonl: the figure's data, the file, its errors, and a run drawing it."""
import json

import pytest
from PIL import Image

from sepico.plot import curves_figure, plot_run, read_metrics
from sepico.train import Trainer
from sepico.errors import ConfigError
from tests.helpers import tiny_config

EVALS = [{"iteration": 4, "miou": 12.5}, {"iteration": 8, "miou": 20.25}]


def _training(it, **extra):
    return {"iteration": it, "it_per_s": 1.5 + it / 10, "loss_ce": 2.0 / it, "loss_cl_src": 1.0 / it,
            "loss_mix": 0.5 / it, "pseudo_weight": 0.1 * it, "lr": 1e-3 * (1 - it / 10), **extra}


def _records():
    train = [_training(it) for it in range(1, 9)]
    return train[:4] + EVALS[:1] + train[4:] + EVALS[1:]


def _write(run, records, tail=""):
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return run


def _panels(fig):
    return {ax.get_title(loc="left"): ax for ax in fig.axes}


def _plotted(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_the_figure_draws_every_loss_and_the_evaluations():
    fig = curves_figure(_records())
    panels = _panels(fig)
    assert list(panels) == ["losses", "target mIoU (%)", "learning rate", "pseudo weight", "speed (it/s)"]
    losses = _plotted(panels["losses"])
    assert sorted(losses) == ["loss_ce", "loss_cl_src", "loss_mix"]
    assert losses["loss_mix"] == (list(range(1, 9)), [0.5 / it for it in range(1, 9)])
    assert panels["losses"].get_yscale() == "log"
    miou = panels["target mIoU (%)"].get_lines()
    assert len(miou) == 1 and miou[0].get_marker() == "o"
    assert _plotted(panels["target mIoU (%)"])["miou"] == ([4, 8], [12.5, 20.25])
    for title, key in (("learning rate", "lr"), ("pseudo weight", "pseudo_weight"), ("speed (it/s)", "it_per_s")):
        xs, ys = _plotted(panels[title])[key]
        assert xs == list(range(1, 9)) and ys == [_training(it)[key] for it in xs]


def test_panels_without_data_say_so_and_non_positive_losses_stay_linear():
    records = [{"iteration": 1, "loss_ce": 0.5, "loss_cl_src": -0.25, "lr": 1e-3, "it_per_s": 2.0}]
    panels = _panels(curves_figure(records))
    assert panels["losses"].get_yscale() == "linear"
    assert [t.get_text() for t in panels["target mIoU (%)"].texts] == ["no evaluation yet"]
    assert [t.get_text() for t in panels["pseudo weight"].texts] == ["not logged"]
    assert not panels["target mIoU (%)"].get_lines() and not panels["pseudo weight"].get_lines()
    assert panels["learning rate"].get_lines()[0].get_marker() == "o"  # a lone point stays visible


def test_plot_run_writes_a_png_atomically(tmp_path):
    run = _write(tmp_path / "run", _records())
    path = plot_run(run)
    assert path == run / "curves.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 400 <= width <= 2000 and 600 <= height <= 3000
    assert path.stat().st_size > 10_000  # five panels of lines and text, not a blank canvas
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.jsonl"]
    plot_run(run)  # drawn again over the old one
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_a_failed_write_leaves_the_old_png_and_no_temporary(tmp_path, monkeypatch):
    run = _write(tmp_path / "run", _records())
    before = plot_run(run).read_bytes()
    monkeypatch.setattr("matplotlib.backends.backend_agg.FigureCanvasAgg.print_png",
                        lambda self, f, **kw: (f.write(b"\x89PNG half"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        plot_run(run)
    assert (run / "curves.png").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_a_partial_last_line_is_skipped(tmp_path):
    run = _write(tmp_path / "run", _records(), tail=json.dumps(_training(9))[:25])
    assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl")][-1] == 8
    assert plot_run(run).is_file()


def test_non_finite_values_are_left_out(tmp_path):
    records = _records() + [_training(9, loss_ce=float("nan"), lr=float("inf"), skipped=1),
                            {"iteration": 10, "miou": float("nan")}]
    run = _write(tmp_path / "run", records)  # json writes NaN / Infinity, as the trainer's lines do
    assert "NaN" in (run / "metrics.jsonl").read_text()
    panels = _panels(curves_figure(read_metrics(run / "metrics.jsonl")))
    assert _plotted(panels["losses"])["loss_ce"][0] == list(range(1, 9))
    assert _plotted(panels["losses"])["loss_mix"][0] == list(range(1, 10))
    assert _plotted(panels["learning rate"])["lr"][0] == list(range(1, 9))
    assert _plotted(panels["target mIoU (%)"])["miou"] == ([4, 8], [12.5, 20.25])
    assert plot_run(run).is_file()


@pytest.mark.parametrize("make,message", [
    (lambda run: None, r"run: no such run folder"),
    (lambda run: run.mkdir(), r"metrics\.jsonl: no such file"),
    (lambda run: _write(run, []), r"metrics\.jsonl: no metrics records"),
    (lambda run: _write(run, [], tail="\n\n"), r"metrics\.jsonl: no metrics records"),
    (lambda run: _write(run, _records()[:2], tail="{oops\n" + json.dumps(_training(3)) + "\n"),
     r"metrics\.jsonl: line 3 is not JSON$"),
    (lambda run: _write(run, [[1, 2]]), r"metrics\.jsonl: line 1 is not a JSON object"),
])
def test_errors_name_the_file_in_one_line(tmp_path, make, message):
    run = tmp_path / "run"
    make(run)
    with pytest.raises(ConfigError, match=message) as err:
        plot_run(run)
    assert "\n" not in str(err.value) and str(run) in str(err.value)
    assert not (run / "curves.png").exists()


@pytest.mark.usefixtures("one_thread")  # tests/conftest.py
def test_a_training_run_draws_its_curves(tmp_path, capsys):
    cfg = tiny_config("dist", "convnet_small")
    cfg.data.size, cfg.train.max_iters, cfg.train.eval_interval = [32, 64], 4, 2
    drawn = []
    Trainer(cfg, tmp_path, progress=False, draw_curves=lambda run_dir: drawn.append(plot_run(run_dir, force=True))).train()
    assert drawn == [tmp_path / "curves.png"] * 3  # after the evaluations at 2 and 4, and the final one
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG"
    panels = _panels(curves_figure(read_metrics(tmp_path / "metrics.jsonl")))
    assert _plotted(panels["target mIoU (%)"])["miou"][0] == [2, 4]
    assert {"loss_ce", "loss_cl_src", "loss_cl_tgt", "loss_mix"} <= set(_plotted(panels["losses"]))
    assert not list(tmp_path.glob(".*.tmp"))
    # A plot that fails is one warning line, in stderr and train.log; the run finishes.
    # An interval that does not divide max_iters: the final evaluation is a point of its own.
    capsys.readouterr()
    cfg.train.eval_interval = 3
    result = Trainer(cfg, tmp_path / "again", progress=False, draw_curves=lambda run_dir: 1 / 0).train()
    assert (tmp_path / "again" / "eval.json").is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "curves.png not drawn" in line]
    assert len(warnings) == 2 and "division by zero" in warnings[0]
    assert (tmp_path / "again" / "train.log").read_text().count("curves.png not drawn") == 2
    evals = [r for r in read_metrics(tmp_path / "again" / "metrics.jsonl") if "miou" in r]
    assert [r["iteration"] for r in evals] == [3, 4] and evals[-1]["miou"] == result["miou"]

"""A training run's curves: ``RUN_DIR/metrics.jsonl`` drawn to ``RUN_DIR/curves.png``.

Training lines hold ``iteration``, ``it_per_s``, ``lr``, ``pseudo_weight`` and one ``loss*`` key per
loss the method variant forms; evaluation lines hold ``iteration`` and ``miou``. The figure is built
on a bare `Figure` with the Agg canvas, so no pyplot state or global backend is touched.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sepico.errors import ConfigError
from sepico.files import atomic_write, check_output


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl. A last line that is not JSON is skipped: a write cut short by a
    kill, which the trainer drops too when the run resumes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (the run has not logged any metrics)")
    lines = path.read_text().splitlines()
    records = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if k == len(lines) - 1:
                continue
            raise ConfigError(f"{path}: line {k + 1} is not JSON") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: line {k + 1} is not a JSON object")
        records.append(record)
    if not records:
        raise ConfigError(f"{path}: no metrics records (the file is empty)")
    return records


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: list[dict], key: str) -> tuple[list, list]:
    """(iterations, values) of the records with a finite ``key``; NaN and inf points are left out."""
    points = [(r["iteration"], r[key]) for r in records if _finite(r.get(key)) and _finite(r.get("iteration"))]
    return [x for x, _ in points], [y for _, y in points]


def curves_figure(records: list[dict]) -> Figure:
    """Five panels against the iteration, top to bottom: losses (log scale when all positive), mIoU,
    learning rate, pseudo weight, speed. A panel with nothing to draw says so in its middle."""
    loss_keys = list(dict.fromkeys(k for r in records for k in r if k.startswith("loss")))
    panels = [  # (title, {label: series}, text when empty, line style)
        ("losses", {k: _series(records, k) for k in loss_keys}, "no losses logged", {}),
        ("target mIoU (%)", {"miou": _series(records, "miou")}, "no evaluation yet", {"marker": "o"}),
        ("learning rate", {"lr": _series(records, "lr")}, "not logged", {}),
        ("pseudo weight", {"pseudo_weight": _series(records, "pseudo_weight")}, "not logged", {}),
        ("speed (it/s)", {"it_per_s": _series(records, "it_per_s")}, "not logged", {}),
    ]
    fig = Figure(figsize=(7, 11), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (title, series, empty, style) in zip(axes, panels):
        series = {label: xy for label, xy in series.items() if xy[0]}
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        if not series:
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="0.4")
            continue
        for label, (xs, ys) in series.items():
            lone = {"marker": "o", "ms": 4} if len(xs) == 1 else {}  # one point draws no line
            ax.plot(xs, ys, label=label, lw=1.2, **(lone | style))
        if title == "losses":
            if all(y > 0 for _, ys in series.values() for y in ys):
                ax.set_yscale("log")
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("iteration")
    return fig


SOFTWARE = "sepico plot"  # the PNG text that marks curves.png as an earlier plot


def plot_run(run_dir, *, force: bool = False) -> Path:
    """Draw ``run_dir/metrics.jsonl`` to ``run_dir/curves.png`` (replaced atomically); returns its
    path. A curves.png that is not an earlier plot is replaced only with ``force`` (the trainer's
    own run folder)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    fig = curves_figure(read_metrics(run_dir / "metrics.jsonl"))
    fig.suptitle(run_dir.resolve().name, fontsize=11)
    path = run_dir / "curves.png"
    check_output(path, what="sepico plot", ours=_is_our_plot, force=force)
    # readers never see a half-written curves.png
    atomic_write(path, lambda f: fig.canvas.print_png(f, metadata={"Software": SOFTWARE}))
    return path


def _is_our_plot(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.text.get("Software") == SOFTWARE
    except Exception:  # noqa: BLE001 - whatever the file is, it is not a plot of ours
        return False


__all__ = ["curves_figure", "plot_run", "read_metrics"]

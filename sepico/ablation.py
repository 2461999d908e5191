"""``sepico ablate``: what each part of SePiCo contributes on the synthetic benchmark, and whether
the temperature matters.

Variants (each with every seed): source-only; self-training without a contrastive loss; a control
with DistCL's passes but its loss weighted 0 (``target_pass_no_cl``); ProtoCL, BankCL, DistCL
diagonal and DistCL full, each at every temperature; self-training, the control and DistCL
diagonal with GroupNorm in the small model's encoder (``*_gn``: no batch statistics there, so a
target batch reaches the encoder only through the contrastive gradient); DistCL diagonal in this
project's earlier loop (``distcl_diag_earlier_loop``: running-statistics teacher, decode head in
the target pass); then DistCL diagonal at the better of its
temperatures with forgetting statistics (estimator momentum). Every run starts from
the demo's config (``configs/synthetic_demo.toml``) and writes ``<out>/runs/<name>/result.json`` as
it ends; a rerun skips finished runs and resumes an interrupted one from its last checkpoint.
``<out>/summary.json``, ``<out>/table.md``, two PNGs and the run card ``<out>/card.json`` (with
``card.md``; each run's own card is in its folder) are rewritten from all results at the end.

``sepico ablate --sweep FIELD=V1,V2,...`` (``sweep``) is a dose-response instead: DistCL diagonal
at both temperatures and ProtoCL at 0.1 at every value of one field of the contrastive loss (the
contrast weight, the regulariser weight or the covariance ratio), paired by seed with the control,
and the published setting with its own control; ``<out>/<field>_sweep.{json,md,png}``.
"""
from __future__ import annotations

import functools
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from sepico.card import write_ablation_card
from sepico.demo import DEFAULT_CONFIG
from sepico.errors import ConfigError
from sepico.files import atomic_write
from sepico.method import run_name
from sepico.pages import write_block

TEMPERATURES = (0.1, 100.0)
CONTRASTIVE_RUNS = {
    run_name("proto"): ["method.variant=proto"],
    run_name("bank"): ["method.variant=bank"],
    run_name("dist", "diag"): ["method.variant=dist", "method.covariance=diag"],
    run_name("dist", "full"): ["method.variant=dist", "method.covariance=full"],
}
PLAIN = {
    "source_only": ["method.variant=source_only"],
    "self_training": ["method.variant=self_training"],
    # A control: DistCL's schedule with its loss weighted 0. The student still runs the extra pass
    # over the strongly augmented target images (BatchNorm in train mode sees target batches),
    # but no contrastive gradient reaches it.
    "target_pass_no_cl": ["method.variant=dist", "method.contrast_weight=0"],
    "self_training_gn": ["method.variant=self_training", "model.encoder_norm=group"],
    "target_pass_no_cl_gn": ["method.variant=dist", "method.contrast_weight=0", "model.encoder_norm=group"],
}
# Contrastive variants at the demo's temperature only.
AT_DEMO_TEMPERATURE = {
    "distcl_diag_gn": CONTRASTIVE_RUNS["distcl_diag"] + ["model.encoder_norm=group"],
    "distcl_diag_earlier_loop": CONTRASTIVE_RUNS["distcl_diag"] + ["method.teacher_statistics=running",
                                                             "method.target_pass=full"],
}
DEMO_TEMPERATURE = 0.1
# What each variant is compared with beyond source-only and self-training (paired, same seeds).
COUNTERPARTS = {
    "self_training_gn": [("self_training", None)],
    "target_pass_no_cl_gn": [("self_training_gn", None), ("target_pass_no_cl", None)],
    "distcl_diag_gn": [("self_training_gn", None), ("target_pass_no_cl_gn", None),
                       ("distcl_diag", DEMO_TEMPERATURE)],
    "distcl_diag_earlier_loop": [("distcl_diag", DEMO_TEMPERATURE)],
}
LOSS_KEYS = ("loss_cl_src", "loss_cl_tgt")  # the contrastive losses metrics.jsonl logs (weighted)
MOMENTUM = 0.99  # forgetting variant: the statistics follow about the last 100 batches
QUICK = ("source_only", "self_training", "target_pass_no_cl", "protocl", "distcl_diag", "self_training_gn",
         "distcl_diag_gn", "distcl_diag_earlier_loop")
OUT, SWEEP_OUT = "runs/ablation", "runs/ablation-sweep"  # default folders of the ablation and the sweep

# The dose-response sweep (``sweep``): these runs at every value of one field, paired by seed with
# the control (``target_pass_no_cl``: the same passes, the contrastive loss weighted 0).
SWEEP_RUNS = (("distcl_diag", 0.1), ("distcl_diag", 100.0), ("protocl", 0.1))  # (variant, temperature)
# Fields that only the contrastive loss reads, so that one control pairs with every value.
SWEEP_FIELDS = ("method.contrast_weight", "method.reg_weight", "method.ratio")
CONTROL = "target_pass_no_cl"
# The published setting (configs/gta5_to_cityscapes_daformer_dist.toml, the official defaults) on
# the demo's schedule: DistCL diagonal, temperature 100, weight 1, DACS's batch-scalar pseudo
# weight, the contrastive losses from iteration 3000 of 40,000 (the same share of the run); and its
# own control, the same with the loss weighted 0.
PUBLISHED = "distcl_diag_published"
PUBLISHED_CONTROL = "target_pass_no_cl_published"
PUBLISHED_START = 3000 / 40000


@dataclass
class Run:
    variant: str
    temperature: float | None
    seed: int
    overrides: list = field(default_factory=list)
    swept: tuple[str, float] | None = None  # (config field, value) of a sweep run

    @property
    def name(self) -> str:
        t = "" if self.temperature is None else f"_t{self.temperature:g}"
        v = "" if self.swept is None else f"_{self.swept[0].split('.')[1]}{self.swept[1]:g}"
        return f"{self.variant}{t}{v}_seed{self.seed}"


def plan(seeds, temperatures=TEMPERATURES, quick=False) -> list[Run]:
    """Every run but the momentum variant, whose temperature depends on these results."""
    runs = []
    for seed in seeds:
        for variant, over in PLAIN.items():
            if not quick or variant in QUICK:
                runs.append(Run(variant, None, seed, over))
        for variant, over in CONTRASTIVE_RUNS.items():
            if quick and variant not in QUICK:
                continue
            for t in temperatures:
                runs.append(Run(variant, t, seed, over + [f"method.temperature={t}"]))
        for variant, over in AT_DEMO_TEMPERATURE.items():
            runs.append(Run(variant, DEMO_TEMPERATURE, seed, over + [f"method.temperature={DEMO_TEMPERATURE}"]))
    return runs


def momentum_runs(results, seeds, temperatures) -> list[Run]:
    best = best_temperature(results, "distcl_diag", temperatures)
    over = CONTRASTIVE_RUNS["distcl_diag"] + [f"method.temperature={best}", f"method.momentum={MOMENTUM}"]
    return [Run("distcl_diag_momentum", best, seed, over) for seed in seeds]


def best_temperature(results, variant, temperatures):
    means = {t: _mean([r["miou"] for r in results if r["variant"] == variant and r["temperature"] == t])
             for t in temperatures}
    return max(means, key=lambda t: -math.inf if math.isnan(means[t]) else means[t])


def parse_sweep(spec: str) -> tuple[str, list[float]]:
    """``FIELD=V1,V2,...`` (FIELD one of ``SWEEP_FIELDS``, spelled as ``--set`` spells it) as the
    field and its distinct values in increasing order. Values are > 0 (the plot's axis is
    logarithmic); the contrast weight may also be 0, which is the control."""
    key, sep, listed = spec.partition("=")
    key = key.strip()
    if key not in SWEEP_FIELDS:
        full = [f for f in SWEEP_FIELDS if f.split(".")[1] == key]
        raise ConfigError(f"--sweep takes one of {', '.join(SWEEP_FIELDS)} (the fields only the contrastive "
                          f"loss reads), got {key!r}" + (f"; did you mean {full[0]}?" if full else ""))
    try:
        values = sorted({float(v) for v in listed.split(",")}) if sep else []
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--sweep takes {key}=V1,V2,... (numbers), got {spec!r}")
    if values[0] < 0 or (values[0] == 0 and key != "method.contrast_weight"):
        raise ConfigError(f"--sweep values must be > 0 (the plot's axis is logarithmic; a contrast weight of 0 "
                          f"is the control), got {values[0]:g}")
    if len({f"{v:g}" for v in values}) < len(values):
        raise ConfigError(f"--sweep values must differ in their first six digits (they name the runs), got {spec!r}")
    return key, values


def sweep_plan(key: str, values, seeds, max_iters: int) -> list[Run]:
    """Per seed: the control, ``SWEEP_RUNS`` at every value of ``key`` (contrast weight 0 is the
    control itself), the published setting and its control; ``max_iters`` places the published start."""
    published = CONTRASTIVE_RUNS["distcl_diag"] + [
        "method.temperature=100", "method.pseudo_weight=dacs",
        f"method.start_distribution_iter={round(PUBLISHED_START * max_iters)}"]
    runs = []
    for seed in seeds:
        runs.append(Run(CONTROL, None, seed, PLAIN[CONTROL]))
        for variant, t in SWEEP_RUNS:
            runs += [Run(variant, t, seed, CONTRASTIVE_RUNS[variant] + [f"method.temperature={t}", f"{key}={v!r}"],
                         swept=(key, v))
                     for v in values if not (key == "method.contrast_weight" and v == 0)]
        runs.append(Run(PUBLISHED, 100.0, seed, published + ["method.contrast_weight=1"]))
        runs.append(Run(PUBLISHED_CONTROL, None, seed, published + ["method.contrast_weight=0"]))
    return runs


def _mean(values):
    return statistics.fmean(values) if values else float("nan")


def _std(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def execute(run: Run, base_config: Path, out: Path, iters: int | None, extra: list, progress: bool) -> dict:
    """Train and evaluate one run, or read its result if it finished before."""
    import torch

    from sepico.train import Trainer, load_config
    from sepico.train.checkpoint import latest_checkpoint
    from sepico.plot import plot_run
    from sepico.train.checkpoint import changed_fields

    run_dir = out / "runs" / run.name
    result_file = run_dir / "result.json"
    overrides = list(extra) + run.overrides + [f"train.seed={run.seed}"]
    if iters:
        overrides += [f"train.max_iters={iters}", f"method.start_self_training_iter={iters // 4}"]
    cfg = load_config(base_config, overrides)
    cfg.train.checkpoint_interval = max(1, cfg.train.max_iters // 4)  # an interruption loses little
    cfg.train.keep_checkpoints = 1
    if result_file.exists():
        result = _read_result(result_file)
        stored = result.get("config")
        differing = changed_fields(stored, cfg.to_dict(), ignore=()) if isinstance(stored, dict) else ["config"]
        if differing:
            raise ConfigError(f"{result_file} was trained with other settings ({', '.join(differing[:5])}); "
                              "give another --out for these settings (or remove that run's folder)")
        return result
    start = time.perf_counter()
    resume = latest_checkpoint(run_dir) is not None  # else a fresh start (overwriting a run cut short)
    trainer = Trainer(cfg, run_dir, resume=resume, overwrite=not resume, progress=progress, log_lines=False,
                      draw_curves=functools.partial(plot_run, force=True))
    ev = trainer.train()
    result = {"variant": run.variant, "temperature": run.temperature, "seed": run.seed,
              "momentum": cfg.method.momentum, "iterations": cfg.train.max_iters,
              "miou": ev["miou"], "iou": ev["iou"], "wall_time_s": time.perf_counter() - start,
              "threads": torch.get_num_threads(),
              "contrastive_loss": loss_over_training(run_dir / "metrics.jsonl", cfg.method.contrast_weight),
              "config": cfg.to_dict()}
    atomic_write(result_file, json.dumps(result, indent=2))
    return result


def loss_over_training(metrics: Path, contrast_weight: float) -> dict:
    """Each contrastive loss (``LOSS_KEYS``) over training: its mean over the first and over the
    last tenth of the iterations that logged it, divided by ``contrast_weight`` (metrics.jsonl
    holds the weighted loss), so runs at different weights compare; the regulariser is part of
    it. Empty at weight 0, where the log holds zeros whatever the loss was."""
    from sepico.plot import read_metrics

    if contrast_weight == 0:
        return {}
    records = read_metrics(metrics)
    out = {}
    for key in LOSS_KEYS:
        values = [r[key] / contrast_weight for r in records
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if values:
            tenth = max(1, len(values) // 10)
            out[key] = {"first": _mean(values[:tenth]), "last": _mean(values[-tenth:]), "logged": len(values)}
    return out


def _read_result(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); remove that run's folder to train it again") from None
    if not isinstance(result, dict) or "miou" not in result:
        raise ConfigError(f"{path} is not an ablation result; remove that run's folder to train it again")
    return result


def summarise(results, out: Path) -> dict:
    """summary.json, table.md and the two plots, from every finished run."""
    groups = {}
    for r in results:
        groups.setdefault((r["variant"], r["temperature"]), []).append(r)
    rows = [{"variant": variant, "temperature": t} | _seed_stats(rs) for (variant, t), rs in groups.items()]
    rows.sort(key=lambda row: -row["miou_mean"])
    best = rows[0] if rows else None
    pairs = comparisons(rows)
    summary = {"rows": rows, "best": best and {k: best[k] for k in ("variant", "temperature", "miou_mean", "miou_std")},
               "comparisons": pairs, "wall_time_s": sum(r["wall_time_s"] for r in results)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write(out / "table.md", markdown(rows, pairs))
    if rows:
        _plots(rows, out)
    return summary


def _seed_stats(rs) -> dict:
    """Target mIoU of runs that differ by seed only: per seed, mean and spread; per-class means."""
    mious = [r["miou"] for r in rs]
    return {"seeds": [r["seed"] for r in rs], "miou_mean": _mean(mious), "miou_std": _std(mious),
            "miou": mious, "iou_mean": {c: _mean([r["iou"][c] for r in rs]) for c in rs[0]["iou"]}}


def _label(variant, temperature) -> str:
    return variant if temperature is None else f"{variant} T={temperature:g}"


def comparisons(rows) -> list[dict]:
    """Paired differences of target mIoU on the same seeds (same data, same initialisation).

    Every variant against source-only and against self-training alone, each contrastive variant's
    temperature 0.1 against 100, each contrastive variant against the control that makes the same
    passes with the loss weighted 0, BankCL and DistCL against ProtoCL at the same temperature,
    the forgetting statistics against the same DistCL without, and the GroupNorm and earlier-loop
    variants against their counterparts (``COUNTERPARTS``); ``paired`` tells a finding.
    """
    by = {(row["variant"], row["temperature"]): row for row in rows}
    wanted = []
    for key in by:
        variant, t = key
        bases = [] if variant == "source_only" else [("source_only", None)]
        if variant not in ("source_only", "self_training"):
            bases.append(("self_training", None))
        if variant in CONTRASTIVE_RUNS or variant == "distcl_diag_momentum":
            bases.append(("target_pass_no_cl", None))  # a contrastive gradient against the same passes without it
        bases += COUNTERPARTS.get(variant, [])
        wanted += [(key, base) for base in bases if base in by]
        if variant in CONTRASTIVE_RUNS and t == TEMPERATURES[0]:
            wanted += [(key, (variant, other)) for other in TEMPERATURES[1:] if (variant, other) in by]
        if variant in CONTRASTIVE_RUNS and variant != "protocl" and ("protocl", t) in by:
            wanted.append((key, ("protocl", t)))  # does anything beyond the class mean help?
        if variant == "distcl_diag_momentum" and ("distcl_diag", t) in by:
            wanted.append((key, ("distcl_diag", t)))
    pairs = (paired(by[a], by[b], _label(*a), _label(*b)) for a, b in dict.fromkeys(wanted))  # each once
    return [p for p in pairs if p]


def paired(ra, rb, a: str, b: str) -> dict | None:
    """Row ``ra`` minus row ``rb`` (labelled ``a`` and ``b``) on their common seeds, None when they
    share none. ``finding`` is true only where the mean difference exceeds the seed spread: the
    standard deviation of the paired differences and of either side's mIoU."""
    common = sorted(set(ra["seeds"]) & set(rb["seeds"]))
    if not common:
        return None
    da = dict(zip(ra["seeds"], ra["miou"]))
    db = dict(zip(rb["seeds"], rb["miou"]))
    diffs = [da[s] - db[s] for s in common]
    spread = max(_std(diffs), ra["miou_std"], rb["miou_std"])
    return {"a": a, "b": b, "seeds": common, "diff": diffs, "diff_mean": _mean(diffs), "diff_std": _std(diffs),
            "finding": len(common) > 1 and abs(_mean(diffs)) > spread}


def markdown(rows, pairs=()) -> str:
    from sepico.data.cityscapes import CLASS_NAMES

    lines = ["| variant | temperature | target mIoU (mean ± std) | seeds |", "|---|---|---|---|"]
    for row in rows:
        t = "-" if row["temperature"] is None else f"{row['temperature']:g}"
        lines.append(f"| {row['variant']} | {t} | {row['miou_mean']:.1f} ± {row['miou_std']:.1f} | "
                     f"{len(row['seeds'])} |")
    if pairs:
        lines += ["", "Paired differences of target mIoU on the same seeds (a - b); a finding only where "
                  "the mean exceeds the seed spread (std of the differences and of either side):", "",
                  "| a | b | a - b (mean ± std) | seeds | finding |", "|---|---|---|---|---|"]
        lines += [f"| {p['a']} | {p['b']} | {p['diff_mean']:+.1f} ± {p['diff_std']:.1f} | {len(p['seeds'])} | "
                  f"{'yes' if p['finding'] else 'no'} |" for p in pairs]
    best = rows[0]
    lines += ["", f"Per-class IoU of the best variant ({best['variant']}, temperature "
              f"{best['temperature']}), mean over seeds:", "",
              "| class | IoU |", "|---|---|"]
    lines += [f"| {CLASS_NAMES[int(c)]} | {v:.1f} |" for c, v in best["iou_mean"].items()]
    return "\n".join(lines) + "\n"


def _plots(rows, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sepico.data.cityscapes import CLASS_NAMES

    labels = [r["variant"] + ("" if r["temperature"] is None else f"\nT={r['temperature']:g}") for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    colours = ["tab:gray" if r["variant"] in PLAIN else "tab:blue" for r in rows]  # no contrastive gradient: grey
    ax.bar(range(len(rows)), [r["miou_mean"] for r in rows], yerr=[r["miou_std"] for r in rows], capsize=4,
           color=colours, alpha=0.7)
    for i, r in enumerate(rows):  # every seed as a dot: three seeds make a thin error bar
        ax.plot([i] * len(r["miou"]), r["miou"], "k.", markersize=5)
    lowest = min(min(r["miou"]) for r in rows)
    ax.set_ylim(bottom=max(0.0, 5 * math.floor(lowest / 5) - 5))
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("target mIoU (bar: mean ± std; dots: seeds)")
    ax.set_title("Ablation on the synthetic domain shift")
    fig.tight_layout()
    atomic_write(out / "ablation_miou.png", lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)

    pick = sorted((r for r in rows if r["variant"] in ("source_only", "self_training")),
                  key=lambda r: r["variant"] != "source_only") + [rows[0]]
    classes = list(rows[0]["iou_mean"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(pick)
    for i, r in enumerate(pick):
        ax.bar([k + i * width for k in range(len(classes))], [r["iou_mean"][c] for c in classes], width,
               label=r["variant"] + ("" if r["temperature"] is None else f" T={r['temperature']:g}"))
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(classes))], [CLASS_NAMES[int(c)] for c in classes],
                  rotation=30, ha="right")
    ax.set_ylabel("target IoU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out / "ablation_per_class.png", lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def summarise_sweep(results, key: str, out: Path, *, wall_time_s: float, trained: int, jobs: int) -> dict:
    """``<out>/<field>_sweep.{json,md,png}`` from the sweep's runs. Per group of runs that differ by
    seed only (variant, temperature, value of ``key``): target mIoU over the seeds, the paired
    difference to its control (``paired``: the control for the sweep's runs, the published
    setting's own control for it) and the contrastive losses over training; the best group; the
    training time summed over the runs and this command's wall time (``trained`` runs trained by it)."""
    section, name = key.split(".")
    groups = {}
    for r in results:
        groups.setdefault((r["variant"], r["temperature"], r["config"][section][name]), []).append(r)
    rows = [{"variant": v, "temperature": t, "value": x, "label": _sweep_label(v, t, x, name)} | _seed_stats(rs)
            | {"contrastive_loss": _mean_loss(rs)} for (v, t, x), rs in groups.items()]
    order = [(CONTROL, None), *SWEEP_RUNS, (PUBLISHED, 100.0), (PUBLISHED_CONTROL, None)]
    rows.sort(key=lambda row: (order.index((row["variant"], row["temperature"])), row["value"]))
    control, published_control = (next(r for r in rows if r["variant"] == v) for v in (CONTROL, PUBLISHED_CONTROL))
    published = next(r for r in rows if r["variant"] == PUBLISHED)
    swept = [r for r in rows if (r["variant"], r["temperature"]) in SWEEP_RUNS]
    for row, base in [(r, control) for r in swept] + [(published, published_control)]:
        row["vs_control"] = paired(row, base, row["label"], base["label"])
    best = max(swept, key=lambda row: row["miou_mean"])
    summary = {"field": key, "values": sorted({r["value"] for r in swept}), "rows": rows, "best": best["label"],
               "published_value": published["value"], "runs": len(results), "runs_trained": trained,
               "run_time_s": sum(r["wall_time_s"] for r in results), "wall_time_s": wall_time_s, "jobs": jobs}
    stem = f"{name}_sweep"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{stem}.json", json.dumps(summary, indent=2))
    atomic_write(out / f"{stem}.md", sweep_markdown(summary))
    _sweep_plot(summary, out / f"{stem}.png")
    return summary


def _sweep_label(variant, temperature, value, name) -> str:
    swept = (variant, temperature) in SWEEP_RUNS
    return f"{_label(variant, temperature)} {name}={value:g}" if swept else _label(variant, temperature)


def _mean_loss(rs) -> dict:
    """Each contrastive loss's first and last tenth (``loss_over_training``), mean over the runs that logged it."""
    out = {}
    for key in LOSS_KEYS:
        logged = [r["contrastive_loss"][key] for r in rs if key in r.get("contrastive_loss", {})]
        if logged:
            out[key] = {when: _mean([loss[when] for loss in logged]) for when in ("first", "last")}
    return out


def sweep_markdown(summary) -> str:
    from sepico.data.cityscapes import CLASS_NAMES

    name = summary["field"].split(".")[1]
    rows = summary["rows"]
    lines = ["Target test mIoU (%) over the seeds, and its paired difference on the same seeds to the control "
             "(the same passes with the contrastive loss weighted 0; for the published setting, its own "
             "control). A finding only where the mean difference exceeds the seed spread (std of the "
             "differences and of either side). Losses: the contrastive loss divided by its weight (the "
             "regulariser included), mean over the first -> the last tenth of the iterations that logged it; "
             "'-' at weight 0, whose log holds zeros.", "",
             f"| run | temperature | {name} | target mIoU (mean ± std) | - control (mean ± std) | finding | seeds "
             "| source loss | target loss |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        t = "-" if row["temperature"] is None else f"{row['temperature']:g}"
        vs = row.get("vs_control")
        diff = f"{vs['diff_mean']:+.1f} ± {vs['diff_std']:.1f} | {'yes' if vs['finding'] else 'no'}" if vs else "- | -"
        losses = " | ".join(_loss_cell(row["contrastive_loss"].get(key)) for key in LOSS_KEYS)
        lines.append(f"| {row['variant']} | {t} | {row['value']:g} | {row['miou_mean']:.1f} ± {row['miou_std']:.1f} "
                     f"| {diff} | {len(row['seeds'])} | {losses} |")
    by_label = {row["label"]: row for row in rows}
    at_published = [row["label"] for row in rows if (row["variant"], row["temperature"]) in SWEEP_RUNS
                    and row["value"] == summary["published_value"]]
    columns = list(dict.fromkeys([rows[0]["label"], summary["best"], *at_published,
                                  next(row["label"] for row in rows if row["variant"] == PUBLISHED)]))
    lines += ["", f"Per-class target IoU (%), mean over the seeds: the control, the best run "
              f"({summary['best']}), the runs at the published {name} ({summary['published_value']:g}) and the "
              "published setting.", "", "| class | " + " | ".join(columns) + " |",
              "|---|" + "---|" * len(columns)]
    for c in rows[0]["iou_mean"]:
        lines.append(f"| {CLASS_NAMES[int(c)]} | " + " | ".join(f"{by_label[k]['iou_mean'][c]:.1f}" for k in columns)
                     + " |")
    lines += ["", f"{summary['runs']} runs; training time summed over the runs {summary['run_time_s'] / 60:.0f} min; "
              f"wall time of this command {summary['wall_time_s'] / 60:.0f} min with --jobs {summary['jobs']} "
              f"({summary['runs_trained']} runs trained by it, {summary['runs'] - summary['runs_trained']} read back)."]
    return "\n".join(lines) + "\n"


def _loss_cell(loss) -> str:
    return "-" if loss is None else f"{loss['first']:.3f} -> {loss['last']:.3f}"


def _sweep_plot(summary, path: Path) -> None:
    """Four panels against the swept value on a log axis: target mIoU (the control, whose weight 0
    has no place on the axis, as a band: mean ± std), the paired difference to the control, and
    the source and target contrastive losses (divided by the weight) over the first and the last
    tenth of training. The published setting is a star at its own value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = summary["rows"]
    fig = Figure(figsize=(13, 8.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    (miou, diff), (src, tgt) = fig.subplots(2, 2, sharex=True)
    control = rows[0]
    miou.axhspan(control["miou_mean"] - control["miou_std"], control["miou_mean"] + control["miou_std"],
                 color="0.85", label="control (weight 0, no place on the log axis): mean ± std")
    miou.axhline(control["miou_mean"], color="0.5", lw=1)
    diff.axhline(0.0, color="0.5", lw=1)
    published = [row for row in rows if row["variant"] == PUBLISHED]
    series = [(_label(*kind), [r for r in rows if (r["variant"], r["temperature"]) == kind], colour, "o")
              for kind, colour in zip(SWEEP_RUNS, ("tab:blue", "tab:orange", "tab:green"))]
    series.append(("published setting (T=100, DACS pseudo weight, start at 3000/40000)", published, "tab:red", "*"))
    for k, (label, group, colour, marker) in enumerate(series):
        xs = [r["value"] * 10 ** (0.015 * (k - 1.5)) for r in group]  # side by side on the log axis
        size = 11 if marker == "*" else 5
        style = {"color": colour, "marker": marker, "ms": size, "capsize": 3, "ls": "none" if marker == "*" else "-"}
        miou.errorbar(xs, [r["miou_mean"] for r in group], yerr=[r["miou_std"] for r in group], label=label,
                      **style)
        for x, r in zip(xs, group):  # every seed as a dot
            miou.plot([x] * len(r["miou"]), r["miou"], ".", color=colour, alpha=0.4)
        diff.errorbar(xs, [r["vs_control"]["diff_mean"] for r in group],
                      yerr=[r["vs_control"]["diff_std"] for r in group], **style)
        for ax, key in ((src, "loss_cl_src"), (tgt, "loss_cl_tgt")):
            logged = [(x, r["contrastive_loss"][key]) for x, r in zip(xs, group) if key in r["contrastive_loss"]]
            for when, ls, fill in (("first", "--", "none"), ("last", "-", colour)):
                ax.plot([x for x, _ in logged], [loss[when] for _, loss in logged], color=colour, marker=marker,
                        ms=size, mfc=fill, ls="none" if marker == "*" else ls, label=f"{label}, {when} tenth")
    miou.set_title("target test mIoU (%): mean ± std over seeds, dots: seeds", loc="left", fontsize=10)
    diff.set_title("paired difference to the control on the same seeds: mean ± std", loc="left", fontsize=10)
    src.set_title("source contrastive loss / weight: first (dashed, open) and last (solid) tenth",
                  loc="left", fontsize=10)
    tgt.set_title("target contrastive loss / weight: first (dashed, open) and last (solid) tenth",
                  loc="left", fontsize=10)
    values = sorted({r["value"] for r in rows if r["value"] > 0})
    for ax in (miou, diff, src, tgt):
        ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    for ax in (src, tgt):
        ax.set_xlabel(f"{summary['field']} (log axis)")
    miou.legend(fontsize=7)
    src.legend(fontsize=6, ncol=2)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def ablate(*, seeds=(0, 1, 2), quick=False, iters=None, out=OUT, config=DEFAULT_CONFIG,
           overrides=(), progress=True, temperatures=TEMPERATURES, jobs=1, threads=1, docs=None) -> dict:
    """Every run of the plan (``jobs`` at a time, each in its own process with ``threads`` torch
    threads when ``jobs > 1``), then the momentum runs, then the summary; with ``docs`` (a page,
    docs/ablation.md) its 'ablation-table' block becomes the summary table."""
    out, config = Path(out), Path(config)
    runs = plan(seeds, temperatures, quick)
    runner = _Runner(config, out, iters, list(overrides), progress, jobs, threads,
                     total=len(runs) + (0 if quick else len(seeds)))
    # The momentum runs' temperature is chosen later: a seed counts as done if either exists.
    momentum_todo = 0 if quick else sum(
        not any(runner.finished(Run("distcl_diag_momentum", t, seed)) for t in temperatures) for seed in seeds)
    results = runner.train(runs, momentum_todo)
    if not quick:
        results += runner.train(momentum_runs(results, seeds, temperatures))
    summary = summarise(results, out)
    write_ablation_card(out, config, overrides, iters, seeds=seeds, summary=summary, started=runner.started)
    print((out / "table.md").read_text())
    if docs:
        write_block(docs, "ablation-table", (out / "table.md").read_text())
        print(f"wrote the 'ablation-table' block of {docs}")
    return summary


def sweep(spec: str, *, seeds=(0, 1, 2), iters=None, out=SWEEP_OUT, config=DEFAULT_CONFIG, overrides=(),
          progress=True, jobs=1, threads=1, docs=None) -> dict:
    """The dose-response of one field of the contrastive loss, ``spec`` = ``FIELD=V1,V2,...``
    (``parse_sweep``): the runs of ``sweep_plan``, ``jobs`` at a time as in ``ablate``, resumable
    in the same way, then ``summarise_sweep``. With ``docs`` (a page, docs/ablation.md) its
    '<field>-sweep' block (``contrast-weight-sweep``) becomes the table and the plot, and the
    sweep's three files are copied to the page's folder/ablation/."""
    from sepico.train import load_config

    key, values = parse_sweep(spec)
    out, config = Path(out), Path(config)
    max_iters = iters or load_config(config, list(overrides)).train.max_iters
    runs = sweep_plan(key, values, seeds, max_iters)
    runner = _Runner(config, out, iters, list(overrides), progress, jobs, threads, total=len(runs))
    results = runner.train(runs)
    summary = summarise_sweep(results, key, out, wall_time_s=time.perf_counter() - runner.started,
                              trained=runner.trained, jobs=jobs)
    stem = f"{key.split('.')[1]}_sweep"
    table = (out / f"{stem}.md").read_text()
    print(table)
    if docs:
        folder = Path(docs).parent / "ablation"
        folder.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md", ".png"):
            atomic_write(folder / (stem + suffix), (out / (stem + suffix)).read_bytes())
        block = stem.replace("_", "-")
        write_block(docs, block, table + f"\n![{key} sweep: target mIoU, paired difference to the control, "
                    f"contrastive losses over training](ablation/{stem}.png)\n")
        print(f"wrote the '{block}' block of {docs} and {folder}/{stem}.{{json,md,png}}")
    return summary


@dataclass
class _Runner:
    """Trains runs ``jobs`` at a time (each in its own process with ``threads`` torch threads when
    ``jobs > 1``) and prints a progress line per run, counted over every batch it is given."""
    config: Path
    out: Path
    iters: int | None
    overrides: list
    progress: bool
    jobs: int
    threads: int
    total: int
    started: float = field(default_factory=time.perf_counter)
    seen: int = 0  # runs trained or read back
    trained: int = 0  # runs trained by this runner

    def finished(self, run: Run) -> bool:
        return (self.out / "runs" / run.name / "result.json").exists()

    def _report(self, run, fresh, todo):
        self.seen += 1
        self.trained += fresh
        elapsed = time.perf_counter() - self.started
        left = "?" if not self.trained else f"{elapsed / self.trained * todo / 60:.0f} min"
        print(f"[ablation] run {self.seen} of {self.total}: {run.name} {'done' if fresh else 'read back'} "
              f"(time left about {left})", flush=True)

    def train(self, batch, later_todo=0) -> list[dict]:
        """The results of ``batch`` in its order; ``later_todo`` runs still to come count in the time left."""
        todo = sum(not self.finished(r) for r in batch) + later_todo
        results = []
        if self.jobs <= 1:
            for run in batch:
                fresh = not self.finished(run)
                results.append(execute(run, self.config, self.out, self.iters, self.overrides, self.progress))
                todo -= fresh
                self._report(run, fresh, todo)
            return results
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=context, initializer=_worker_threads,
                                 initargs=(self.threads,)) as pool:
            futures = {pool.submit(execute, run, self.config, self.out, self.iters, self.overrides, False):
                       (run, not self.finished(run)) for run in batch}
            by_name = {}
            for future in as_completed(futures):
                run, fresh = futures[future]
                by_name[run.name] = future.result()
                todo -= fresh
                self._report(run, fresh, todo)
        return [by_name[run.name] for run in batch]  # the plan's order, whatever finished first


def _worker_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def add_arguments(p) -> None:
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of every variant")
    p.add_argument("--quick", action="store_true", help="one seed of the main variants")
    p.add_argument("--iters", type=int, default=None, help="iterations per run (default: the config's)")
    p.add_argument("--out", help=f"folder of the runs and the summary (default {OUT}, with --sweep {SWEEP_OUT}; "
                   "a rerun reads the finished runs back; runs of other settings are refused)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the TOML config every run starts from "
                   "(default: the demo's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of every run, e.g. --set train.max_iters=500 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per run (default 1, as the demo: the model is small)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own process (default 1; one per core is a good choice)")
    p.add_argument("--sweep", metavar="FIELD=V1,V2,...",
                   help="instead of the ablation, a dose-response: DistCL diagonal at temperatures 0.1 and 100 "
                   "and ProtoCL at 0.1 at every value of FIELD (one of " + ", ".join(SWEEP_FIELDS) + "), the "
                   "control (weight 0), the published setting and its control, every seed; e.g. "
                   "method.contrast_weight=0,0.03,0.1,0.3,1,3")
    p.add_argument("--docs", metavar="PAGE", help="also rewrite the 'ablation-table' block of this page (with "
                   "--sweep: the sweep's block, 'contrast-weight-sweep' for method.contrast_weight, and copy the "
                   "sweep's table, summary and plot to PAGE's folder/ablation/)")


def run_from_args(args) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    seeds = args.seeds[:1] if args.quick else args.seeds
    if args.jobs < 1 or args.threads < 1:
        raise ConfigError("--jobs and --threads must be >= 1")
    common = dict(seeds=seeds, iters=args.iters, config=args.config, overrides=args.overrides,
                  progress=not args.no_progress and args.jobs == 1, jobs=args.jobs, threads=args.threads,
                  docs=args.docs)
    if args.sweep:
        if args.quick:
            raise ConfigError("--quick is the ablation's; a sweep of one seed is --seeds 0")
        sweep(args.sweep, out=args.out or SWEEP_OUT, **common)
    else:
        ablate(quick=args.quick, out=args.out or OUT, **common)
    return 0

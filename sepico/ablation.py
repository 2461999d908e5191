"""``sepico ablate``: what each part of SePiCo contributes on the synthetic benchmark, and whether
the temperature matters (design section 9).

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
"""
from __future__ import annotations

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
MOMENTUM = 0.99  # forgetting variant: the statistics follow about the last 100 batches
QUICK = ("source_only", "self_training", "target_pass_no_cl", "protocl", "distcl_diag", "self_training_gn",
         "distcl_diag_gn", "distcl_diag_earlier_loop")


@dataclass
class Run:
    variant: str
    temperature: float | None
    seed: int
    overrides: list = field(default_factory=list)

    @property
    def name(self) -> str:
        t = "" if self.temperature is None else f"_t{self.temperature:g}"
        return f"{self.variant}{t}_seed{self.seed}"


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


def _mean(values):
    return statistics.fmean(values) if values else float("nan")


def _std(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def execute(run: Run, base_config: Path, out: Path, iters: int | None, extra: list, progress: bool) -> dict:
    """Train and evaluate one run, or read its result if it finished before."""
    import torch

    from sepico.train import Trainer, load_config
    from sepico.train.checkpoint import latest_checkpoint
    from sepico.train.trainer import changed_fields

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
    trainer = Trainer(cfg, run_dir, resume=resume, overwrite=not resume, progress=progress)
    ev = trainer.train()
    result = {"variant": run.variant, "temperature": run.temperature, "seed": run.seed,
              "momentum": cfg.method.momentum, "iterations": cfg.train.max_iters,
              "miou": ev["miou"], "iou": ev["iou"], "wall_time_s": time.perf_counter() - start,
              "threads": torch.get_num_threads(), "config": cfg.to_dict()}
    atomic_write(result_file, json.dumps(result, indent=2))
    return result


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
    rows = []
    for (variant, t), rs in groups.items():
        mious = [r["miou"] for r in rs]
        rows.append({"variant": variant, "temperature": t, "seeds": [r["seed"] for r in rs],
                     "miou_mean": _mean(mious), "miou_std": _std(mious), "miou": mious,
                     "iou_mean": {c: _mean([r["iou"][c] for r in rs]) for c in rs[0]["iou"]}})
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


def _label(variant, temperature) -> str:
    return variant if temperature is None else f"{variant} T={temperature:g}"


def comparisons(rows) -> list[dict]:
    """Paired differences of target mIoU on the same seeds (same data, same initialisation).

    Every variant against source-only and against self-training alone, each contrastive variant's
    temperature 0.1 against 100, each contrastive variant against the control that makes the same
    passes with the loss weighted 0, BankCL and DistCL against ProtoCL at the same temperature,
    the forgetting statistics against the same DistCL without, and the GroupNorm and earlier-loop
    variants against their counterparts (``COUNTERPARTS``).
    ``finding`` is true only where the mean difference exceeds the seed spread: the standard
    deviation of the paired differences and of either side's mIoU.
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
    pairs = []
    for a, b in dict.fromkeys(wanted):  # each pair once, in the order asked
        ra, rb = by[a], by[b]
        common = sorted(set(ra["seeds"]) & set(rb["seeds"]))
        if not common:
            continue
        da = dict(zip(ra["seeds"], ra["miou"]))
        db = dict(zip(rb["seeds"], rb["miou"]))
        diffs = [da[s] - db[s] for s in common]
        spread = max(_std(diffs), ra["miou_std"], rb["miou_std"])
        pairs.append({"a": _label(*a), "b": _label(*b), "seeds": common, "diff": diffs,
                      "diff_mean": _mean(diffs), "diff_std": _std(diffs),
                      "finding": len(common) > 1 and abs(_mean(diffs)) > spread})
    return pairs


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


def ablate(*, seeds=(0, 1, 2), quick=False, iters=None, out="runs/ablation", config=DEFAULT_CONFIG,
           overrides=(), progress=True, temperatures=TEMPERATURES, jobs=1, threads=1, docs=None) -> dict:
    """Every run of the plan (``jobs`` at a time, each in its own process with ``threads`` torch
    threads when ``jobs > 1``), then the momentum runs, then the summary; with ``docs`` (a page,
    docs/ablation.md) its 'ablation-table' block becomes the summary table."""
    out, config = Path(out), Path(config)
    runs = plan(seeds, temperatures, quick)
    total = len(runs) + (0 if quick else len(seeds))
    results, started, done = [], time.perf_counter(), [0, 0]  # runs seen, runs trained now

    def finished(name):
        return (out / "runs" / name / "result.json").exists()

    # The momentum runs' temperature is chosen later: a seed counts as done if either exists.
    momentum_todo = 0 if quick else sum(
        not any(finished(Run("distcl_diag_momentum", t, seed).name) for t in temperatures) for seed in seeds)

    def report(run, fresh, todo):
        done[0] += 1
        done[1] += fresh
        elapsed = time.perf_counter() - started
        left = "?" if not done[1] else f"{elapsed / done[1] * todo / 60:.0f} min"
        print(f"[ablation] run {done[0]} of {total}: {run.name} {'done' if fresh else 'read back'} "
              f"(time left about {left})", flush=True)

    def run_batch(batch, later_todo):
        todo = sum(not finished(r.name) for r in batch) + later_todo
        if jobs <= 1:
            for run in batch:
                fresh = not finished(run.name)
                results.append(execute(run, config, out, iters, list(overrides), progress))
                todo -= fresh
                report(run, fresh, todo)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(execute, run, config, out, iters, list(overrides), False):
                       (run, not finished(run.name)) for run in batch}
            by_name = {}
            for future in as_completed(futures):
                run, fresh = futures[future]
                by_name[run.name] = future.result()
                todo -= fresh
                report(run, fresh, todo)
        results.extend(by_name[run.name] for run in batch)  # the plan's order, whatever finished first

    run_batch(runs, momentum_todo)
    if not quick:
        run_batch(momentum_runs(results, seeds, temperatures), 0)
    summary = summarise(results, out)
    write_ablation_card(out, config, overrides, iters, seeds=seeds, summary=summary, started=started)
    print((out / "table.md").read_text())
    if docs:
        write_block(docs, "ablation-table", (out / "table.md").read_text())
        print(f"wrote the 'ablation-table' block of {docs}")
    return summary


def _worker_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def add_arguments(p) -> None:
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of every variant")
    p.add_argument("--quick", action="store_true", help="one seed of the main variants")
    p.add_argument("--iters", type=int, default=None, help="iterations per run (default: the config's)")
    p.add_argument("--out", default="runs/ablation", help="folder of the runs and the summary (a rerun reads "
                   "the finished runs back; runs of other settings are refused)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the TOML config every run starts from "
                   "(default: the demo's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of every run, e.g. --set train.max_iters=500 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per run (default 1, as the demo: the model is small)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own process (default 1; one per core is a good choice)")
    p.add_argument("--docs", metavar="PAGE", help="also rewrite the 'ablation-table' block of this page")


def run_from_args(args) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    seeds = args.seeds[:1] if args.quick else args.seeds
    if args.jobs < 1 or args.threads < 1:
        raise ConfigError("--jobs and --threads must be >= 1")
    ablate(seeds=seeds, quick=args.quick, iters=args.iters, out=args.out, config=args.config,
           overrides=args.overrides, progress=not args.no_progress and args.jobs == 1, jobs=args.jobs,
           threads=args.threads, docs=args.docs)
    return 0

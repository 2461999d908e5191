"""``python -m sepico.demo``: SePiCo against its source-only baseline on the synthetic benchmark, on CPU.

For each seed: train the source-only baseline and SePiCo (DistCL) with the small conv model
(``configs/synthetic_demo.toml``), evaluate both on the synthetic target test split (and on the
source test split, to show that the shift matters), then print a per-class IoU table and write
under ``--out``:

- ``summary.json``: ``source_only_miou`` and ``adapted_miou`` (means over the seeds), per-class IoU
  for both, the per-seed numbers, the spread, seeds, iterations, wall time, device;
- ``results.png``: per-class IoU bars and the training curves (loss, target mIoU during training);
- ``examples.png``: target image, ground truth, source-only and adapted predictions, in the
  Cityscapes palette (models of the first seed);
- ``seed<N>/source_only`` and ``seed<N>/adapted``: each run's own directory (config, metrics.jsonl,
  eval.json, final checkpoint).

``make demo`` runs one seed; ``make demo-seeds`` runs three and reports mean and spread.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sepico.files import atomic_write
from sepico.pages import write_block

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "synthetic_demo.toml"  # package data
RUNS = (("source_only", "source-only"), ("adapted", "SePiCo (DistCL)"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m sepico.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    p.add_argument("--iters", type=int, default=None,
                   help="iterations per run (default: the config's train.max_iters); the "
                        "source-only warm-up stays a quarter of the run")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="TOML config of the adapted run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both runs, e.g. --set data.test_length=50 (repeatable)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a busy 2-core machine two threads ran "
                        "this small model several times slower than one)")
    p.add_argument("--eval-points", type=int, default=6,
                   help="target-test evaluations during each run, for the curves (0: none)")
    p.add_argument("--examples", type=int, default=4, help="rows of the example grid")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--docs", metavar="PAGE",
                   help="also rewrite the 'demo-result' block of this page (docs/demo.md) and copy "
                        "summary.json, results.png and examples.png next to it (PAGE's folder/demo/)")
    return p.parse_args(argv)


def run_configs(args, seed: int):
    """(source-only config, adapted config) for one seed."""
    from sepico.train.config import load_config, validate

    cfg = load_config(args.config, args.overrides)
    if args.iters is not None:
        if args.iters < 1:
            raise SystemExit("--iters must be >= 1")
        ratio = cfg.method.start_self_training_iter / max(cfg.train.max_iters, 1)
        cfg.train.max_iters = args.iters
        cfg.method.start_self_training_iter = int(round(ratio * args.iters))
        cfg.optim.warmup_iters = min(cfg.optim.warmup_iters, max(args.iters // 10, 0))
        cfg.train.log_interval = max(1, min(cfg.train.log_interval, args.iters // 20 or 1))
    cfg.train.seed = seed
    cfg.train.checkpoint_interval = cfg.train.max_iters  # one checkpoint, at the end
    cfg.train.keep_checkpoints = 1
    cfg.train.eval_interval = _eval_interval(cfg.train.max_iters, args.eval_points)
    validate(cfg)
    source_only = copy.deepcopy(cfg)  # the same data, model, optimiser and seed
    source_only.method.variant = "source_only"
    source_only.name = f"{cfg.name}_source_only"
    validate(source_only)
    return source_only, cfg


def _eval_interval(max_iters: int, points: int) -> int:
    """The largest divisor of ``max_iters`` that gives at least ``points`` evaluations (0: none),
    so that the last one falls on the final iteration."""
    if points <= 0:
        return 0
    limit = max(1, max_iters // points)
    return max(d for d in range(1, limit + 1) if max_iters % d == 0)


def _class_names():
    from sepico.data import SYNTHETIC_CLASSES
    from sepico.data.cityscapes import CLASS_NAMES

    return {c: CLASS_NAMES[c] for c in SYNTHETIC_CLASSES}


def train_one(cfg, run_dir: Path, label: str, progress: bool):
    """Train one run; returns (trainer, target eval, source eval, wall seconds, curves)."""
    from sepico.data import SYNTHETIC_CLASSES, SyntheticStreets
    from sepico.evaluation import evaluate
    from sepico.train import Trainer

    if progress:
        print(f"\n== {label}: {cfg.train.max_iters} iterations, batch {cfg.train.batch_size} + "
              f"{cfg.train.batch_size} ==", flush=True)
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir, overwrite=True, progress=progress)  # a fresh run in the demo's folder
    target = trainer.train()
    wall = time.perf_counter() - start
    d = cfg.data
    source_test = SyntheticStreets("source", "test", size=tuple(int(v) for v in d.size),
                                   length=d.test_length, seed=d.seed)
    source = evaluate(trainer.model, source_test, num_classes=cfg.model.num_classes,
                      classes=SYNTHETIC_CLASSES, device=trainer.device,
                      batch_size=max(1, cfg.train.batch_size))
    curves = read_curves(run_dir / "metrics.jsonl")
    if curves["eval_iteration"] and curves["eval_iteration"][-1] != cfg.train.max_iters:
        curves["eval_iteration"].append(cfg.train.max_iters)
        curves["eval_miou"].append(target["miou"])
    return trainer, target, source, wall, curves


def read_curves(path: Path) -> dict:
    out = {"iteration": [], "loss_ce": [], "eval_iteration": [], "eval_miou": []}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "loss_ce" in rec:
            out["iteration"].append(rec["iteration"])
            out["loss_ce"].append(rec["loss_ce"])
        elif "miou" in rec:
            out["eval_iteration"].append(rec["iteration"])
            out["eval_miou"].append(rec["miou"])
    return out


def _stats(values):
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def summarise(per_seed: list[dict], seeds, iterations, wall, device, threads) -> dict:
    names = _class_names()

    def per_class(kind):
        return {names[c]: float(np.mean([s[kind]["target_iou"][str(c)] for s in per_seed]))
                for c in names}

    so = [s["source_only"]["target_miou"] for s in per_seed]
    ad = [s["adapted"]["target_miou"] for s in per_seed]
    so_src = [s["source_only"]["source_miou"] for s in per_seed]
    return {
        "source_only_miou": float(np.mean(so)),
        "adapted_miou": float(np.mean(ad)),
        "gain": float(np.mean(ad) - np.mean(so)),
        "source_only_per_class_iou": per_class("source_only"),
        "adapted_per_class_iou": per_class("adapted"),
        "source_only_source_domain_miou": float(np.mean(so_src)),
        "spread": {"source_only_miou": _stats(so), "adapted_miou": _stats(ad),
                   "gain": _stats(np.subtract(ad, so))},
        "seeds": list(seeds),
        "iterations": iterations,
        "per_seed": per_seed,
        "wall_time_s": wall,
        "device": device,
        "threads": threads,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "python": sys.version.split()[0]},
        "eval": "synthetic target test split; mIoU over the 9 synthetic classes, percent",
    }


def print_table(summary: dict, file=sys.stdout) -> None:
    so, ad = summary["source_only_per_class_iou"], summary["adapted_per_class_iou"]
    n = len(summary["seeds"])
    head = f"Target test IoU (%), {'mean of ' + str(n) + ' seeds' if n > 1 else 'seed ' + str(summary['seeds'][0])}"
    print(f"\n{head}\n{'class':<14}{'source-only':>12}{'adapted':>10}{'gain':>8}", file=file)
    for name in so:
        print(f"{name:<14}{so[name]:>12.1f}{ad[name]:>10.1f}{ad[name] - so[name]:>+8.1f}", file=file)
    print(f"{'mIoU':<14}{summary['source_only_miou']:>12.1f}{summary['adapted_miou']:>10.1f}"
          f"{summary['gain']:>+8.1f}", file=file)
    if n > 1:
        sp = summary["spread"]
        print(f"{'std (seeds)':<14}{sp['source_only_miou']['std']:>12.1f}"
              f"{sp['adapted_miou']['std']:>10.1f}{sp['gain']['std']:>8.1f}", file=file)
        for s in summary["per_seed"]:
            print(f"  seed {s['seed']}: source-only {s['source_only']['target_miou']:.1f}, adapted "
                  f"{s['adapted']['target_miou']:.1f}, gain "
                  f"{s['adapted']['target_miou'] - s['source_only']['target_miou']:+.1f}", file=file)
    print(f"source-only mIoU on the SOURCE test split: {summary['source_only_source_domain_miou']:.1f} "
          f"(on the target: {summary['source_only_miou']:.1f})", file=file)
    print(f"wall time {summary['wall_time_s']:.0f} s on {summary['device']} "
          f"({summary['threads']} threads)", file=file)


def markdown_table(summary: dict) -> str:
    """The per-seed table and the per-class means, as docs/demo.md shows them."""
    rows = ["| seed | source-only, source test | source-only, target test | SePiCo (DistCL), target test | gain |",
            "|---|---|---|---|---|"]
    for s in summary["per_seed"]:
        so, ad = s["source_only"]["target_miou"], s["adapted"]["target_miou"]
        rows.append(f"| {s['seed']} | {s['source_only']['source_miou']:.1f} | {so:.1f} | {ad:.1f} | {ad - so:+.1f} |")
    sp = summary["spread"]
    rows.append(f"| **mean (std)** | {summary['source_only_source_domain_miou']:.1f} | "
                f"**{summary['source_only_miou']:.1f}** ({sp['source_only_miou']['std']:.1f}) | "
                f"**{summary['adapted_miou']:.1f}** ({sp['adapted_miou']['std']:.1f}) | "
                f"**{summary['gain']:+.1f}** ({sp['gain']['std']:.1f}) |")
    so, ad = summary["source_only_per_class_iou"], summary["adapted_per_class_iou"]
    classes = ", ".join(f"{name} {so[name]:.1f} -> {ad[name]:.1f}" for name in so)
    return "\n".join(rows) + (f"\n\nPer class (mean of the {len(summary['seeds'])} seeds), source-only -> "
                               f"adapted: {classes}. {summary['iterations']} iterations a run; "
                               f"{summary['wall_time_s']:.0f} s in all on {summary['device']} "
                               f"({summary['threads']} thread(s)).")


def plot_results(summary: dict, curves: dict, path: Path) -> None:
    """Per-class IoU bars (mean over seeds, whiskers min..max) and the training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["source_only_per_class_iou"])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    ax = axes[0]
    x = np.arange(len(names) + 1)
    for k, (key, label) in enumerate(RUNS):
        per_seed = np.array([[s[key]["target_iou"][c] for c in _iou_keys()] + [s[key]["target_miou"]]
                             for s in summary["per_seed"]])
        mean = per_seed.mean(0)
        err = np.stack([mean - per_seed.min(0), per_seed.max(0) - mean]) if len(per_seed) > 1 else None
        ax.bar(x + (k - 0.5) * 0.4, mean, 0.4, yerr=err, capsize=2, label=label,
               color=("#9e9e9e", "#1f77b4")[k])
    ax.set_xticks(x, names + ["mIoU"], rotation=30, ha="right")
    ax.set_ylabel("IoU on the target test split (%)")
    ax.set_ylim(0, 100)
    seeds = summary["seeds"]
    ax.set_title(f"Per-class IoU, {'mean of seeds ' + ', '.join(map(str, seeds)) if len(seeds) > 1 else 'seed ' + str(seeds[0])}"
                 f" (mIoU {summary['source_only_miou']:.1f} -> {summary['adapted_miou']:.1f})")
    ax.legend(loc="upper right")
    for k, (key, label) in enumerate(RUNS):
        color = ("#9e9e9e", "#1f77b4")[k]
        for i, c in enumerate(curves[key]):
            kw = {"color": color, "alpha": 1.0 if i == 0 else 0.45, "lw": 1.2,
                  "label": label if i == 0 else None}
            if c["iteration"]:
                axes[1].plot(c["iteration"], c["loss_ce"], **kw)
            if c["eval_iteration"]:
                axes[2].plot(c["eval_iteration"], c["eval_miou"], marker="o", ms=3, **kw)
    warm = summary.get("self_training_from")
    for a in axes[1:]:
        if warm:
            a.axvline(warm, color="k", ls=":", lw=1)
        a.set_xlabel("iteration")
        a.legend()
    axes[1].set_title("Source cross-entropy (training)")
    axes[1].set_yscale("log")
    axes[2].set_title("Target test mIoU during training")
    axes[2].set_ylabel("mIoU (%)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _iou_keys():
    from sepico.data import SYNTHETIC_CLASSES

    return [str(c) for c in SYNTHETIC_CLASSES]


@torch.no_grad()
@torch.no_grad()
def predict(model, images, device, num_classes: int) -> torch.Tensor:
    """Train ids [B, H, W] of [0, 1] images: the evaluation's whole-image inference."""
    from sepico.evaluation import predict_logits

    was = model.training
    model.eval()
    try:
        logits = predict_logits(model, images.to(device), images.shape[-2:], num_classes=num_classes)
    finally:
        model.train(was)
    return logits.argmax(1).cpu()


def plot_examples(models: dict, cfg, count: int, path: Path, device) -> None:
    """Rows: target test scenes; columns: image, ground truth, source-only, adapted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sepico.data import SyntheticStreets
    from sepico.data.cityscapes import colorize

    d = cfg.data
    data = SyntheticStreets("target", "test", size=tuple(int(v) for v in d.size),
                            length=d.test_length, seed=d.seed)
    count = max(1, min(count, len(data)))
    images, labels = map(torch.stack, zip(*[data[i] for i in range(count)]))
    preds = {key: predict(models[key], images, device, cfg.model.num_classes) for key, _ in RUNS}
    h, w = images.shape[-2:]
    fig, axes = plt.subplots(count, 4, figsize=(4 * 3.2, count * 3.2 * h / w + 0.6), squeeze=False)
    titles = ["target image", "ground truth", "source-only", "SePiCo (DistCL)"]
    for r in range(count):
        panels = [images[r].permute(1, 2, 0).numpy(), colorize(labels[r].numpy()),
                  colorize(preds["source_only"][r].numpy().astype(np.uint8)),
                  colorize(preds["adapted"][r].numpy().astype(np.uint8))]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c])
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    start = time.perf_counter()
    per_seed, curves, first_models, first_cfg, device = [], {k: [] for k, _ in RUNS}, None, None, None
    total = 2 * len(args.seeds)
    for i, seed in enumerate(args.seeds):
        cfgs = dict(zip((k for k, _ in RUNS), run_configs(args, seed)))
        record = {"seed": seed}
        models = {}
        for j, (key, label) in enumerate(RUNS):
            n = 2 * i + j + 1
            trainer, target, source, wall, c = train_one(
                cfgs[key], out / f"seed{seed}" / key, f"[{n}/{total}] seed {seed}, {label}", progress)
            device = str(trainer.device)
            record[key] = {"target_miou": target["miou"],
                           "target_iou": {str(k): v for k, v in target["iou"].items()},
                           "source_miou": source["miou"],
                           "source_iou": {str(k): v for k, v in source["iou"].items()},
                           "wall_time_s": wall}
            curves[key].append(c)
            models[key] = trainer.model
            if progress:
                print(f"   target mIoU {target['miou']:.1f}, source mIoU {source['miou']:.1f}, "
                      f"{wall:.0f} s", flush=True)
        per_seed.append(record)
        if first_models is None:
            first_models, first_cfg = models, cfgs["adapted"]
    cfg = first_cfg
    summary = summarise(per_seed, args.seeds, cfg.train.max_iters, time.perf_counter() - start,
                        device, threads)
    summary["self_training_from"] = cfg.method.start_self_training_iter
    summary["config"] = {"adapted": cfg.to_dict(), "source_only_variant": "source_only"}
    plot_results(summary, curves, out / "results.png")
    plot_examples(first_models, cfg, args.examples, out / "examples.png", device)
    summary["wall_time_s"] = time.perf_counter() - start
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, default=_json_default))
    print_table(summary)
    print(f"wrote {out / 'summary.json'}, {out / 'results.png'}, {out / 'examples.png'}")
    if args.docs:
        folder = Path(args.docs).parent / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "results.png", "examples.png"):
            atomic_write(folder / name, (out / name).read_bytes())
        write_block(args.docs, "demo-result", markdown_table(summary))
        print(f"wrote the 'demo-result' block of {args.docs} and {folder}/")
    return summary


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    main()

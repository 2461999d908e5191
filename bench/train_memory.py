"""Peak process memory of one full SePiCo training iteration on the CPU, with each memory measure
switched off in turn, and the model's parameter / optimizer / teacher / activation budget.

    python -m bench.train_memory                                # every case, 512 x 1024 and 1024 x 2048
    python -m bench.train_memory --sizes 512x1024 --cases all_on,no_checkpointing
    python -m bench.train_memory --budget                       # the byte budget only (no iteration)
    python -m bench.train_memory --sizes 256x512                # a quick check of every case
    python -m bench.train_memory --sizes 1024x2048 --cases all_on --dim 512   # the published D

The iteration is ``Trainer.step()`` of DAFormer MiT-B5 (random init), D = 256, C = 19, float32,
batch 1 source + 1 target image of the given size, DistCL with the contrastive losses, pseudo
labels and ClassMix all active (``start_distribution_iter = 0``; pseudo-label threshold 0, so the
target contrastive loss covers every target pixel outside the ignored rows), read from a small GTA5 ->
Cityscapes fixture tree of images of exactly that size written to a temporary folder. Cases:

- ``all_on``: encoder activation checkpointing, the fused DistCL and estimator update
  (``sepico.losses`` / ``kernels``), teacher passes under ``torch.no_grad``;
- ``no_checkpointing``: every encoder activation kept for the backward;
- ``reference_losses``: DistCL as the public code writes it and the public estimator update,
  which expands the source pixels to N x C x D (``sepico.reference``);
- ``teacher_grad``: the teacher run with autograd on (its parameters requiring grad), as a loop
  that forgets ``no_grad`` does: its graph lives until the end of the iteration.

Every case runs in a fresh Python process (MALLOC_MMAP_THRESHOLD_=1 MiB, so freed large blocks go
back to the system, and malloc_trim before the step). A warm-up step on a 64 x 128 corner of the
batches comes first (AdamW's moments, code pages, thread pools: a steady-state iteration). "peak" is VmHWM after resetting it through
/proc/self/clear_refs just before ``step()``: the whole process (interpreter, libraries, student,
teacher, optimizer state, data) at its highest point during the iteration. A watchdog stops a case
whose resident size passes ``--limit-gib`` and reports it as above that limit. Linux only.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.memory import status_kb

ROOT = Path(__file__).resolve().parents[1]

CASES = ("all_on", "no_checkpointing", "reference_losses", "teacher_grad")
SIZES = {"256x512": (256, 512), "512x1024": (512, 1024), "1024x2048": (1024, 2048)}
DEFAULT_SIZES = ("512x1024", "1024x2048")
MODEL, DIM, C = "daformer_mit_b5", 256, 19
GIB = 2 ** 30
# Cityscapes label ids of the 19 train ids (sepico.data.label_maps), for the fixture labels.
EVALUATED_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


# --------------------------------------------------------------------------- fixture and config

def write_fixture(root: Path, height: int, width: int) -> tuple[Path, Path]:
    """A GTA5 tree (2 images) and a Cityscapes tree (2 train, 1 val) of height x width images:
    labels of blocks of all 19 classes plus ignored blocks; images coloured by class."""
    import numpy as np
    from PIL import Image

    from sepico.data.cityscapes import PALETTE

    block = max(height // 16, 8)
    gy, gx = np.meshgrid(np.arange(height) // block, np.arange(width) // block, indexing="ij")

    def label(seed):
        cell = (gy * 7 + gx * 3 + seed) % 21   # 19 classes and 2 ignored cells in 21
        ids = np.where(cell < 19, np.asarray(EVALUATED_IDS)[np.minimum(cell, 18)], 0).astype(np.uint8)
        train = np.where(cell < 19, cell, 255)
        colour = np.where((train < 19)[..., None], PALETTE[np.minimum(train, 18)], 0)
        shade = (np.arange(width)[None, :, None] * 64 // width).astype(np.uint8)
        return ids, (colour.astype(np.uint8) // 2 + shade).astype(np.uint8)

    gta5, cityscapes = root / "gta5", root / "cityscapes"
    for i in range(2):
        ids, image = label(i)
        for path, array in ((gta5 / "images" / f"{i:05d}.png", image), (gta5 / "labels" / f"{i:05d}.png", ids)):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path, compress_level=1)
    for split, count in (("train", 2), ("val", 1)):
        for i in range(count):
            ids, image = label(10 + i)
            stem = f"fixture_{i:06d}_000019"
            for path, array in (
                    (cityscapes / "leftImg8bit" / split / "fixture" / f"{stem}_leftImg8bit.png", image),
                    (cityscapes / "gtFine" / split / "fixture" / f"{stem}_gtFine_labelIds.png", ids)):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path, compress_level=1)
    return gta5, cityscapes


def iteration_config(gta5: Path, cityscapes: Path, height: int, width: int, *, checkpointing: bool,
                     device: str = "cpu", amp: bool = False, run_dir: str = "", dim: int = DIM):
    """One source + one target image of height x width, MiT-B5, D = ``dim`` (256), every loss term on."""
    from sepico.train.config import from_dict, validate

    cfg = from_dict({
        "name": "train_memory",
        "data": {"source": "gta5", "source_root": str(gta5), "target": "cityscapes",
                 "target_root": str(cityscapes), "crop_size": [height, width], "flip": False,
                 "cat_max_ratio": 1.0},
        "model": {"name": MODEL, "num_classes": C, "proj_dim": dim, "head_channels": 256,
                  "activation_checkpointing": checkpointing},
        # Threshold 0: every target pixel counts as confident, so the target contrastive loss
        # sees all its pixels (a random-init teacher is never 0.968-confident: that term would
        # otherwise run on an empty set of pixels).
        "method": {"variant": "dist", "start_distribution_iter": 0, "pseudo_threshold": 0.0,
                   "ignore_top": 15, "ignore_bottom": 120 * height // 1024},
        "train": {"max_iters": 40000, "batch_size": 1, "device": device, "amp": amp,
                  "run_dir": run_dir},
    })
    validate(cfg)
    return cfg


def apply_case(trainer, case: str) -> None:
    """Switch one memory measure off on a built trainer (``all_on`` and ``no_checkpointing``
    need nothing here: checkpointing is a config field)."""
    from sepico import reference
    from sepico.data.transforms import normalize

    task, method_cfg = trainer.task, trainer.cfg.method
    if case == "reference_losses":
        est = trainer.sepico.estimator
        pixels = dict(use_avg_pool=method_cfg.use_avg_pool, scale_min_ratio=method_cfg.scale_min_ratio,
                      num_classes=C)

        def loss(emb, labels, iteration=0):  # labels at feature resolution already: a pooling by 1
            return method_cfg.contrast_weight * reference.dist_contrastive_map_reference(
                emb.float(), labels, est.mean, est.cov, ratio=method_cfg.ratio,
                temperature=method_cfg.temperature, reg_weight=method_cfg.reg_weight, **pixels)

        def update_distribution(images, labels):
            with task.teacher_pass():
                emb = task.teacher.project(task.teacher.encode(normalize(images)))
            feats, valid = reference.contrast_pixels_reference(emb, labels, **pixels)
            est._count, est._mean, est._cov = reference.update_class_distribution_onehot_reference(
                est.count, est.mean, est.cov, feats.float(), valid)
            return trainer.sepico.labels(labels, emb.shape[-2:])

        trainer.sepico.loss = loss
        task.update_distribution = update_distribution
    elif case == "teacher_grad":
        # The teacher passes with autograd on, as a loop that forgets no_grad: their graphs live
        # as long as their outputs.
        @contextlib.contextmanager
        def teacher_pass():
            with task.autocast():
                yield

        task.teacher_pass = teacher_pass
        for p in trainer.teacher.parameters():
            p.requires_grad_(True)
    elif case not in ("all_on", "no_checkpointing"):
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")


class _FixedBatch:
    def __init__(self, batch):
        self.batch = batch

    def next(self):
        return self.batch


def warm_up(trainer, size=(64, 128)) -> None:
    """One full step on a corner of the next batches: creates AdamW's moments and brings in the
    code pages, thread pools and caches that every later iteration has, so that the measured
    step is a steady-state one."""
    streams = trainer.source, trainer.target
    h, w = size
    trainer.source, trainer.target = (_FixedBatch(tuple(t[..., :h, :w] for t in s.next())) for s in streams)
    try:
        trainer.step()
    finally:
        trainer.source, trainer.target = streams


def budget(trainer) -> dict:
    """Bytes of the student's parameters, their gradients, AdamW's two moments, the teacher's
    parameters and buffers, and the estimator's statistics."""
    model, teacher = trainer.model, trainer.teacher
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    params = nbytes(model.parameters())
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if hasattr(v, "numel")]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "encoder_parameters": sum(p.numel() for p in model.encoder_parameters()),
        "student_bytes": params + nbytes(model.buffers()),
        "gradient_bytes": params,
        "optimizer_bytes": nbytes(state) if state else 2 * params,
        "teacher_bytes": nbytes(teacher.parameters()) + nbytes(teacher.buffers()),
        "estimator_bytes": nbytes(trainer.sepico.state_dict().values()),
    }


# --------------------------------------------------------------------------- one case (child)

def _child(args) -> None:
    import torch

    from sepico.train import Trainer

    height, width = SIZES[args.size]
    gta5, cityscapes = Path(args.root) / "gta5", Path(args.root) / "cityscapes"
    cfg = iteration_config(gta5, cityscapes, height, width, checkpointing=args.case != "no_checkpointing",
                           run_dir=str(Path(args.root) / f"run_{args.case}"), dim=args.dim)
    trainer = Trainer(cfg, progress=False)
    apply_case(trainer, args.case)
    row = {"case": args.case, "size": args.size, "D": args.dim, "threads": torch.get_num_threads(),
           **budget(trainer)}
    if args.budget:
        print(json.dumps(row))
        return
    warm_up(trainer)
    ctypes.CDLL(None).malloc_trim(0)
    before = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    start = time.perf_counter()
    log = trainer.step()
    seconds = time.perf_counter() - start
    row |= {"before_gib": before / 2 ** 20, "peak_gib": status_kb("VmHWM") / 2 ** 20,
            "after_gib": status_kb("VmRSS") / 2 ** 20, "step_s": seconds,
            "losses": {k: v for k, v in log.items() if k.startswith("loss")}}
    print(json.dumps(row))


# --------------------------------------------------------------------------- driver

def _run_case(case, size, root, limit_gib, budget_only=False, dim=DIM) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", KERNELS_BACKEND="torch")
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "bench.train_memory", "--child", case, "--size", size, "--root", str(root),
           "--dim", str(dim)]
    proc = subprocess.Popen(cmd + (["--budget"] if budget_only else []), env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped, highest = [], [0]

    def watch():
        while proc.poll() is None:
            try:
                rss = status_kb("VmRSS", proc.pid) / 2 ** 20
            except (FileNotFoundError, ProcessLookupError, RuntimeError):  # gone, or a zombie
                return
            highest[0] = max(highest[0], rss)
            if rss > limit_gib:
                stopped.append(rss)
                proc.kill()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    if stopped:
        return {"case": case, "size": size, "stopped_above_gib": limit_gib}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"case": case, "size": size, "error": (err.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def _gib(x) -> str:
    return f"{x / GIB:.2f}"


def report(rows, out=sys.stdout) -> None:
    """Markdown tables: the measured peaks and the byte budget with its bfloat16 GPU estimate."""
    print("| size | case | peak process memory (GiB) | before the step (GiB) | step (s) |", file=out)
    print("|---|---|---|---|---|", file=out)
    for r in rows:
        if "peak_gib" in r:
            print(f"| {r['size']} | {r['case']} | {r['peak_gib']:.2f} | {r['before_gib']:.2f} | "
                  f"{r['step_s']:.0f} |", file=out)
        elif "stopped_above_gib" in r:
            print(f"| {r['size']} | {r['case']} | > {r['stopped_above_gib']:.1f} (stopped) | | |", file=out)
        elif "error" in r:
            print(f"| {r['size']} | {r['case']} | failed: {r['error']} | | |", file=out)
    base = next((r for r in rows if "parameters" in r), None)
    if base is None:
        return
    static = base["student_bytes"] + base["optimizer_bytes"] + base["teacher_bytes"]
    print(f"\n{MODEL}: {base['parameters']:,} parameters ({base['encoder_parameters']:,} in the encoder)",
          file=out)
    print("\n| item | bytes | GiB |\n|---|---|---|", file=out)
    for key in ("student_bytes", "gradient_bytes", "optimizer_bytes", "teacher_bytes", "estimator_bytes"):
        print(f"| {key[:-6]} | {base[key]:,} | {_gib(base[key])} |", file=out)
    for r in rows:
        if r.get("case") != "all_on" or "peak_gib" not in r:
            continue
        # Activations and workspace: what the step added on top of the resident state, less the
        # gradients (alive from the first backward to the optimizer step).
        activations = (r["peak_gib"] - r["before_gib"]) * GIB - base["gradient_bytes"]
        gpu = static + base["gradient_bytes"] + activations / 2
        print(f"| activations + workspace at {r['size']} (float32, measured) | {activations:,.0f} | "
              f"{_gib(activations)} |", file=out)
        print(f"| estimated GPU peak at {r['size']}, bfloat16 autocast (float32 weights, gradients, "
              f"AdamW, teacher + half the activations) | {gpu:,.0f} | {_gib(gpu)} |", file=out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                        help="comma list of " + ", ".join(SIZES) + " (256x512: a quick check)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of " + ", ".join(CASES))
    parser.add_argument("--budget", action="store_true", help="the byte budget only, no iteration")
    parser.add_argument("--limit-gib", type=float, default=20.0,
                        help="stop a case whose resident size passes this (default 20)")
    parser.add_argument("--dim", type=int, default=DIM, help=f"projection dimension D (default {DIM}; published 512)")
    parser.add_argument("--out", help="also write the rows as JSON lines here")
    parser.add_argument("--docs", metavar="PAGE",
                        help="also rewrite the 'train-memory-d<D>' block of this page (docs/memory.md)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.case = args.child
        _child(args)
        return
    sizes = [s for s in args.sizes.split(",") if s]
    cases = [c for c in args.cases.split(",") if c]
    for name in sizes:
        if name not in SIZES:
            parser.error(f"unknown size {name!r}; choose from {', '.join(SIZES)}")
    for case in cases:
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    import torch

    print(f"# python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} cores, {MODEL}, D = {args.dim}, C = {C}, float32, 1 source + 1 target image",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sepico_train_memory_") as tmp:
        for name in sizes:
            root = Path(tmp) / name
            write_fixture(root, *SIZES[name])
            for case in (cases[:1] if args.budget else cases):
                row = _run_case(case, name, root, args.limit_gib, budget_only=args.budget, dim=args.dim)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print()
    report(rows)
    if args.docs:
        import io

        from sepico.pages import write_block

        text = io.StringIO()
        report(rows, out=text)
        write_block(args.docs, f"train-memory-d{args.dim}",
                    f"`python -m bench.train_memory --sizes {args.sizes} --cases {args.cases} --dim {args.dim}`, "
                    f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, torch "
                    f"{torch.__version__}:\n\n{text.getvalue()}")
        print(f"wrote the 'train-memory-d{args.dim}' block of {args.docs}")


if __name__ == "__main__":
    main()

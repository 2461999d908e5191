"""The full-resolution SePiCo training iteration of bench/train_memory.py on a GPU: peak
``torch.cuda.max_memory_allocated``, iteration time and NVML readings.

    python -m bench.train_gpu                          # 1024 x 2048, all measures on, bfloat16
    python -m bench.train_gpu --size 512x1024 --case no_checkpointing --iters 5
    python -m bench.train_gpu --no-amp                 # float32
    python -m bench.train_gpu --dim 512                # the published projection width
    python -m bench.train_gpu --device cpu --size 64x128 --iters 1 --warmup 0    # a CPU smoke run

Same iteration as the CPU memory table: ``Trainer.step()`` of DAFormer MiT-B5 (random init),
D = 256, C = 19, 1 source + 1 target image, every loss term on, on a GTA5 -> Cityscapes fixture
tree of images of the given size. ``--warmup`` steps run first (Triton compilation, cuDNN
autotuning, AdamW state), then the peak statistics are reset and ``--iters`` steps are timed
one by one (``torch.cuda.synchronize`` around each). NVML (nvidia-ml-py, optional) is sampled
every 50 ms during the timed steps: the device's used memory (which includes the CUDA context
and the caching allocator's reserve, unlike ``max_memory_allocated``), power and utilisation.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.train_memory import (CASES, DIM, MODEL, SIZES, C, apply_case, budget, iteration_config,
                                write_fixture)

GIB = 2 ** 30


class NvmlSampler:
    """Samples device memory used, power and utilisation in a thread; empty without pynvml."""

    def __init__(self, index: int, period: float = 0.05):
        self.samples, self.period, self._stop = [], period, threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
            self.available = True
        except Exception as err:  # no nvidia-ml-py or no driver: report without NVML
            self.available, self.reason = False, f"{type(err).__name__}: {err}"

    def _run(self):
        nv, h = self._nvml, self._handle
        while not self._stop.is_set():
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            self.samples.append((mem.used, nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                                 nv.nvmlDeviceGetUtilizationRates(h).gpu))
            time.sleep(self.period)

    def __enter__(self):
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.available:
            self._stop.set()
            self._thread.join()

    def summary(self) -> dict:
        if not self.available:
            return {"nvml": f"unavailable ({self.reason})"}
        if not self.samples:
            return {"nvml": "no samples"}
        used, power, util = zip(*self.samples)
        return {"nvml_peak_used_gib": max(used) / GIB, "nvml_mean_power_w": statistics.fmean(power),
                "nvml_peak_power_w": max(power), "nvml_mean_util_pct": statistics.fmean(util),
                "nvml_samples": len(self.samples)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1024x2048", help="HxW of both images (default 1024x2048)")
    parser.add_argument("--case", default="all_on", choices=CASES)
    parser.add_argument("--dim", type=int, default=DIM, help=f"projection dimension D (default {DIM}; published 512)")
    parser.add_argument("--iters", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--no-amp", action="store_true", help="float32 instead of bfloat16 autocast")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a smoke run)")
    parser.add_argument("--out", help="also write the result JSON here")
    args = parser.parse_args()

    import torch

    from sepico.train import Trainer

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("train_gpu.py: no GPU here (torch.cuda.is_available() is False); "
                 "bench/train_memory.py measures the CPU process instead")
    try:
        height, width = SIZES.get(args.size) or tuple(int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be HxW, e.g. 1024x2048, got {args.size!r}")
    with tempfile.TemporaryDirectory(prefix="sepico_train_gpu_") as tmp:
        gta5, cityscapes = write_fixture(Path(tmp), height, width)
        cfg = iteration_config(gta5, cityscapes, height, width,
                               checkpointing=args.case != "no_checkpointing", device=args.device,
                               amp=not args.no_amp, run_dir=str(Path(tmp) / "run"), dim=args.dim)
        trainer = Trainer(cfg, progress=False)
        apply_case(trainer, args.case)
        for _ in range(args.warmup):
            trainer.step()
        device = trainer.device
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times, log = [], {}
        sampler = NvmlSampler(device.index or 0) if cuda else _Nothing()
        with sampler as nvml:
            for _ in range(args.iters):
                start = time.perf_counter()
                log = trainer.step()
                if cuda:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
        row = {"model": MODEL, "D": args.dim, "C": C, "size": args.size, "case": args.case,
               "amp_bf16": not args.no_amp and cuda, "device": (torch.cuda.get_device_name(device)
                                                                if cuda else platform.processor() or "cpu"),
               "torch": torch.__version__, "iters": args.iters, "warmup": args.warmup,
               "step_s_median": statistics.median(times) if times else None,
               "step_s_min": min(times) if times else None,
               "losses": {k: v for k, v in log.items() if k.startswith("loss")}, **budget(trainer)}
        if cuda:
            row |= {"max_memory_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
                    "max_memory_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
                    **nvml.summary()}
    text = json.dumps(row, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()

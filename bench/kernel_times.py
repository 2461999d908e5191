"""Where the time of one call of our losses goes: the op's time against the device time of each
kernel it launches (``torch.profiler``), for the quick benchmark's loss cases.

    python -m bench.kernel_times [--device cuda|cpu] [--tiny] [--calls 10] [--out FILE.json [--force]]

Per case and mode (fwd+bwd with the gradient, fwd under ``torch.no_grad``): the median time of a
call measured as the benchmark measures it (CUDA events; perf_counter on the CPU), the kernels'
device time per call (their sum and the largest ones by name) and the rest, which is time the
device waited for the host (launches, checks, allocation). ``make gpu-check`` runs it; on the CPU
(``--tiny`` there) every op is a host op and the split says only that the step runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _device_time_us(evt, cuda: bool) -> float:
    if not cuda:
        return evt.self_cpu_time_total
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return getattr(evt, name)
    return 0.0


def measure(case, mode: str, device: str, calls: int) -> dict:
    import dataclasses

    from torch.profiler import ProfilerActivity, profile

    from bench import impls
    from bench.cases import make_inputs
    from bench.timing import Timer, call

    cuda = device == "cuda"
    inputs = make_inputs(case, device=device)
    run = impls.build(case, "ours", inputs, impls.ours_backend(device))
    timer = Timer(device)
    timed = case if mode == "fwd+bwd" else dataclasses.replace(case, kind="no_grad")

    def once() -> float:  # one call as the benchmark times it (bench.timing.call)
        return call(timed, run, inputs["feats"], timer)[mode]

    for _ in range(3):  # compilation, allocator
        once()
    times = [once() for _ in range(calls)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            once()
    kernels = []
    for evt in prof.key_averages():
        if cuda and str(getattr(evt, "device_type", "")).endswith("CPU"):
            continue
        us = _device_time_us(evt, cuda)
        if us > 0:
            kernels.append({"name": evt.key[:90], "ms_per_call": us / 1e3 / calls, "count": evt.count // calls})
    kernels.sort(key=lambda k: -k["ms_per_call"])
    op_ms = statistics.median(times) * 1e3
    busy = sum(k["ms_per_call"] for k in kernels) if cuda else None
    return {"op": case.op, "mode": mode, "n": case.n, "d": case.d, "op_ms": op_ms,
            "kernels_ms": busy, "host_wait_ms": None if busy is None else max(0.0, op_ms - busy),
            "top": kernels[:6]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="the tiny set's sizes (N = 4096, D = 64)")
    parser.add_argument("--calls", type=int, default=10, help="timed and profiled calls per case")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--force", action="store_true",
                        help="let --out replace a file that is not an earlier result of this command")
    args = parser.parse_args(argv)

    import torch

    from bench.cases import cases
    from sepico.errors import OutputError
    from sepico.files import atomic_write, check_output

    if args.out:  # before the minutes of measuring: never a file this command did not write
        try:
            check_output(args.out, what="--out", ours=_earlier_result, force=args.force)
        except OutputError as err:
            print(f"bench.kernel_times: {err}", file=sys.stderr)
            return 2

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.kernel_times: no CUDA device (use --device cpu)", file=sys.stderr)
        return 2
    rows = []
    for case in [c for c in cases("loss", "tiny" if args.tiny else "quick", args.device) if c.kind == "train"]:
        for mode in ("fwd+bwd", "fwd (no grad)"):
            row = measure(case, mode, args.device, args.calls)
            rows.append(row)
            split = ("" if row["kernels_ms"] is None else
                     f"; kernels {row['kernels_ms']:.3f} ms, host wait {row['host_wait_ms']:.3f} ms")
            print(f"{row['op']} {mode} N={row['n']} D={row['d']}: {row['op_ms']:.3f} ms per call{split}", flush=True)
            for k in row["top"]:
                print(f"    {k['ms_per_call']:8.3f} ms x{k['count']}  {k['name']}", flush=True)
    if args.out:
        atomic_write(args.out, json.dumps({"device": args.device, "rows": rows}, indent=1) + "\n")
    return 0


def _earlier_result(path: Path) -> bool:
    try:
        return set(json.loads(path.read_text())) == {"device", "rows"}
    except (OSError, UnicodeDecodeError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())

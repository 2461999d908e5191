"""Timing one call (perf_counter on the CPU, CUDA events on a GPU) and the statistics of the
rounds."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from bench.cases import Case


# --------------------------------------------------------------------------- one call

class Timer:
    """perf_counter on the CPU; CUDA events (read after one synchronize) on a GPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def mark(self):
        import torch
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def elapsed(self, a, b) -> float:
        import torch
        if self.cuda:
            torch.cuda.synchronize()
            return a.elapsed_time(b) / 1e3
        return b - a


def call(case: Case, run, feats, timer: Timer, hooks=None) -> dict:
    """Run one call; return {mode: seconds}. ``hooks`` (memory probes) run between phases."""
    import torch

    hooks = hooks or {}
    if case.kind == "train":
        x = feats.detach().requires_grad_()
        hooks.get("start", lambda: None)()
        t0 = timer.mark()
        loss = run(x)
        t1 = timer.mark()
        hooks.get("between", lambda: None)()
        t1b = timer.mark() if "between" in hooks else t1
        loss.backward()
        t2 = timer.mark()
        hooks.get("end", lambda: None)()
        fwd, bwd = timer.elapsed(t0, t1), timer.elapsed(t1b, t2)
        del loss, x
        return {"fwd+bwd": fwd + bwd, "bwd": bwd}
    if case.kind == "no_grad":
        hooks.get("start", lambda: None)()
        with torch.no_grad():
            t0 = timer.mark()
            out = run(feats)
            t1 = timer.mark()
        hooks.get("end", lambda: None)()
        del out
        return {"fwd (no grad)": timer.elapsed(t0, t1)}
    hooks.get("start", lambda: None)()
    t0 = timer.mark()
    out = run()
    t1 = timer.mark()
    hooks.get("end", lambda: None)()
    del out
    return {"forward": timer.elapsed(t0, t1)}


# --------------------------------------------------------------------------- statistics

def quantile(values, q: float) -> float:
    """Linear-interpolated quantile (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Row:
    op: str
    impl: str
    mode: str
    n: int
    d: int
    c: int
    dtype: str
    device: str
    torch: str
    triton: str
    threads: int
    status: str = "ok"
    median_s: float | None = None
    p20_s: float | None = None
    p80_s: float | None = None
    rounds: int = 0
    timed_in: str = ""
    peak_bytes: int | None = None
    grad_buffer_bytes: int = 0
    note: str = ""
    gb_per_s: float | None = None
    tflop_per_s: float | None = None
    floor_s: float | None = None
    floor_tf32_s: float | None = None
    nvml: dict | None = None
    times_s: list = field(default_factory=list)
    sys_s: list = field(default_factory=list)   # CPU: kernel (system) time of each timed call

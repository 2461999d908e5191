"""The benchmark suites' runner: one case, every implementation side by side, as ``Row`` s.

One *case* is an op at one size (N, D, C = 19) and dtype (``bench.cases``), measured for every
implementation (``bench.impls``) side by side:

* **time** (``bench.timing``): in the pytest process, implementations interleaved round by round
  (the order rotates every round) after a warm-up, so that a slow spell of a shared machine hits
  all of them alike. ``time.perf_counter`` on the CPU, CUDA events on a GPU. Median, p20 and p80
  over the rounds. A loss call is timed as forward and backward separately: "fwd+bwd" is their
  sum, "bwd" the backward alone; "fwd (no grad)" is a separate call under ``torch.no_grad()``.
* **peak memory above the inputs** (``bench.memory``): on a CPU, a fresh Python process per case
  and implementation (``python -m bench.memory --child SPEC``): it builds the inputs, warms up,
  hands freed heap back (``malloc_trim``), resets the peak resident size (``5`` into
  ``/proc/self/clear_refs``), runs the op once and reads ``VmHWM`` from ``/proc/self/status``.
  Every block of 1 MiB or more is mmapped (``MALLOC_MMAP_THRESHOLD_``), so freed memory cannot
  hide a later allocation. On a GPU, ``torch.cuda.max_memory_allocated`` in the pytest process.
  The returned gradient is output and counts (it is most of the floor of a loss).
* **out of memory**: the child runs under ``RLIMIT_AS`` = its address space after warm-up plus
  what the machine has available (less a margin), so a case that does not fit fails its own
  allocation and is reported as "out of memory"; the pytest process never runs an
  implementation whose child did not fit.

The machine and the roofline floors: ``bench.environment``; the report: ``bench.report``.
"""
from __future__ import annotations

import contextlib
import gc
import resource

from bench.cases import C, Case, MEMORY_MARGIN, SLOW_S, Settings, make_inputs, modes
from bench.environment import device_name, floor_s, versions, work
from bench.impls import build, impl_label, ours_backend
from bench.memory import NvmlSampler, is_oom, mem_available, gpu_peak, measure_in_child
from bench.timing import Row, Timer, call, quantile


# --------------------------------------------------------------------------- one case, all impls

def check_rows(rows: list[Row]) -> None:
    """A suite's verdict on one case: every implementation ran, or was legitimately not run
    (unsupported here, out of memory); a timed row has a median; and at least one row was timed."""
    failed = [f"{r.impl} {r.mode}: {r.status}" for r in rows
              if r.status != "ok" and not r.status.startswith(("unsupported", "out of memory"))]
    assert not failed, "; ".join(failed)
    assert any(r.status == "ok" and r.median_s is not None for r in rows), "no implementation was timed"


def run_case(case: Case, settings: Settings, benchmark=None) -> list[Row]:
    """Measure every implementation of ``case``: memory first (it also says what fits), then
    interleaved timing rounds. Returns one row per (implementation, mode)."""
    import torch

    dev = settings.device
    meta = dict(op=case.op, n=case.n, d=case.d, c=C, dtype=case.dtype, device=device_name(dev),
                threads=settings.threads, **versions())
    buffer = case.n * case.d * 4
    rows = {}
    child = {}
    for impl in case.impls:
        for mode in modes(case):
            rows[impl, mode] = Row(impl=impl_label(impl, dev), mode=mode,
                                   grad_buffer_bytes=buffer, **meta)
        if dev == "cpu":
            child[impl] = measure_in_child(case, impl, settings.threads)
            res = child[impl]
            for mode in modes(case):
                row = rows[impl, mode]
                row.status = res["status"]
                row.note = res.get("note", "")
                if res["status"] == "ok":
                    row.peak_bytes = int(res["peak"][mode])

    timer = Timer(dev)
    torch._dynamo.reset()   # compiled graphs of earlier cases: not this case's
    inputs = make_inputs(case, device=dev)
    backend = ours_backend(dev)
    runs, slow = {}, {}
    for impl in case.impls:
        if rows[impl, modes(case)[0]].status != "ok":
            continue
        try:
            if impl != "compiled":
                small = make_inputs(case, n=min(case.n, 4096), device=dev)
                call(case, build(case, impl, small, backend), small["feats"], timer)
                del small
            run = build(case, impl, inputs, backend)
            if dev == "cuda":
                if impl == "compiled":
                    call(case, run, inputs["feats"], timer)   # compile before the memory probe
                torch.cuda.empty_cache()
                peaks, times = gpu_peak(case, run, inputs["feats"], timer)
                for mode in modes(case):
                    rows[impl, mode].peak_bytes = int(peaks[mode])
            estimate = child[impl]["time"] if dev == "cpu" else times
            first = max(estimate.values())
            if dev == "cpu" and max(child[impl]["peak"].values()) > mem_available() - MEMORY_MARGIN:
                # It fitted in its child, but not beside this process's inputs right now.
                for mode in modes(case):
                    rows[impl, mode].note = "not timed: not enough free memory beside the inputs"
                continue
            if first > SLOW_S:
                # Too slow to repeat within the budget: the single measured call (the memory
                # child's on a CPU, the memory probe's on a GPU).
                slow[impl] = estimate
                continue
            if impl == "compiled" or first < 2.5:
                call(case, run, inputs["feats"], timer)   # warm at full size (compiles)
            runs[impl] = (run, first)
        except Exception as exc:  # noqa: BLE001 - one failing implementation is one row
            status = "out of memory" if is_oom(exc) else f"failed: {type(exc).__name__}: {exc}"
            if dev == "cuda":
                torch.cuda.empty_cache()
            for mode in modes(case):
                rows[impl, mode].status = status.splitlines()[0][:200]
                rows[impl, mode].peak_bytes = None

    times = {impl: {mode: [] for mode in modes(case)} for impl in runs}
    sys_times = {impl: [] for impl in runs}
    order = list(runs)
    per_round = sum(f for _, f in runs.values())
    rounds = max(settings.min_rounds, min(settings.max_rounds,
                                          int(settings.budget_s / max(per_round, 1e-3))))
    state = {"round": 0}

    def one_round():
        r = state["round"]
        state["round"] += 1
        for impl in order[r % len(order):] + order[:r % len(order)]:
            gc.collect()
            if sampler is not None:
                if dev == "cuda":
                    torch.cuda.synchronize()
                sampler.tag = impl
            before = resource.getrusage(resource.RUSAGE_SELF).ru_stime if dev == "cpu" else 0.0
            for mode, t in call(case, runs[impl][0], inputs["feats"], timer).items():
                times[impl][mode].append(t)
            if dev == "cpu":   # page faults and the like: the kernel's share of the call
                sys_times[impl].append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - before)

    sampler = NvmlSampler() if dev == "cuda" else None
    with sampler if sampler is not None else contextlib.nullcontext():
        if order and benchmark is not None:
            benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
        elif order:
            for _ in range(rounds):
                one_round()
        elif benchmark is not None:
            # Every implementation was timed in its memory child (or did not run): nothing for
            # pytest-benchmark to time, and no empty entry in its table.
            benchmark.disabled = True
            benchmark.pedantic(lambda: None, rounds=1, iterations=1)

    for impl in case.impls:
        for mode in modes(case):
            row = rows[impl, mode]
            if impl in times:
                ts = times[impl][mode]
                row.timed_in = "pytest process, interleaved"
                row.sys_s = sys_times[impl]
            elif impl in slow:
                ts = [slow[impl][mode]]
                row.timed_in = "one call, in its memory measurement"
            else:
                continue
            row.times_s = ts
            row.rounds = len(ts)
            row.median_s, row.p20_s, row.p80_s = quantile(ts, 0.5), quantile(ts, 0.2), quantile(ts, 0.8)
            if dev == "cuda":
                nbytes, flops = work(case, mode)
                row.gb_per_s = nbytes / row.median_s / 1e9
                row.tflop_per_s = flops / row.median_s / 1e12
                row.floor_s = floor_s(case, mode)
                row.floor_tf32_s = floor_s(case, mode, tf32=True)
                row.nvml = sampler.summary(impl) if sampler is not None else None
    return list(rows.values())

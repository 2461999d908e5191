"""Peak memory of one implementation of a case: on a CPU a fresh process per case and
implementation (``python -m bench.memory --child SPEC``, VmHWM after clear_refs, RLIMIT_AS for out
of memory); on a GPU max_memory_allocated and NVML readings."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import threading
from dataclasses import asdict

from bench.cases import Case, MEMORY_MARGIN, ROOT, input_bytes, make_inputs, modes
from bench.impls import Unsupported, build, ours_backend
from bench.timing import Timer, call


# --------------------------------------------------------------------------- memory child (CPU)

def status_kb(field: str, pid="self") -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM, VmSize); also used by the memory scripts."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def mem_available() -> int:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    ctypes.CDLL(None).malloc_trim(0)   # hand freed heap back, so reusing it counts as growth
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, MemoryError) or any(
        s in text for s in ("can't allocate memory", "cannot allocate memory", "out of memory",
                            "not enough memory", "std::bad_alloc"))


def child_main(spec: dict) -> dict:
    """Measure one (case, implementation) in this fresh process: peak above inputs per mode and
    the time of the measured call."""
    import torch

    torch.set_num_threads(spec["threads"])
    case = Case(**{k: (tuple(v) if k == "impls" else v) for k, v in spec["case"].items()})
    impl = spec["impl"]
    backend = ours_backend("cpu")
    timer = Timer("cpu")
    # The limit holds from here on, warm-up (and torch.compile at the full shape) included: a
    # case that does not fit fails its own allocation instead of pushing the machine into the
    # OOM killer.
    limit = int(status_kb("VmSize") * 1024 + max(0, mem_available() - MEMORY_MARGIN))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        # Warm-up: libraries, thread pools, the allocator. torch.compile is warmed (compiled)
        # at the measured shape, so neither its time nor its memory is the op's.
        if impl != "compiled":
            small = make_inputs(case, n=min(case.n, 4096))
            call(case, build(case, impl, small, backend), small["feats"], timer)
            del small
        inputs = make_inputs(case)
        run = build(case, impl, inputs, backend)
        if impl == "compiled":
            call(case, run, inputs["feats"], timer)
    except Unsupported as exc:
        return {"status": f"unsupported: {exc}"}
    except Exception as exc:  # noqa: BLE001 - reported in the row, not raised
        if is_oom(exc):
            return {"status": "out of memory", "note": f"in warm-up; limit {limit / 2**30:.1f} GiB "
                                                       f"address space"}
        return {"status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    gc.collect()
    marks = {}

    def probe(name):
        def fn():
            marks[name] = (status_kb("VmRSS"), status_kb("VmHWM"))
            if name in ("start", "between"):
                _reset_peak()
                marks[name + "_after_reset"] = status_kb("VmRSS")
        return fn

    hooks = {k: probe(k) for k in ("start", "between", "end")}
    try:
        times = call(case, run, inputs["feats"], timer, hooks)
    except Exception as exc:  # noqa: BLE001 - reported in the row, not raised
        if is_oom(exc):
            return {"status": "out of memory",
                    "note": f"limit {limit / 2**30:.1f} GiB address space"}
        return {"status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    base = marks["start_after_reset"] * 1024
    peaks = {}
    if case.kind == "train":
        hwm_fwd = marks["between"][1] * 1024
        hwm_bwd = marks["end"][1] * 1024
        peaks["fwd+bwd"] = max(hwm_fwd, hwm_bwd) - base
        peaks["bwd"] = hwm_bwd - marks["between_after_reset"] * 1024
    else:
        peaks[modes(case)[0]] = marks["end"][1] * 1024 - base
    return {"status": "ok", "peak": peaks, "time": times, "inputs": input_bytes(inputs)}


def measure_in_child(case: Case, impl: str, threads: int) -> dict:
    spec = {"case": asdict(case), "impl": impl, "threads": threads}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    env.pop("KERNELS_POISON", None)
    proc = subprocess.run([sys.executable, "-m", "bench.memory", "--child", json.dumps(spec)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    if proc.returncode < 0 or "memory" in err.lower():
        return {"status": "out of memory" if "memory" in err.lower() else
                f"failed: signal {-proc.returncode}", "note": err[:160]}
    return {"status": f"failed: {err[:160]}"}


# --------------------------------------------------------------------------- GPU readings

class NvmlSampler:
    """Samples NVML (memory used, SM clock, power) every 10 ms while a case runs on a GPU."""

    def __init__(self):
        self.samples = []
        self.tag = None   # the implementation running now: samples are kept per implementation
        self._stop = threading.Event()
        self._thread = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML: the rows say so
            self._nvml = None

    def __enter__(self):
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self):
        nv, h = self._nvml, self._handle
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((self.tag, nv.nvmlDeviceGetMemoryInfo(h).used,
                                     nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                                     nv.nvmlDeviceGetPowerUsage(h) / 1e3))
            self._stop.wait(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, tag) -> dict | None:
        mine = [s[1:] for s in self.samples if s[0] == tag]
        if not mine:
            return None
        used, clock, power = zip(*mine)
        return {"memory_used_max_GB": max(used) / 1e9, "sm_clock_median_MHz": sorted(clock)[len(clock) // 2],
                "power_max_W": max(power)}


def gpu_peak(case: Case, run, feats, timer) -> dict:
    import torch
    marks = {}

    def probe(name):
        def fn():
            torch.cuda.synchronize()
            marks[name] = (torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        return fn

    times = call(case, run, feats, timer, {k: probe(k) for k in ("start", "between", "end")})
    if case.kind == "train":
        return {"fwd+bwd": max(marks["between"][1], marks["end"][1]) - marks["start"][0],
                "bwd": marks["end"][1] - marks["between"][0]}, times
    return {modes(case)[0]: marks["end"][1] - marks["start"][0]}, times


# --------------------------------------------------------------------------- child entry point

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child_main(json.loads(sys.argv[2]))), flush=True)
    else:
        print("internal: python -m bench.memory --child SPEC (run by the suites)", file=sys.stderr)
        sys.exit(2)

"""Shared machinery of the benchmark suites: cases, inputs, implementations, timing and memory.

One *case* is an op at one size (N, D, C = 19) and dtype, measured for every implementation side
by side:

* **time**: in the pytest process, implementations interleaved round by round (the order
  rotates every round) after a warm-up, so that a slow spell of a shared machine hits all of
  them alike. ``time.perf_counter`` on the CPU, CUDA events on a GPU. Median, p20 and p80 over
  the rounds. A loss call is timed as forward and backward separately: "fwd+bwd" is their sum,
  "bwd" the backward alone; "fwd (no grad)" is a separate call under ``torch.no_grad()``.
* **peak memory above the inputs**: on a CPU, a fresh Python process per case and
  implementation (``python -m bench.common --child SPEC``): it builds the inputs, warms up, hands
  freed heap back (``malloc_trim``), resets the peak resident size (``5`` into
  ``/proc/self/clear_refs``), runs the op once and reads ``VmHWM`` from ``/proc/self/status``.
  Every block of 1 MiB or more is mmapped (``MALLOC_MMAP_THRESHOLD_``), so freed memory cannot
  hide a later allocation. On a GPU, ``torch.cuda.max_memory_allocated`` in the pytest process.
  The returned gradient is output and counts (it is most of the floor of a loss).
* **out of memory**: the child runs under ``RLIMIT_AS`` = its address space after warm-up plus
  what the machine has available (less a margin), so a case that does not fit fails its own
  allocation and is reported as "out of memory"; the pytest process never runs an
  implementation whose child did not fit.

Baselines are imported from ``sepico/reference.py``; nothing here re-implements them.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "bench", "results")

C = 19
SIZES = {  # name: (N, what it is)
    "2x160x160": 2 * 160 * 160,     # two 640 x 640 crops at stride 4
    "2x256x512": 2 * 256 * 512,     # two full-resolution 1024 x 2048 images at stride 4
    "2x512x1024": 2 * 512 * 1024,   # the same at stride 2
}
DIMS = (64, 256, 512)
DTYPES = ("float32", "bfloat16")
IGNORED = 0.1            # share of ignored (255) labels
TARGET_N, TARGET_D = SIZES["2x256x512"], 256
SLOW_S = 5.0             # a call slower than this is timed once, in its memory child
MEMORY_MARGIN = 1.5 * 2 ** 30   # left to the rest of the machine when a child sets its limit

# Op families and their ops. The loss ops have modes fwd+bwd, bwd (both from one "train"
# measurement) and fwd (no grad); moments and the update one mode, "forward".
LOSS_OPS = {"loss ProtoCL": None, "loss DistCL diag": "diag", "loss DistCL full": "full",
            "loss BankCL": "bank"}
BANK_LENGTH = 200  # the published memory_length: the queue of every class full
MOMENT_OPS = {"class_moments diag": "diag", "class_moments full": "full"}
UPDATE_OPS = {"update_class_distribution diag": "diag", "update_class_distribution full": "full"}
FAMILY_OPS = {"loss": LOSS_OPS, "moments": MOMENT_OPS, "update": UPDATE_OPS}

IMPL_LABEL = {
    "eager": "eager reference",
    "compiled": "torch.compile(reference)",
    "onehot": "one-hot N x C x D reference",
    "ours": "ours",
    "ours_tf32": "ours (triton, TF32 dots)",
}


@dataclass(frozen=True)
class Case:
    """One op at one size and dtype, and the implementations to put side by side."""
    family: str          # "loss" | "moments" | "update"
    op: str              # a key of FAMILY_OPS[family]
    kind: str            # "train" (fwd+bwd and bwd) | "no_grad" | "forward"
    n: int
    d: int
    dtype: str
    impls: tuple

    @property
    def id(self) -> str:
        return (f"{self.op.replace(' ', '-')}-{self.kind}-N{self.n}-D{self.d}-{self.dtype}")


@dataclass
class Settings:
    set_name: str = "quick"
    device: str = "cpu"
    threads: int = 1
    budget_s: float = 10.0       # timing budget per case (all implementations)
    max_rounds: int = 15
    min_rounds: int = 5


# --------------------------------------------------------------------------- the sets

SETS = ("quick", "medium", "full", "tiny")
TINY_N, TINY_D = 4096, 64  # the tiny set: the quick set's cases at a size any machine runs in seconds


def cases(family: str, set_name: str, device: str = "cpu") -> list[Case]:
    """The cases of one family in a set: "quick" (the CPU targets), "medium" (every op, size
    and implementation at D = 256, float32) or "full" (D in 64, 256, 512; float32 and bfloat16)."""
    out = []
    if set_name in ("quick", "tiny"):
        # The CPU targets: N = 2 x 256 x 512, D = 256, float32, eager vs ours (on a GPU also
        # torch.compile of the reference); "tiny" runs the same cases small (make gpu-check's dry run).
        n, d, dt = (TARGET_N, TARGET_D, "float32") if set_name == "quick" else (TINY_N, TINY_D, "float32")
        impls = ("eager", "compiled", "ours") if device == "cuda" else ("eager", "ours")
        if family == "loss":
            out += [Case("loss", "loss DistCL diag", "train", n, d, dt, impls),
                    Case("loss", "loss DistCL diag", "no_grad", n, d, dt, impls),
                    Case("loss", "loss DistCL full", "train", n, d, dt, impls),
                    Case("loss", "loss BankCL", "train", n, d, dt, ("eager", "ours"))]
        elif family == "update":
            out.append(Case("update", "update_class_distribution diag", "forward", n, d, dt,
                            ("onehot",) + impls))
        return out
    dtypes, dims = (("float32",), (TARGET_D,)) if set_name == "medium" else (DTYPES, DIMS)
    for op, cov in FAMILY_OPS[family].items():
        for dt in dtypes:
            for d in dims:
                for n in SIZES.values():
                    if family == "loss":
                        impls = ("eager", "compiled", "ours")
                        if device == "cuda" and cov is not None:
                            impls += ("ours_tf32",)   # the opt-in tensor-core path
                        out += [Case(family, op, "train", n, d, dt, impls),
                                Case(family, op, "no_grad", n, d, dt, impls)]
                    else:
                        impls = ("eager", "compiled", "ours")
                        if family == "update" and cov == "diag":
                            impls = ("onehot",) + impls
                        out.append(Case(family, op, "forward", n, d, dt, impls))
    return out


def modes(case: Case) -> tuple:
    return {"train": ("fwd+bwd", "bwd"), "no_grad": ("fwd (no grad)",),
            "forward": ("forward",)}[case.kind]


# --------------------------------------------------------------------------- environment

def device_name(device: str) -> str:
    import torch
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return f"{model} ({os.cpu_count()} cores)"


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions() -> dict:
    import torch
    import triton
    return {"torch": torch.__version__, "triton": triton.__version__}


def result_stem(device: str, set_name: str) -> str:
    date = _dt.date.today().isoformat()
    suffix = "" if set_name == "full" else f"-{set_name}"
    return os.path.join(RESULTS_DIR, f"{device_slug(device_name(device))}-{date}{suffix}")


# --------------------------------------------------------------------------- inputs

def make_inputs(case: Case, n: int | None = None, device: str = "cpu", seed: int = 0) -> dict:
    """Feats [N, D] (L2-normalised, as the projection head gives them), int64 labels with 10 %
    ignored, class statistics. Statistics go to ours in float32 and to the references in the
    feats dtype (their matmuls need one dtype), as the tests do."""
    import torch
    import torch.nn.functional as F

    n = case.n if n is None else n
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator().manual_seed(seed + n + case.d)
    feats = F.normalize(torch.randn(n, case.d, generator=gen), dim=1).to(dtype)
    labels = torch.randint(0, C, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < IGNORED] = 255
    mean = F.normalize(torch.randn(C, case.d, generator=gen), dim=1)
    cov_kind = FAMILY_OPS[case.family][case.op]
    if cov_kind == "full":
        root = torch.randn(C, case.d, case.d, generator=gen) / case.d
        cov = root @ root.transpose(1, 2) * 0.1
    else:
        cov = torch.rand(C, case.d, generator=gen) * 1e-2
    count = torch.randint(0, 10_000, (C,), generator=gen).float()
    out = dict(feats=feats, labels=labels, mean=mean, cov=cov, count=count)
    if cov_kind == "bank":  # every queue full: BANK_LENGTH past batch means near the class mean
        out["bank"] = F.normalize(mean[:, None] + 0.1 * torch.randn(C, BANK_LENGTH, case.d, generator=gen), dim=2)
        out["bank_len"] = torch.full((C,), BANK_LENGTH)
    out = {k: v.to(device) for k, v in out.items()}
    out["mean_ref"], out["cov_ref"] = out["mean"].to(dtype), out["cov"].to(dtype)
    return out


def input_bytes(inputs: dict) -> int:
    return sum(t.numel() * t.element_size() for k, t in inputs.items() if not k.endswith("_ref"))


# --------------------------------------------------------------------------- implementations

class Unsupported(Exception):
    """The implementation does not take this case (ours: D > 256 with a full covariance)."""


def build(case: Case, impl: str, inputs: dict, backend: str):
    """A callable for one implementation of ``case`` on ``inputs``.

    Loss ops return ``run(feats) -> loss`` (the caller sets requires_grad and calls backward);
    moments and updates return ``run() -> outputs``.
    """
    import torch

    import kernels
    from sepico import reference

    cov_kind = FAMILY_OPS[case.family][case.op]
    labels, mean, cov = inputs["labels"], inputs["mean"], inputs["cov"]
    mean_r, cov_r = inputs["mean_ref"], inputs["cov_ref"]
    feats = inputs["feats"]
    if case.family == "loss" and cov_kind == "bank":
        bank, lengths = inputs["bank"], inputs["bank_len"]
        if impl == "ours":
            def run(x):
                with kernels.backend(backend):
                    return kernels.bank_contrastive_loss(x, labels, bank, lengths)
            return run
        if impl == "eager":  # the public code's per-class loop, on the rows as a 1 x N map
            queues = list(bank.to(feats.dtype).unbind(0))
            return lambda x: reference.bank_contrastive_map_reference(
                x.T.reshape(1, x.shape[1], 1, -1), labels.reshape(1, 1, 1, -1), queues, num_classes=C)
    elif case.family == "loss":
        cov = None if cov_kind is None else cov
        cov_r = None if cov_kind is None else cov_r
        if impl in ("ours", "ours_tf32"):
            if cov_kind == "full" and case.d > 256:
                raise Unsupported("full covariance takes D <= 256")
            tf32 = impl == "ours_tf32"

            def run(x):
                # TF32 is the caller's opt-in, the PyTorch way (kernels/README.md).
                before = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
                try:
                    with kernels.backend(backend):
                        return kernels.dist_contrastive_loss(x, labels, mean, cov)
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = before
            return run
        fn = reference.dist_contrastive_loss_reference
        if impl == "compiled":
            fn = torch.compile(fn, dynamic=False)
        if impl in ("eager", "compiled"):
            return lambda x: fn(x, labels, mean_r, cov_r)
    elif case.family == "moments":
        if impl == "ours":
            if cov_kind == "full" and case.d > 256:
                raise Unsupported("full covariance takes D <= 256")

            def run():
                with kernels.backend(backend):
                    return kernels.class_moments(feats, labels, C, covariance=cov_kind)
            return run
        fn = reference.class_moments_reference
        if impl == "compiled":
            fn = torch.compile(fn, dynamic=False)
        if impl in ("eager", "compiled"):
            return lambda: fn(feats, labels, C, covariance=cov_kind)
    elif case.family == "update":
        count = inputs["count"]
        if impl == "ours":
            if cov_kind == "full" and case.d > 256:
                raise Unsupported("full covariance takes D <= 256")

            def run():
                with kernels.backend(backend):
                    return kernels.update_class_distribution(count, mean, cov, feats, labels)
            return run
        if impl == "onehot":
            if cov_kind != "diag":
                raise Unsupported("the one-hot estimator keeps a diagonal covariance")
            return lambda: reference.update_class_distribution_onehot_reference(
                count, mean, cov, feats, labels)
        fn = reference.update_class_distribution_reference
        if impl == "compiled":
            fn = torch.compile(fn, dynamic=False)
        if impl in ("eager", "compiled"):
            return lambda: fn(count, mean, cov, feats, labels)
    raise ValueError(f"no implementation {impl!r} for {case.op}")


def ours_backend(device: str) -> str:
    return "torch" if device == "cpu" else "auto"


def impl_label(impl: str, device: str) -> str:
    if impl == "ours":
        return f"ours ({'torch' if device == 'cpu' else 'triton'})"
    return IMPL_LABEL[impl]


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


# --------------------------------------------------------------------------- memory child (CPU)

def status_kb(field: str, pid="self") -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM, VmSize); also used by the memory scripts."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _mem_available() -> int:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    ctypes.CDLL(None).malloc_trim(0)   # hand freed heap back, so reusing it counts as growth
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _is_oom(exc: BaseException) -> bool:
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
    limit = int(status_kb("VmSize") * 1024 + max(0, _mem_available() - MEMORY_MARGIN))
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
        if _is_oom(exc):
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
        if _is_oom(exc):
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
    proc = subprocess.run([sys.executable, "-m", "bench.common", "--child", json.dumps(spec)],
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


# --------------------------------------------------------------------------- floors (kernels/README.md)

H100 = {"name": "H100 SXM", "bytes_per_s": 3e12, "fp32_flops": 60e12, "tf32_flops": 400e12}
# Peak HBM bandwidth by device name (vendor figures), for the share of peak a row reaches.
PEAK_BYTES_PER_S = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "A100-SXM4-80GB": 2.04e12,
                    "A100-SXM4-40GB": 1.555e12}


def peak_bytes_per_s(device_name: str) -> float | None:
    """The vendor's peak memory bandwidth of a CUDA device, by its name (None when unknown)."""
    name = device_name.replace("NVIDIA ", "")
    for key, value in PEAK_BYTES_PER_S.items():
        if key in name or (key == "H100 SXM" and "H100" in name and "PCIe" not in name):
            return value
    return None


def work(case: Case, mode: str) -> tuple[float, float]:
    """(bytes, FLOPs) an op must move and do, as kernels/README.md counts them (int64 labels,
    no pixel weights)."""
    n, d, b, lab = case.n, case.d, 4 if case.dtype == "float32" else 2, 8
    cov = FAMILY_OPS[case.family][case.op]
    feats_and_labels = n * (d * b + lab)
    if case.family == "moments":
        if cov == "diag":
            return feats_and_labels + 2 * C * d * 4, 3 * n * d
        return feats_and_labels + C * d * 4 + C * d * d * 4, 2 * n * d * d
    if case.family == "update":
        small = C * d * 4 * (3 if cov == "diag" else 1) + (C * d * d * 4 * 2 if cov == "full" else 0)
        return 2 * feats_and_labels + small, (4 * n * d if cov == "diag" else 2 * n * d * d)
    backward = 8 * n * d + (6 * n * d if b == 2 else 0)
    kernel_fwd = feats_and_labels + 4 * n
    kernel_grad = kernel_fwd + 4 * n * d
    length = BANK_LENGTH
    flops = {"bank": (4 * n * (length + C) * d, 2 * n * (length + C) * d),
             None: (4 * n * C * d, 2 * n * C * d),
             "diag": (8 * n * C * d + 4 * n * d, 4 * n * C * d + n * d),
             "full": (2 * n * C * d * d + 6 * n * C * d, 2 * n * C * d * d + 4 * n * C * d)}[cov]
    if mode == "fwd+bwd":
        return kernel_grad + backward, flops[0]
    if mode == "bwd":
        return backward, 2 * n * d
    return kernel_fwd, flops[1]


def floor_s(case: Case, mode: str, tf32: bool = False) -> float:
    """The H100 roofline floor: FP32 FMA peak for exact (ieee) dots, TF32 tensor cores when
    opted in."""
    nbytes, flops = work(case, mode)
    return max(nbytes / H100["bytes_per_s"], flops / H100["tf32_flops" if tf32 else "fp32_flops"])


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
            if dev == "cpu" and max(child[impl]["peak"].values()) > _mem_available() - MEMORY_MARGIN:
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
            status = "out of memory" if _is_oom(exc) else f"failed: {type(exc).__name__}: {exc}"
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


# --------------------------------------------------------------------------- child entry point

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child_main(json.loads(sys.argv[2]))), flush=True)
    else:
        print("internal: python -m bench.common --child SPEC (run by the suites)", file=sys.stderr)
        sys.exit(2)

"""The machine a benchmark runs on (device name, versions, result file names) and the roofline
floors of the ops (bytes and FLOPs as kernels/README.md counts them)."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import re

from bench.cases import BANK_LENGTH, C, Case, FAMILY_OPS, RESULTS_DIR


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

"""``make gpu-check``: everything a GPU machine should tell us, in one run of a few minutes.

    python -m bench.gpu_check [--out DIR] [--install-s SECONDS]

Steps, each in its own process with a time limit (a step that fails or runs out of time is
reported, and the others still run):

1. ``tests/test_cuda.py``: the compiled kernels against float64 (float32, TF32, bfloat16),
   N x D beyond 2^31, bitwise repeatability, ``torch.compile``, a bfloat16 training step;
2. the quick benchmark (``pytest bench --bench-set=quick``) on CUDA: eager reference,
   ``torch.compile(reference)`` and ours side by side, with the achieved bandwidth (bytes the op
   must move / median time) and its share of the device's peak, and TFLOP/s;
3. ``python -m bench.train_gpu`` at 1024 x 2048 with D = 512 in bfloat16: peak memory, seconds per
   iteration;
4. ``python -m bench.kernel_times``: per loss case, the op's time against its kernels' device time
   (``torch.profiler``), so that a slow op says whether its kernel or the host is the cause.

It writes ``bench/results/<device>-<date>-gpu-check.{md,json}`` and each step's whole output
(``...-gpu-check-<step>.log``) and, with ``--out`` (default: ``$GPU_CHECK_OUT``), the same files
there. Without CUDA it prints "no CUDA device: dry run",
runs the same steps on the CPU at tiny sizes (the benchmark's ``tiny`` set, a 64 x 128 training
step), writes only to ``--out`` and exits 0.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Together at most 7 minutes, so that the check and a rerun fit in 15 minutes of GPU time (an H200
# took 146, 91, 23 s for the first three).
STEP_LIMIT_S = {"cuda_tests": 210, "benchmark": 120, "training": 60, "kernel_times": 60}


def _run(cmd, limit_s, env=None) -> dict:
    """Run one step, its kernels compiled (never the Triton interpreter); its exit status, wall
    time and the tail of its output."""
    start = time.perf_counter()
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **(env or {})}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit_s, env=env)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        partial = err.stdout or ""
        rc, out = "timeout", partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    return {"command": " ".join(str(c) for c in cmd), "returncode": rc,
            "wall_s": round(time.perf_counter() - start, 1), "output_tail": out[-4000:], "output": out}


_SUMMARY = re.compile(r"^=*\s*\d+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected)\b.* in [\d.]+s")


def pytest_counts(output: str) -> dict:
    """{"passed": n, "failed": n, "skipped": n, ...} from pytest's closing line alone (a failure
    message such as "tf32 error 1.1e-03" once counted as 32 errors)."""
    closing = next((line for line in reversed(output.splitlines()) if _SUMMARY.match(line)), "")
    counts = {}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", closing):
        counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
    return counts


def cuda_tests(py: str) -> dict:
    step = _run([py, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                STEP_LIMIT_S["cuda_tests"], env={"KERNELS_TEST_COMPILED": "1"})
    step["counts"] = pytest_counts(step["output"])
    step["failures"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", step["output"], flags=re.M)
    return step


def benchmark(py: str, cuda: bool, tmp: Path) -> dict:
    rows_file = tmp / "bench.json"
    # The CPU dry run only shows that every step runs: 1 s of timing per case is plenty there.
    cmd = [py, "-m", "pytest", "bench", "-q", f"--bench-set={'quick' if cuda else 'tiny'}",
           f"--bench-device={'cuda' if cuda else 'cpu'}", f"--bench-budget={5 if cuda else 1}",
           f"--bench-json={rows_file}"]
    if not cuda:
        cmd.append("--bench-no-write")
    step = _run(cmd, STEP_LIMIT_S["benchmark"])
    step["rows"] = json.loads(rows_file.read_text())["rows"] if rows_file.exists() else []
    return step


def bandwidth_table(rows: list[dict], device: str) -> list[dict]:
    """Per op, mode and implementation: median, speed-up over eager, GB/s and share of peak."""
    from bench import cases, environment

    peak = environment.peak_bytes_per_s(device) if device else None
    eager = {(r["op"], r["mode"]): r["median_s"] for r in rows
             if r["impl"].startswith("eager") and r.get("median_s")}
    table = []
    for r in rows:
        if r.get("status") != "ok" or not r.get("median_s"):
            table.append({"op": r["op"], "mode": r["mode"], "impl": r["impl"], "status": r.get("status")})
            continue
        nbytes, flops = environment.work(cases.Case(
            family=_family(r["op"]), op=r["op"], kind="forward", n=r["n"], d=r["d"], dtype=r["dtype"],
            impls=()), r["mode"])
        gbps = nbytes / r["median_s"] / 1e9
        base = eager.get((r["op"], r["mode"]))
        table.append({"op": r["op"], "mode": r["mode"], "impl": r["impl"], "n": r["n"], "d": r["d"],
                      "median_ms": r["median_s"] * 1e3, "vs_eager": base / r["median_s"] if base else None,
                      "gb_per_s": gbps, "peak_share": gbps * 1e9 / peak if peak else None,
                      "tflop_per_s": flops / r["median_s"] / 1e12, "peak_bytes": r.get("peak_bytes"),
                      "status": "ok"})
    return table


def _family(op: str) -> str:
    return "loss" if op.startswith("loss") else "moments" if op.startswith("class_moments") else "update"


def training(py: str, cuda: bool, tmp: Path) -> dict:
    out = tmp / "train.json"
    args = (["--size", "1024x2048", "--dim", "512", "--iters", "3", "--warmup", "1"] if cuda else
            ["--device", "cpu", "--size", "64x128", "--dim", "16", "--iters", "1", "--warmup", "0"])
    step = _run([py, "-m", "bench.train_gpu", *args, "--out", str(out)], STEP_LIMIT_S["training"])
    step["result"] = json.loads(out.read_text()) if out.exists() else None
    return step


def kernel_times(py: str, cuda: bool, tmp: Path) -> dict:
    out = tmp / "kernel_times.json"
    args = ["--calls", "10"] if cuda else ["--device", "cpu", "--tiny", "--calls", "2"]
    step = _run([py, "-m", "bench.kernel_times", *args, "--out", str(out)], STEP_LIMIT_S["kernel_times"])
    step["rows"] = json.loads(out.read_text())["rows"] if out.exists() else []
    return step


def markdown(report: dict) -> str:
    env, tests, bench, train = report["environment"], report["cuda_tests"], report["benchmark"], report["training"]
    kind = "GPU" if report["cuda"] else "CPU dry run (no CUDA device): every figure below is a CPU figure"
    lines = [f"# gpu-check: {env['device']}, {report['date']}", "",
             f"{kind}. torch {env['torch']} (CUDA {env['torch_cuda']}), triton {env['triton']}; "
             f"installing the environment took {env['install_s']} s; the check took {report['wall_s']:.0f} s.", "",
             f"## CUDA tests (`tests/test_cuda.py`): exit {tests['returncode']}, {tests['wall_s']} s", "",
             ", ".join(f"{v} {k}" for k, v in tests["counts"].items()) or "no pytest summary", ""]
    lines += [f"- failed: `{name}`" for name in tests["failures"]]
    lines += ["", f"## Kernels: eager reference, torch.compile(reference), ours "
              f"(`{bench['command']}`): exit {bench['returncode']}, {bench['wall_s']} s", "",
              "| op | mode | implementation | median ms | speed-up vs eager | GB/s | share of peak bandwidth | TFLOP/s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["bandwidth"]:
        if r["status"] != "ok":
            lines.append(f"| {r['op']} | {r['mode']} | {r['impl']} | {r['status']} | | | | |")
            continue
        share = f"{100 * r['peak_share']:.1f} %" if r["peak_share"] is not None else "(peak unknown)"
        vs = f"{r['vs_eager']:.2f}x" if r["vs_eager"] else ""
        lines.append(f"| {r['op']} | {r['mode']} | {r['impl']} | {r['median_ms']:.3f} | {vs} | "
                     f"{r['gb_per_s']:.1f} | {share} | {r['tflop_per_s']:.2f} |")
    res = train.get("result") or {}
    lines += ["", f"## Training step (`{train['command']}`): exit {train['returncode']}, {train['wall_s']} s", ""]
    if res:
        keys = ("size", "D", "amp_bf16", "step_s_median", "max_memory_allocated_gib", "max_memory_reserved_gib",
                "nvml_peak_used_gib")
        lines += [f"- {k}: {res[k]:.3f}" if isinstance(res.get(k), float) else f"- {k}: {res.get(k)}"
                  for k in keys if k in res]
        if res.get("step_s_median"):
            lines.append(f"- iterations per second: {1 / res['step_s_median']:.3f}")
    else:
        lines.append("no result: see the output tail in the JSON")
    times = report["kernel_times"]
    lines += ["", f"## Where a loss call's time goes (`{times['command']}`): exit {times['returncode']}, "
              f"{times['wall_s']} s", "",
              "| op | mode | ms per call | kernels' device ms | host wait ms | largest kernel |",
              "|---|---|---|---|---|---|"]
    for r in times["rows"]:
        busy = "" if r["kernels_ms"] is None else f"{r['kernels_ms']:.3f}"
        wait = "" if r["host_wait_ms"] is None else f"{r['host_wait_ms']:.3f}"
        top = f"{r['top'][0]['name']} {r['top'][0]['ms_per_call']:.3f} ms" if r["top"] else ""
        lines.append(f"| {r['op']} | {r['mode']} | {r['op_ms']:.3f} | {busy} | {wait} | {top} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT") or None,
                        help="also write the report here (default: $GPU_CHECK_OUT)")
    parser.add_argument("--install-s", default="not measured",
                        help="seconds the environment install took (make gpu-check measures it)")
    args = parser.parse_args(argv)

    import torch
    import triton

    from bench import environment
    from sepico.files import atomic_write

    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA device: dry run", flush=True)
    started = time.perf_counter()
    py = sys.executable
    device = environment.device_name("cuda" if cuda else "cpu")
    report = {"cuda": cuda, "date": _dt.datetime.now().isoformat(timespec="seconds"),
              "environment": {"device": device, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                              "triton": triton.__version__, "install_s": args.install_s,
                              "python": sys.version.split()[0]}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tmp = Path(tmp)
        for name, fn in (("cuda_tests", lambda: cuda_tests(py)), ("benchmark", lambda: benchmark(py, cuda, tmp)),
                         ("training", lambda: training(py, cuda, tmp)),
                         ("kernel_times", lambda: kernel_times(py, cuda, tmp))):
            print(f"[gpu-check] {name} ...", flush=True)
            report[name] = fn()
            print(f"[gpu-check] {name}: exit {report[name]['returncode']} in {report[name]['wall_s']} s", flush=True)
    report["bandwidth"] = bandwidth_table(report["benchmark"]["rows"], device if cuda else "")
    report["wall_s"] = time.perf_counter() - started
    text = markdown(report)
    print(text)
    folders = [Path(args.out)] if args.out else []
    if cuda:
        folders.append(ROOT / "bench" / "results")
    stem = f"{environment.device_slug(device)}-{_dt.date.today().isoformat()}-gpu-check"
    logs = {name: report[name].pop("output") for name in STEP_LIMIT_S}
    for folder in folders:  # atomic writes: a temporary created exclusively, then renamed
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{stem}.json", json.dumps(report, indent=1, default=str) + "\n")
        atomic_write(folder / f"{stem}.md", text)
        for name, log in logs.items():
            atomic_write(folder / f"{stem}-{name}.log", log)
        print(f"wrote {folder / stem}.{{md,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

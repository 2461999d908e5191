"""Results of a benchmark run: JSON, markdown table, PNG plot and the target lines.

    python -m bench.report bench/results/<file>.json   # rebuild the .md and .png from a .json

Run by the suites at the end of a pytest run (bench/conftest.py); each run writes its files afresh.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import sys
from dataclasses import asdict

from bench import cases, environment

MB = 1e6
MODE_ORDER = {"fwd+bwd": 0, "bwd": 1, "fwd (no grad)": 2, "forward": 3}
IMPL_ORDER = ["one-hot", "eager", "torch.compile", "ours (torch)", "ours (triton)",
              "ours (triton, TF32"]


def row_dict(row) -> dict:
    return row if isinstance(row, dict) else asdict(row)


def _impl_rank(label: str) -> int:
    return next((i for i, p in enumerate(IMPL_ORDER) if label.startswith(p)), len(IMPL_ORDER))


def _sort_key(r: dict):
    return (r["op"], r["n"], r["d"], r["dtype"], MODE_ORDER.get(r["mode"], 9), _impl_rank(r["impl"]))


# --------------------------------------------------------------------------- targets

def _find(rows, op, impl_prefix, mode, n=cases.TARGET_N, d=cases.TARGET_D, dtype="float32"):
    for r in rows:
        if (r["op"] == op and r["impl"].startswith(impl_prefix) and r["mode"] == mode
                and r["n"] == n and r["d"] == d and r["dtype"] == dtype):
            return r
    return None


def _ok(r, what):
    return r is not None and r["status"] == "ok" and r[what] is not None


def targets(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The CPU targets at N = 2 x 256 x 512, D = 256, C = 19, float32, torch
    backend: (name, passed or None when not measured, figures)."""
    buf = cases.TARGET_N * cases.TARGET_D * 4
    out = []

    def ratio(name, slow, fast, what, need):
        if not (_ok(slow, what) and _ok(fast, what)):
            why = "; ".join(f"{r['impl']}: {r['status']}" for r in (slow, fast) if r is not None
                            and not _ok(r, what))
            out.append((name, None, f"not measured ({why or 'case not in this run'})"))
            return
        x = slow[what] / fast[what]
        unit = (lambda v: f"{v * 1e3:.0f} ms") if what == "median_s" else (lambda v: f"{v / MB:.0f} MB")
        text = f"{x:.2f}x (need >= {need:g}x): {fast['impl']} {unit(fast[what])} vs {slow['impl']} {unit(slow[what])}"
        if what == "median_s" and fast.get("sys_s") and slow.get("sys_s"):
            # Kernel (system) time per call, mostly page faults of fresh memory: on a VM it varies
            # from round to round, and it is where the run-to-run spread of these ratios comes from.
            text += (f"; kernel time per call, median (max): {_ms(statistics.median(fast['sys_s']))} "
                     f"({_ms(max(fast['sys_s']))}) vs {_ms(statistics.median(slow['sys_s']))} "
                     f"({_ms(max(slow['sys_s']))}) ms")
        out.append((name, x >= need, text))

    def cap(name, r, limit):
        if not _ok(r, "peak_bytes"):
            out.append((name, None, f"not measured ({r['status'] if r else 'case not in this run'})"))
            return
        x = r["peak_bytes"] / buf
        out.append((name, x <= limit, f"{x:.3f}x the {buf / MB:.0f} MB gradient buffer "
                                      f"({r['peak_bytes'] / MB:.1f} MB; need <= {limit:g}x)"))

    diag, full, upd = cases.loss_op("dist", "diag"), cases.loss_op("dist", "full"), "update_class_distribution diag"
    ratio("diag loss fwd+bwd: >= 3x faster than eager", _find(rows, diag, "eager", "fwd+bwd"),
          _find(rows, diag, "ours", "fwd+bwd"), "median_s", 3)
    cap("diag loss fwd+bwd: peak <= 1.25x gradient buffer", _find(rows, diag, "ours", "fwd+bwd"), 1.25)
    ratio("diag loss fwd+bwd: peak >= 3x below eager", _find(rows, diag, "eager", "fwd+bwd"),
          _find(rows, diag, "ours", "fwd+bwd"), "peak_bytes", 3)
    cap("diag loss fwd (no grad): peak <= 0.1x gradient buffer",
        _find(rows, diag, "ours", "fwd (no grad)"), 0.1)
    cap("full loss fwd+bwd: peak <= 1.5x gradient buffer", _find(rows, full, "ours", "fwd+bwd"), 1.5)
    ratio("full loss fwd+bwd: faster than eager", _find(rows, full, "eager", "fwd+bwd"),
          _find(rows, full, "ours", "fwd+bwd"), "median_s", 1)
    ratio("update: >= 20x faster than the one-hot update", _find(rows, upd, "one-hot", "forward"),
          _find(rows, upd, "ours", "forward"), "median_s", 20)
    ratio("update: >= 25x less peak memory than the one-hot update",
          _find(rows, upd, "one-hot", "forward"), _find(rows, upd, "ours", "forward"), "peak_bytes", 25)
    return out


def target_lines(rows, device: str) -> list[str]:
    if device != "cpu":
        return ["(CPU targets: not evaluated on a GPU run; see README for the GPU targets)"]
    lines = []
    for name, passed, text in targets(rows):
        tag = "PASS" if passed else ("MISS" if passed is False else "N/A ")
        lines.append(f"{tag}  {name}: {text}")
    return lines


# --------------------------------------------------------------------------- table

def _ms(v):
    return "" if v is None else (f"{v * 1e3:.3g}" if v * 1e3 < 100 else f"{v * 1e3:.0f}")


def markdown(rows: list[dict], meta: dict) -> str:
    gpu = meta["device_kind"] == "cuda"
    head = ["op", "implementation", "mode", "N", "D", "dtype", "median ms", "p20-p80 ms", "rounds",
            "peak MB above inputs", "peak / N·D·4 B", "device", "torch", "triton", "threads"]
    if gpu:
        head += ["GB/s", "TFLOP/s", "H100 floor ms FP32 / TF32", "x floor FP32 / TF32",
                 "NVML mem GB / SM MHz / W"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=_sort_key):
        ok = r["status"] == "ok"
        timed = r["median_s"] is not None
        cells = [r["op"], r["impl"], r["mode"], str(r["n"]), str(r["d"]), r["dtype"],
                 _ms(r["median_s"]) if timed else (r["status"] if not ok else r["note"] or "not timed"),
                 f"{_ms(r['p20_s'])}-{_ms(r['p80_s'])}" if timed else "",
                 str(r["rounds"]) if timed else "",
                 f"{r['peak_bytes'] / MB:.1f}" if ok and r["peak_bytes"] is not None else r["status"],
                 f"{r['peak_bytes'] / r['grad_buffer_bytes']:.3f}" if ok and r["peak_bytes"] is not None else "",
                 r["device"], r["torch"], r["triton"], str(r["threads"])]
        if gpu:
            nv = r.get("nvml") or {}
            cells += [f"{r['gb_per_s']:.0f}" if r["gb_per_s"] else "",
                      f"{r['tflop_per_s']:.2f}" if r["tflop_per_s"] else "",
                      f"{_ms(r['floor_s'])} / {_ms(r['floor_tf32_s'])}" if r["floor_s"] else "",
                      f"{r['median_s'] / r['floor_s']:.2f} / {r['median_s'] / r['floor_tf32_s']:.2f}"
                      if r["floor_s"] and timed else "",
                      f"{nv.get('memory_used_max_GB', 0):.1f} / {nv.get('sm_clock_median_MHz', '')} / "
                      f"{nv.get('power_max_W', 0):.0f}" if nv else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def preamble(meta: dict) -> str:
    kind = ("CPU figures (the torch backend of kernels/ against the references, no GPU involved)"
            if meta["device_kind"] == "cpu" else "GPU figures (Triton kernels)")
    return (f"**{kind}.** {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; "
            f"{meta['threads']} intra-op thread(s); set `{meta['set']}`; {meta['date']}; C = {cases.C}, "
            f"{int(cases.IGNORED * 100)} % ignored labels. Median and p20-p80 over interleaved "
            f"rounds after warm-up (rounds = 1: a call slower than {cases.SLOW_S:g} s, timed once "
            f"in its memory process). Peak memory: above the resident inputs, including the "
            f"returned outputs (the [N, D] gradient for fwd+bwd); "
            + ("peak RSS of a fresh process per case (VmHWM after clear_refs). "
               if meta["device_kind"] == "cpu" else "torch.cuda.max_memory_allocated. ")
            + "\"bwd\" is the backward call alone, its peak above the state after the forward.")


# --------------------------------------------------------------------------- plot

def plot(rows: list[dict], meta: dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ops = sorted({r["op"] for r in rows})
    fig, axes = plt.subplots(2, len(ops), figsize=(4.2 * len(ops), 7.5), squeeze=False)
    for j, op in enumerate(ops):
        mine = [r for r in rows if r["op"] == op]
        d = cases.TARGET_D if any(r["d"] == cases.TARGET_D for r in mine) else mine[0]["d"]
        dtype = "float32" if any(r["dtype"] == "float32" for r in mine) else mine[0]["dtype"]
        mode = "fwd+bwd" if any(r["mode"] == "fwd+bwd" for r in mine) else mine[0]["mode"]
        mine = [r for r in mine if r["d"] == d and r["dtype"] == dtype and r["mode"] == mode]
        for impl in sorted({r["impl"] for r in mine}, key=_impl_rank):
            pts = sorted((r for r in mine if r["impl"] == impl), key=lambda r: r["n"])
            timed = [r for r in pts if r["median_s"] is not None]
            if timed:
                xs = [r["n"] for r in timed]
                med = [r["median_s"] for r in timed]
                line, = axes[0][j].plot(xs, med, "o-", label=impl)
                axes[0][j].errorbar(xs, med, yerr=[[m - r["p20_s"] for m, r in zip(med, timed)],
                                                   [r["p80_s"] - m for m, r in zip(med, timed)]],
                                    fmt="none", ecolor=line.get_color(), capsize=3)
                axes[0][j].fill_between(xs, [r["p20_s"] for r in timed], [r["p80_s"] for r in timed],
                                        color=line.get_color(), alpha=0.25)
            mem = [r for r in pts if r["status"] == "ok" and r["peak_bytes"]]
            if mem:
                axes[1][j].plot([r["n"] for r in mem], [r["peak_bytes"] / MB for r in mem], "o-",
                                label=impl)
            oom = [r["n"] for r in pts if r["status"] == "out of memory"]
            if oom:
                axes[1][j].plot(oom, [1] * len(oom), "x", color="red")
        for i, ylabel in enumerate(("time (s), median, p20-p80 band", "peak MB above inputs")):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("N (pixels)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        axes[0][j].set_title(f"{op}\n{mode}, D = {d}, {dtype}", fontsize=9)
        if any(r["status"] == "out of memory" for r in mine):
            axes[1][j].set_title("red x at 1 MB: out of memory", fontsize=8)
    fig.suptitle(f"{meta['device']} - torch {meta['torch']}, triton {meta['triton']} - "
                 f"{meta['threads']} thread(s) - {meta['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- driver

def document(rows, meta, lines, fenced: bool) -> str:
    targets_text = "\n".join(lines)
    if fenced:
        targets_text = "```\n" + targets_text + "\n```"
    return "\n\n".join([preamble(meta), markdown(rows, meta),
                        "Targets (CPU, N = 2 x 256 x 512, D = 256, C = 19, float32, torch "
                        "backend):\n" + targets_text])


def finish(rows, settings, write: bool = True, json_path: str | None = None,
           docs: str | None = None):
    """Write <stem>.json / .md / .png (fresh files), when given ``json_path``, and with ``docs``
    (a page, docs/benchmarks.md) its 'bench-<set>-<device kind>' block; return (printed text,
    paths)."""
    rows = [row_dict(r) for r in rows]
    meta = {"device": environment.device_name(settings.device), "device_kind": settings.device,
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "set": settings.set_name,
            "threads": settings.threads, "command": " ".join(sys.argv), **environment.versions()}
    lines = target_lines(rows, settings.device)
    text = document(rows, meta, lines, fenced=False)
    paths = []
    if write:
        os.makedirs(cases.RESULTS_DIR, exist_ok=True)
        stem = environment.result_stem(settings.device, settings.set_name)
        with open(stem + ".json", "w") as f:
            json.dump({"meta": meta, "rows": rows, "targets": lines}, f, indent=1)
        paths.append(stem + ".json")
        with open(stem + ".md", "w") as f:
            f.write(document(rows, meta, lines, fenced=True) + "\n")
        paths.append(stem + ".md")
        if plot(rows, meta, stem + ".png"):
            paths.append(stem + ".png")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"meta": meta, "rows": rows, "targets": lines}, f, indent=1)
        paths.append(json_path)
    if docs:
        from sepico.pages import write_block

        write_block(docs, f"bench-{settings.set_name}-{settings.device}",
                    document(rows, meta, lines, fenced=True))
        paths.append(f"{docs} (block bench-{settings.set_name}-{settings.device})")
    return text, paths


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    with open(sys.argv[1]) as f:
        data = json.load(f)
    stem = os.path.splitext(sys.argv[1])[0]
    meta, rows = data["meta"], data["rows"]
    lines = target_lines(rows, meta["device_kind"])
    with open(stem + ".md", "w") as f:
        f.write(document(rows, meta, lines, fenced=True) + "\n")
    plot(rows, meta, stem + ".png")
    print(document(rows, meta, lines, fenced=False))


if __name__ == "__main__":
    main()

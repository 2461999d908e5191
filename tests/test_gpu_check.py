"""`make gpu-check` without CUDA: the dry run goes through every step on the CPU and exits 0."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.system
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: make gpu-check runs for real")
def test_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    results = sorted((ROOT / "bench" / "results").iterdir())
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path), "--install-s", "7"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == "no CUDA device: dry run"
    (report_file,) = tmp_path.glob("*-gpu-check.json")
    report = json.loads(report_file.read_text())
    assert report["cuda"] is False and report["environment"]["install_s"] == "7"
    for step in ("cuda_tests", "benchmark", "training", "kernel_times"):
        assert report[step]["returncode"] == 0, report[step]["output_tail"]
        log = report_file.with_name(report_file.stem + f"-{step}.log").read_text()
        assert log.endswith(report[step]["output_tail"]) and "output" not in report[step]
    tests = report["cuda_tests"]["counts"]
    assert tests.get("skipped", 0) > 0 and set(tests) == {"skipped"}  # every CUDA test, skipped here
    rows = [r for r in report["bandwidth"] if r["status"] == "ok"]
    impls = {r["impl"] for r in rows}
    assert any(i.startswith("eager") for i in impls) and any(i.startswith("ours") for i in impls)
    assert all(r["median_ms"] > 0 and r["gb_per_s"] > 0 for r in rows)
    assert report["training"]["result"]["step_s_median"] > 0
    times = report["kernel_times"]["rows"]
    assert {(r["op"], r["mode"]) for r in times} >= {("loss DistCL diag", "fwd+bwd"), ("loss DistCL diag", "fwd (no grad)")}
    assert all(r["op_ms"] > 0 and r["top"] for r in times)
    markdown = report_file.with_suffix(".md").read_text()
    assert "CPU dry run" in markdown and "| loss DistCL diag | fwd+bwd |" in markdown
    assert sorted((ROOT / "bench" / "results").iterdir()) == results  # a dry run commits nothing


def test_counts_come_from_pytest_closing_line_alone():
    from bench.gpu_check import pytest_counts

    log = ("E   AssertionError: gradient tf32 error 1.13e-03, eager TF32 3.62e-07\n"
           "FAILED tests/test_cuda.py::test_x - 3 passed in spirit\n"
           "7 failed, 20 passed, 17 warnings in 168.05s (0:02:48)\n")
    assert pytest_counts(log) == {"failed": 7, "passed": 20}
    assert pytest_counts("== 2 passed, 1 error in 3.1s ==\n") == {"passed": 2, "error": 1}
    assert pytest_counts("collecting ... interrupted") == {}


def test_kernel_times_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    from bench import kernel_times

    foreign = tmp_path / "notes.json"
    foreign.write_text("the user's own")
    assert kernel_times.main(["--device", "cpu", "--tiny", "--out", str(foreign)]) == 2
    assert foreign.read_text() == "the user's own"
    assert "is not an earlier result of this command" in capsys.readouterr().err

"""pytest wiring of the benchmark suites: options, one test per case, and the report at the end.

    python -m pytest bench --bench-set=quick     # the CPU target cases (make bench-quick)
    python -m pytest bench --bench-set=medium    # every op, N and implementation at D = 256, fp32
    python -m pytest bench --bench-set=full      # D in 64, 256, 512, fp32 and bf16 (make bench)
    python -m pytest bench --bench-set=tiny      # the quick cases at N = 4096, D = 64 (gpu-check dry run)

The results go to ``bench/results/<device>-<date>[-quick].{json,md,png}``, written afresh by
each run (never appended), and the markdown table and the target lines are printed at the end.
"""
from __future__ import annotations

import pytest

from bench import cases, report, runner


def pytest_addoption(parser):
    group = parser.getgroup("sepico bench")
    group.addoption("--bench-set", choices=cases.SETS, default="quick",
                    help="quick: the CPU target cases; tiny: the same, small; medium: every op, size and implementation "
                         "at D = 256, float32; full: D in 64, 256, 512, float32 and bfloat16")
    group.addoption("--bench-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: cuda when available")
    group.addoption("--bench-threads", type=int, default=1,
                    help="torch intra-op threads on the CPU (stated in every row)")
    group.addoption("--bench-budget", type=float, default=None,
                    help="seconds of timing rounds per case, all implementations together "
                         "(default: 25 for the quick set, whose ratios are the targets; else 10)")
    group.addoption("--bench-no-write", action="store_true",
                    help="print the table but write nothing under bench/results")
    group.addoption("--bench-json", default=None,
                    help="also write the rows and metadata as JSON to this file (make gpu-check)")
    group.addoption("--bench-docs", default=None, metavar="PAGE",
                    help="also rewrite the 'bench-<set>-<device>' block of this page (docs/benchmarks.md)")


def pytest_configure(config):
    import torch

    opt = config.getoption
    device = opt("--bench-device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    budget = opt("--bench-budget")
    if budget is None:
        budget = 25.0 if opt("--bench-set") == "quick" else 10.0
    config._bench = cases.Settings(set_name=opt("--bench-set"), device=device,
                                    threads=opt("--bench-threads"), budget_s=budget)
    config._bench_rows = []
    torch.set_num_threads(config._bench.threads)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        family = metafunc.module.FAMILY
        settings = metafunc.config._bench
        found = cases.cases(family, settings.set_name, settings.device)
        metafunc.parametrize("case", found, ids=[c.id for c in found])


@pytest.fixture
def measure(request, benchmark):
    """measure(case): run the case, keep its rows for the report, attach them to the benchmark."""
    config = request.config

    def run(case):
        benchmark.group = case.id
        rows = runner.run_case(case, config._bench, benchmark)
        config._bench_rows.extend(rows)
        benchmark.extra_info["rows"] = [report.row_dict(r) for r in rows]
        benchmark.extra_info["note"] = ("pytest-benchmark times one interleaved round of every "
                                        "implementation; per-implementation figures are in rows")
        return rows
    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = getattr(config, "_bench_rows", None)
    if not rows:
        return
    settings = config._bench
    text, paths = report.finish(rows, settings, write=not config.getoption("--bench-no-write"),
                                json_path=config.getoption("--bench-json"),
                                docs=config.getoption("--bench-docs"))
    terminalreporter.write_sep("=", "sepico benchmark")
    terminalreporter.write_line(text)
    for path in paths:
        terminalreporter.write_line(f"wrote {path}")

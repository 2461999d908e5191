"""`python -m kernels.compile_check`: every Triton kernel compiles ahead of time for sm_80 and sm_90
at the launchers' configurations, without register spills. No GPU needed (ptxas ships in the wheel).
"""
import os
import pathlib
import subprocess
import sys

import pytest

from kernels import compile_check
from kernels._backend import interpreting
from kernels.compile_check import (Result, format_table, merge_labels, parse_cuobjdump, parse_ptxas,
                                   ptx_op_counts)

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHS = ("sm_80", "sm_90")

needs_ptxas = pytest.mark.skipif(
    not all(os.access(compile_check._tool(t), os.X_OK)
            for t in ("ptxas", "ptxas-blackwell", "cuobjdump")),
    reason="this triton wheel ships no NVIDIA tools (ptxas, cuobjdump)")


def _env_without_interpreter():
    # conftest.py sets TRITON_INTERPRET=1 for this process; compiled kernels need it unset.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return env


@pytest.mark.system
@needs_ptxas
def test_every_kernel_compiles_without_spills_for_sm80_and_sm90():
    run = subprocess.run([sys.executable, "-m", "kernels.compile_check"], cwd=ROOT,
                         env=_env_without_interpreter(), capture_output=True, text=True, timeout=900)
    report = f"stdout:\n{run.stdout[-6000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, report
    rows = [line.split() for line in run.stdout.splitlines()]
    # table rows: kernel name first, the architecture as a token of its own
    rows = [r for r in rows if r and r[0] in compile_check.KERNELS and set(ARCHS) & set(r)]
    covered = {(r[0], arch) for r in rows for arch in ARCHS if arch in r}
    assert covered == {(k, a) for k in compile_check.KERNELS for a in ARCHS}, report
    assert all(r[-1] == "ok" for r in rows), report
    assert " 0 failing" in run.stdout, report


@needs_ptxas
@pytest.mark.skipif(not interpreting(), reason="checks the re-run that TRITON_INTERPRET=1 triggers")
def test_main_reruns_itself_without_the_interpreter(capfd):
    assert compile_check.main(["--only", "merge", "--arch", "80", "--jobs", "1"]) == 0
    out = capfd.readouterr().out
    assert "re-running without it" in out
    assert "merge_class_distribution" in out and "sm_80" in out and " 0 failing" in out


PTXAS_SPILLING = """\
ptxas info    : 11 bytes gmem, 8 bytes cmem[4]
ptxas info    : Compiling entry function '_dist_contrastive_kernel' for 'sm_80'
ptxas info    : Function properties for _dist_contrastive_kernel
    24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 24 bytes cumulative stack size, 448 bytes cmem[0]
ptxas info    : Compile time = 585.162 ms
"""

PTXAS_CLEAN = """\
ptxas-blackwell info    : Compiling entry function '_merge_class_distribution_kernel' for 'sm_90a'
ptxas-blackwell info    : Function properties for _merge_class_distribution_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas-blackwell info    : Used 78 registers, used 0 barriers
"""

CUOBJDUMP = """\

Resource usage:
 Common:
  GLOBAL:11 CONSTANT[4]:8
 Function _dist_contrastive_kernel:
  REG:255 STACK:24 SHARED:1024 LOCAL:0 CONSTANT[0]:624 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def _result(ptxas_log, arch=80, shared=4096, **cubin):
    usage = parse_ptxas(ptxas_log)
    return Result("dist_contrastive", "test", arch, num_warps=4, num_stages=1, shared=shared,
                  cubin={"REG": usage["registers"], "STACK": usage["stack"], "SHARED": 0,
                         "LOCAL": 0, **cubin}, **usage)


def test_ptxas_parser_reads_spills():
    assert parse_ptxas(PTXAS_SPILLING) == {"registers": 255, "stack": 24, "spill_stores": 8,
                                           "spill_loads": 12}
    assert parse_ptxas(PTXAS_CLEAN) == {"registers": 78, "stack": 0, "spill_stores": 0,
                                        "spill_loads": 0}
    with pytest.raises(ValueError):
        parse_ptxas("ptxas fatal   : Unresolved extern function")


def test_ptx_op_counts_tell_fma_from_tensor_core_dots():
    ptx = """
\tfma.rn.f32 \t%f1, %f2, %f3, %f1;
\tfma.rn.ftz.f32 \t%f4, %f2, %f3, %f4;
\t// fma.rn.f32 in a comment
\tmma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%f5}, {%r1}, {%r2}, {%f5};
\twgmma.mma_async.sync.aligned.m64n16k8.f32.tf32.tf32 {%f6}, %rd1, %rd2, 1, 1, 1;
\twgmma.fence.sync.aligned;
\tfma.rn.f32 \t%f7, %f2, %f3, %f7;
"""
    assert ptx_op_counts(ptx) == {"fma": 2, "mma": 2}


def test_cuobjdump_parser():
    assert parse_cuobjdump(CUOBJDUMP) == {"REG": 255, "STACK": 24, "SHARED": 1024, "LOCAL": 0}


def test_a_spill_fails_the_check():
    spilling = _result(PTXAS_SPILLING)
    assert any("spill" in p for p in spilling.problems)
    assert "FAIL" in format_table([spilling]).splitlines()[-1]
    clean = _result(PTXAS_CLEAN, arch=90)
    assert clean.problems == []
    assert format_table([clean]).splitlines()[-1].endswith("ok")


def test_other_failures_are_reported():
    too_much_shared = _result(PTXAS_CLEAN, arch=80, shared=200 * 1024)
    assert any("shared memory" in p for p in too_much_shared.problems)
    assert _result(PTXAS_CLEAN, arch=90, shared=200 * 1024).problems == []  # H100 allows 227 KiB
    disagrees = _result(PTXAS_CLEAN, REG=96)
    assert any("disagrees" in p for p in disagrees.problems)
    failed = Result("dist_contrastive", "test", 90, error="CompilationError: boom")
    assert failed.problems == ["CompilationError: boom"]
    assert "COMPILE FAILED" in format_table([failed])


def test_labels_of_one_binary_are_merged():
    assert merge_labels(["loss diag D=64 C=19", "loss diag D=256 C=19"]) == "loss diag D=64,256 C=19"
    assert merge_labels(["a b", "c d"]) == "a b / c d"

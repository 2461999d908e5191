"""The benchmark suites' verdict on a case (bench.runner.check_rows): a failed implementation fails
the suite, a case nothing was timed in fails it, an unsupported or out-of-memory row does not."""
import pytest

from bench.runner import check_rows
from bench.timing import Row


def row(impl, status="ok", median=0.01):
    return Row(op="loss", impl=impl, mode="train", n=4096, d=64, c=19, dtype="float32", device="cpu",
               torch="2", triton="3", threads=1, status=status, median_s=median)


def test_a_failed_implementation_fails_the_suite():
    check_rows([row("eager"), row("ours"), row("compiled", "unsupported: no compiler", None),
                row("onehot", "out of memory", None)])
    with pytest.raises(AssertionError, match="ours train: failed: RuntimeError"):
        check_rows([row("eager"), row("ours", "failed: RuntimeError: boom", None)])
    with pytest.raises(AssertionError, match="no implementation was timed"):
        check_rows([row("eager", "unsupported: x", None), row("ours", "ok", None)])
    with pytest.raises(AssertionError):
        check_rows([])

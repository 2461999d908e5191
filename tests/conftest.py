# The Triton interpreter must be switched on before triton is first imported: this file is loaded
# before any test module, so the `triton` backend runs the real kernels on CPU tensors.
# KERNELS_TEST_COMPILED=1 (make gpu-check, for tests/test_cuda.py alone) leaves it off: the
# kernels are then compiled for the GPU, and the CPU tests of the other files would fail.
import os

if os.environ.get("KERNELS_TEST_COMPILED") == "1":
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ["KERNELS_POISON"] = "1"  # outputs start as NaN: an element a kernel forgets stays NaN

import pytest  # noqa: E402  (after the environment above)


@pytest.fixture
def one_thread():
    """One torch thread for end-to-end training tests: bit-exact runs and no oversubscription
    when other processes share the two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A sepico weight file of the small CPU model (synthetic run configuration, random weights)."""
    import torch

    from sepico.models import build_model
    from sepico.train.checkpoint import atomic_save
    from sepico.train.config import Config

    torch.manual_seed(0)
    cfg = Config()
    cfg.model.name, cfg.model.proj_dim = "convnet_small", 8
    model = build_model("convnet_small", num_classes=19, proj_dim=8)
    path = tmp_path_factory.mktemp("weights") / "weights.pt"
    atomic_save({"config": cfg.to_dict(), "model": model.state_dict()}, path)
    return path


def pytest_terminal_summary(terminalreporter):
    """Print the largest relative error against float64 that the parity tests saw."""
    from tests.parity import LARGEST

    if not LARGEST:
        return
    terminalreporter.section("largest relative error vs float64 (max-norm), by quantity and input dtype")
    for (what, dtype), err in sorted(LARGEST.items()):
        terminalreporter.write_line(f"{what:<28} {dtype:<9} {err:.2e}")


def pytest_addoption(parser):
    parser.addoption("--shard", metavar="K/N", default=None,
                     help="run the K-th (0-based) of N interleaved parts of the selected tests (make test runs "
                          "two at once, one per core)")


def pytest_collection_modifyitems(config, items):
    """With --shard K/N keep every N-th selected test from the K-th on: N processes side by side
    run every test once, each part a mix of fast and slow ones."""
    shard = config.getoption("--shard")
    if not shard:
        return
    try:
        k, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard takes K/N (two integers), got {shard!r}") from None
    if not 0 <= k < n:
        raise pytest.UsageError(f"--shard K/N needs 0 <= K < N, got {shard!r}")
    kept, dropped = [], []
    for i, item in enumerate(items):
        (kept if i % n == k else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept

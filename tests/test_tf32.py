"""The loss kernel's opt-in TF32 path (``torch.backends.cuda.matmul.allow_tf32``) rounds its
float32 dot operands to TF32 itself: the tensor cores would truncate them (tl.dot's
documentation), and on an H200 the truncated gradient was 1e-3 off float64, three times the
eager TF32 reference's error (tests/test_cuda.py). The interpreter's tl.dot ignores the
precision, so on the CPU these tests see the rounding alone."""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import kernels
import kernels.contrastive as kc
from kernels._backend import interpreting
from sepico.reference import dist_contrastive_loss_reference
from tests.parity import LARGEST, make_feats, make_labels, make_stats, rel_error

pytestmark = pytest.mark.skipif(not interpreting(), reason="runs the kernels in the Triton interpreter")


@triton.jit
def _round_kernel(X, OUT, N, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < N)
    tl.store(OUT + offs, kc._dot_operand(x, PRECISION), mask=offs < N)


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest even at 10 mantissa bits, Inf and NaN kept (numpy, independently)."""
    bits = x.numpy().view(np.uint32).astype(np.uint64)
    keep = (bits & 0x7F800000) == 0x7F800000
    lsb = (bits >> 13) & 1
    rounded = ((bits + 0xFFF + lsb) & 0xFFFFE000) & 0xFFFFFFFF
    return torch.from_numpy(np.where(keep, bits, rounded).astype(np.uint32).view(np.float32))


def test_operands_round_to_nearest_even_at_ten_mantissa_bits():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3001, generator=gen) * 10.0 ** torch.randint(-30, 30, (3001,), generator=gen)
    ties = torch.tensor([0x3F801000, 0x3F803000, 0xBF801000, 0x3F800FFF, 0x3F801001, 0x7F7FFFFF, 0x00001000,
                         0x00003000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001], dtype=torch.int64)
    x = torch.cat([base, ties.to(torch.int32).view(torch.float32)])
    for precision, want in (("tf32", tf32_round(x)), ("ieee", x)):
        out = torch.full_like(x, 7.0)
        _round_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024, PRECISION=precision)
        assert torch.equal(out.view(torch.int32), want.view(torch.int32)), precision
    assert torch.isinf(tf32_round(torch.tensor([3.4028235e38]))).all()  # rounds up past the largest float


@pytest.mark.parametrize("cov_kind", ["none", "diag", "full"])
def test_the_tf32_path_rounds_and_stays_within_tf32_error(monkeypatch, cov_kind):
    n, d, c = 517, 40, 19
    gen = torch.Generator().manual_seed(11)
    feats = make_feats(n, d, gen)
    labels = make_labels(n, c, gen, ignore_frac=0.2, absent=(3,))
    mean, cov = make_stats(c, d, gen, full=cov_kind == "full")
    cov = None if cov_kind == "none" else cov

    def loss_and_grad(precision):
        monkeypatch.setattr(kc, "_dot_precision", lambda feats: precision)
        x = feats.clone().requires_grad_()
        with kernels.backend("triton"):
            loss = kernels.dist_contrastive_loss(x, labels, mean, cov, ratio=0.7, temperature=0.5)
        loss.backward()
        return loss.detach(), x.grad

    xt = feats.double().requires_grad_()
    truth = dist_contrastive_loss_reference(xt, labels, mean.double(), None if cov is None else cov.double(),
                                            ratio=0.7, temperature=0.5)
    truth.backward()
    exact = loss_and_grad("ieee")
    rounded = loss_and_grad("tf32")
    # TF32 operands rounded: about 2^-11 relative on each operand, far above the float32 path's
    # error, and below the 9.8e-4 (2^-10) that truncation reaches. The figures go to the run's
    # summary (tests/parity.LARGEST).
    errors = {"tf32 gradient, ieee dots": rel_error(exact[1], xt.grad),
              "tf32 gradient, tf32 dots": rel_error(rounded[1], xt.grad),
              "tf32 loss, tf32 dots": rel_error(rounded[0], truth.detach())}
    for what, err in errors.items():
        LARGEST[(what, cov_kind)] = max(LARGEST.get((what, cov_kind), 0.0), err)
    assert errors["tf32 gradient, ieee dots"] < 1e-5
    assert 1e-5 < errors["tf32 gradient, tf32 dots"] < 6e-4
    assert errors["tf32 loss, tf32 dots"] < 3e-4

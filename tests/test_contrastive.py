"""Fused distribution-aware contrastive loss: parity with the float64 reference, gradients, options."""
from itertools import product

import pytest
import torch

import kernels
from sepico.reference import dist_contrastive_loss_reference as reference
from tests.parity import assert_parity, make_feats, make_labels, make_stats, rel_error

# Pixels (none, one, odd, and more than a block), channels (odd, one block, just past a block, the
# published 256), classes (one, the 19 of Cityscapes, past a 32-wide block).
SIZES = list(product((0, 1, 37, 1000, 4099), (3, 64, 130, 256), (1, 19, 40)))
COVS = ("none", "diag", "full")
REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("torch", "triton")
# The options each size meets in turn: (reduction, input dtype, per-pixel weights, ignored share).
# The dtype sets the tolerance (tests/parity.py CAP); every row appears with every size family.
OPTIONS = [
    ("mean", torch.float32, True, 0.0),
    ("sum", torch.bfloat16, False, 0.2),
    ("none", torch.float32, True, 1.0),
    ("mean", torch.bfloat16, True, 0.2),
    ("sum", torch.float32, False, 0.5),
    ("none", torch.bfloat16, False, 0.0),
    ("mean", torch.float32, False, 0.5),
    ("sum", torch.bfloat16, True, 1.0),
    ("none", torch.float32, False, 0.2),
    ("mean", torch.bfloat16, False, 1.0),
    ("sum", torch.float32, True, 0.0),
]


def _sweep():
    """Every size on both backends: the torch path with every covariance kind, the Triton
    interpreter with one kind per size (in turn); each case takes the next row of OPTIONS. The
    heaviest full-covariance cases of 1000 pixels and more are system tests."""
    cases, row = [], 0
    for i, (n, d, c) in enumerate(SIZES):
        for backend in BACKENDS:
            # the interpreter's kind shifts by one every three sizes, so that each kind meets every C
            for cov in (COVS if backend == "torch" else (COVS[(i + i // 3) % 3],)):
                reduction, dtype, weighted, ignore = OPTIONS[row % len(OPTIONS)]
                row += 1
                # the interpreter's full kernels, and the bfloat16 eager reference of a full covariance
                # (slow on a CPU), at 1000 pixels and more: half a minute to a minute and a half each
                heavy = cov == "full" and n >= 1000 and (backend == "triton" or dtype == torch.bfloat16)
                cases.append(pytest.param(
                    backend, n, d, c, cov, reduction, dtype, weighted, ignore,
                    marks=[pytest.mark.system] if heavy else [],
                    id=f"{backend}-N{n}-D{d}-C{c}-{cov}-{reduction}-{str(dtype)[6:]}-w{int(weighted)}-ign{ignore}"))
    return cases


def run_case(backend, n, d, c, cov_kind, reduction, dtype, weighted, ignore_frac, *, seed=0,
             temperature=0.5, ratio=0.7):
    """Our loss and gradient, the float64 truth and the eager reference in the test dtype."""
    gen = torch.Generator().manual_seed(seed + 7919 * n + 31 * d + c)
    feats = make_feats(n, d, gen, dtype)
    labels = make_labels(n, c, gen, ignore_frac=ignore_frac, absent=(1,) if c > 2 else ())
    mean, cov = make_stats(c, d, gen, full=cov_kind == "full")
    cov = None if cov_kind == "none" else cov
    weight = torch.rand(n, generator=gen) if weighted else None
    grad_out = torch.rand(n, generator=gen) if reduction == "none" else torch.tensor(1.7)
    opts = dict(ratio=ratio, temperature=temperature, reduction=reduction)

    def run(fn, x_dtype, stat_dtype, **backend):
        x = feats.to(x_dtype, copy=True).requires_grad_()
        loss = fn(x, labels, mean.to(stat_dtype), None if cov is None else cov.to(stat_dtype),
                  weight=None if weight is None else weight.to(stat_dtype), **opts)
        loss.backward(grad_out.to(loss.dtype))
        # The eager reference leaves no gradient at all when N = 0.
        return loss, x.grad if x.grad is not None else torch.zeros_like(x)

    with kernels.backend(backend):
        ours = run(kernels.dist_contrastive_loss, dtype, torch.float32)
    truth = run(reference, torch.float64, torch.float64)
    eager = run(reference, dtype, dtype)
    return ours, truth, eager


@pytest.mark.parametrize("backend,n,d,c,cov_kind,reduction,dtype,weighted,ignore_frac", _sweep())
def test_loss_and_gradient_match_float64_reference(backend, n, d, c, cov_kind, reduction, dtype,
                                                   weighted, ignore_frac):
    (loss, grad), (loss_t, grad_t), (loss_e, grad_e) = run_case(
        backend, n, d, c, cov_kind, reduction, dtype, weighted, ignore_frac)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_parity(loss, loss_t, dtype, eager=loss_e, what=f"loss {cov_kind}")
    assert_parity(grad, grad_t, dtype, eager=grad_e, what=f"loss gradient {cov_kind}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cov_kind", COVS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_option_at_one_shape(backend, cov_kind, reduction):
    """Weights and per-pixel grad_output on every reduction and covariance kind, C = 19, D = 123."""
    for weighted in (False, True):
        (loss, grad), (loss_t, grad_t), (loss_e, grad_e) = run_case(
            backend, 517, 123, 19, cov_kind, reduction, torch.float32, weighted, 0.2, seed=5)
        assert_parity(loss, loss_t, torch.float32, eager=loss_e, what=f"loss {cov_kind}")
        assert_parity(grad, grad_t, torch.float32, eager=grad_e, what=f"loss gradient {cov_kind}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_inputs(backend, dtype):
    (loss, grad), (loss_t, grad_t), (loss_e, grad_e) = run_case(
        backend, 300, 64, 19, "diag", "mean", dtype, True, 0.2, seed=11)
    assert_parity(loss, loss_t, dtype, eager=loss_e, what="loss diag")
    assert_parity(grad, grad_t, dtype, eager=grad_e, what="loss gradient diag")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cov_kind", ("diag", "full"))
def test_published_temperature(backend, cov_kind):
    """tau = 100, r = 1: the covariance term is tiny but must still be right."""
    (loss, grad), (loss_t, grad_t), _ = run_case(
        backend, 200, 64, 19, cov_kind, "mean", torch.float32, False, 0.1, temperature=100.0,
        ratio=1.0)
    assert rel_error(loss, loss_t) < 1e-6
    assert rel_error(grad, grad_t) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_confident_pixels_keep_gradient_accuracy(backend):
    """Softmax of the true class near 1: the gradient nearly cancels (p_y - 1). Our error must stay
    within a few times the eager float32 reference's own."""
    gen = torch.Generator().manual_seed(3)
    c, d, n = 19, 64, 400
    mean = torch.nn.functional.normalize(torch.randn(c, d, generator=gen), dim=1)
    labels = torch.randint(0, c, (n,), generator=gen)
    feats = torch.nn.functional.normalize(mean[labels] + 0.05 * torch.randn(n, d, generator=gen), dim=1)
    cov = torch.rand(c, d, generator=gen) * 0.01

    def grad_of(fn, dtype):
        x = feats.to(dtype).requires_grad_()
        fn(x, labels, mean.to(dtype), cov.to(dtype), temperature=0.05, ratio=1.0).backward()
        return x.grad

    truth = grad_of(reference, torch.float64)
    eager = grad_of(reference, torch.float32)
    with kernels.backend(backend):
        ours = grad_of(kernels.dist_contrastive_loss, torch.float32)
    p_true = torch.softmax(feats.double() @ mean.double().T / 0.05, 1).gather(1, labels[:, None])
    assert p_true.median() > 0.999, "the case must be confident to test the cancellation"
    assert rel_error(ours, truth) <= 4 * rel_error(eager, truth) + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend):
    gen = torch.Generator().manual_seed(4)
    n, d, c = 301, 70, 19
    base = make_feats(d, 2 * n, gen).T  # [2N, D] view with strides (1, 2N)
    feats = base[::2]
    labels = make_labels(2 * n, c, gen)[::2]
    mean, cov = make_stats(c, d, gen)
    mean_t = mean.T.contiguous().T  # a transposed layout of the same values
    with kernels.backend(backend):
        xs = feats.detach().requires_grad_()
        loss = kernels.dist_contrastive_loss(xs, labels, mean_t, cov, temperature=0.5)
        loss.backward()
    xd = feats.detach().double().requires_grad_()
    ref = reference(xd, labels, mean.double(), cov.double(), temperature=0.5)
    ref.backward()
    assert not xs.is_contiguous() and not labels.is_contiguous()
    assert rel_error(loss, ref) < 1e-6
    assert xs.grad.shape == xs.shape and torch.isfinite(xs.grad).all()
    assert rel_error(xs.grad, xd.grad) < 1e-5  # the gradient too, not the loss alone


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_all_ignored_give_connected_zero(backend):
    gen = torch.Generator().manual_seed(6)
    mean, cov = make_stats(19, 32, gen)
    for n, labels in ((0, torch.zeros(0, dtype=torch.int64)), (50, torch.full((50,), 255))):
        x = make_feats(n, 32, gen).requires_grad_()
        with kernels.backend(backend):
            loss = kernels.dist_contrastive_loss(x, labels, mean, cov)
        assert loss.requires_grad and loss.item() == 0.0
        loss.backward()
        assert x.grad.shape == (n, 32) and torch.count_nonzero(x.grad) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_without_grad_matches(backend):
    gen = torch.Generator().manual_seed(8)
    feats = make_feats(257, 40, gen)
    labels = make_labels(257, 19, gen)
    mean, cov = make_stats(19, 40, gen)
    with kernels.backend(backend):
        with torch.no_grad():
            a = kernels.dist_contrastive_loss(feats.clone().requires_grad_(), labels, mean, cov)
        b = kernels.dist_contrastive_loss(feats, labels, mean, cov)
        c = kernels.dist_contrastive_loss(feats.clone().requires_grad_(), labels, mean, cov)
    assert not a.requires_grad and not b.requires_grad and c.requires_grad
    assert torch.equal(a, b) and torch.equal(a, c.detach())


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_features(backend):
    """A NaN in a valid pixel gives a NaN loss; one in an ignored pixel changes nothing."""
    gen = torch.Generator().manual_seed(9)
    feats = make_feats(100, 16, gen)
    labels = make_labels(100, 19, gen, ignore_frac=0.0)
    labels[3] = 255
    mean, cov = make_stats(19, 16, gen)
    clean = reference(feats.double(), labels, mean.double(), cov.double())
    with kernels.backend(backend):
        poisoned_ignored = feats.clone()
        poisoned_ignored[3, 5] = float("nan")
        x = poisoned_ignored.requires_grad_()
        loss = kernels.dist_contrastive_loss(x, labels, mean, cov)
        loss.backward()
        assert rel_error(loss, clean) < 1e-6 and torch.isfinite(x.grad).all()
        poisoned_valid = feats.clone()
        poisoned_valid[4, 0] = float("nan")
        assert torch.isnan(kernels.dist_contrastive_loss(poisoned_valid, labels, mean, cov))


@pytest.mark.parametrize("backend", BACKENDS)
def test_retained_graph_backward_twice(backend):
    """The first backward hands out the stored gradient; a second one recomputes it."""
    gen = torch.Generator().manual_seed(10)
    x = make_feats(90, 24, gen).requires_grad_()
    labels = make_labels(90, 19, gen)
    mean, cov = make_stats(19, 24, gen)
    with kernels.backend(backend):
        loss = kernels.dist_contrastive_loss(x, labels, mean, cov, reduction="none")
    go = torch.rand(90, generator=gen)
    (g1,) = torch.autograd.grad(loss, x, go, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, 2 * go)
    assert torch.allclose(2 * g1, g2, rtol=1e-6, atol=0)


def test_double_backward_is_a_clear_error():
    x = torch.randn(20, 8, requires_grad=True)
    labels = torch.randint(0, 3, (20,))
    loss = kernels.dist_contrastive_loss(x, labels, torch.randn(3, 8), torch.rand(3, 8))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("cov_kind", COVS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64_torch_path(cov_kind, reduction):
    gen = torch.Generator().manual_seed(12)
    n, d, c = 13, 5, 4
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).requires_grad_()
    labels = make_labels(n, c, gen, ignore_frac=0.2)
    mean, cov = make_stats(c, d, gen, full=cov_kind == "full")
    cov = None if cov_kind == "none" else cov.double()
    weight = torch.rand(n, generator=gen, dtype=torch.float64)
    with kernels.backend("torch"):
        assert torch.autograd.gradcheck(
            lambda z: kernels.dist_contrastive_loss(z, labels, mean.double(), cov, temperature=0.7,
                                                    weight=weight, reduction=reduction), (x,))


def test_full_covariance_is_symmetrised():
    """z^T S z only sees the symmetric part of S; the gradient must be (S + S^T) z as autograd's."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 3, (30,), generator=gen)
    mean = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    cov = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)  # not symmetric
    ours = kernels.dist_contrastive_loss(x, labels, mean, cov, temperature=0.5)
    (g,) = torch.autograd.grad(ours, x)
    xr = x.detach().requires_grad_()
    ref = reference(xr, labels, mean, cov, temperature=0.5)
    (gr,) = torch.autograd.grad(ref, xr)
    assert rel_error(ours, ref) < 1e-12 and rel_error(g, gr) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_bits_are_reproducible(backend):
    gen = torch.Generator().manual_seed(14)
    feats = make_feats(2100, 48, gen)
    labels = make_labels(2100, 19, gen)
    mean, cov = make_stats(19, 48, gen)
    outs = []
    for _ in range(2):
        x = feats.clone().requires_grad_()
        with kernels.backend(backend):
            loss = kernels.dist_contrastive_loss(x, labels, mean, cov)
        loss.backward()
        outs.append((loss.detach(), x.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])

"""Per-class moments and the class-distribution update against the float64 references."""
from itertools import product

import pytest
import torch

import kernels
from sepico.reference import class_moments_reference, update_class_distribution_reference
from tests.parity import assert_parity, make_feats, make_labels, make_stats, rel_error

# Pixels (none, one, odd, and more than a block), channels (odd, one block, just past a block, the
# published 256), classes (one, the 19 of Cityscapes, past a 32-wide block).
SIZES = list(product((0, 1, 37, 1000, 4099), (3, 64, 130, 256), (1, 19, 40)))
BACKENDS = ("torch", "triton")
KINDS = ("diag", "full")
# The options each size meets in turn: (covariance, input dtype, ignored share); the dtype sets the
# tolerance (tests/parity.py CAP).
OPTIONS = [
    ("diag", torch.float32, 0.0),
    ("full", torch.bfloat16, 0.2),
    ("diag", torch.bfloat16, 1.0),
    ("full", torch.float32, 0.5),
    ("diag", torch.float32, 0.2),
    ("full", torch.float32, 0.0),
    ("diag", torch.bfloat16, 0.5),
]


def _cases():
    """Every size on both backends with the size's row of OPTIONS; the Triton interpreter's
    full-covariance cases of 1000 pixels and more are system tests."""
    cases = []
    for i, (n, d, c) in enumerate(SIZES):
        kind, dtype, ignore = OPTIONS[i % len(OPTIONS)]
        for backend in BACKENDS:
            heavy = backend == "triton" and kind == "full" and n >= 1000
            cases.append(pytest.param(backend, n, d, c, kind, dtype, ignore,
                                      marks=[pytest.mark.system] if heavy else [],
                                      id=f"{backend}-N{n}-D{d}-C{c}-{kind}-{str(dtype)[6:]}-ign{ignore}"))
    return cases


def _inputs(n, d, c, dtype, ignore, seed=0):
    gen = torch.Generator().manual_seed(seed + 7919 * n + 31 * d + c)
    feats = make_feats(n, d, gen, dtype) + 0.3  # an offset makes E[z^2] - m^2 cancel badly
    labels = make_labels(n, c, gen, ignore_frac=ignore, absent=(1,) if c > 2 else ())
    return gen, feats, labels


@pytest.mark.parametrize("backend,n,d,c,kind,dtype,ignore", _cases())
def test_class_moments_match_reference(backend, n, d, c, kind, dtype, ignore):
    _, feats, labels = _inputs(n, d, c, dtype, ignore)
    with kernels.backend(backend):
        count, total, second = kernels.class_moments(feats, labels, c, covariance=kind)
    ref = class_moments_reference(feats.double(), labels, c, covariance=kind)
    eager = class_moments_reference(feats, labels, c, covariance=kind)
    assert count.dtype == total.dtype == second.dtype == torch.float32
    assert torch.equal(count, ref[0].float())
    assert_parity(total, ref[1], torch.float32, eager=eager[1].float(),
                  what="class_moments total", input_dtype=dtype)
    assert_parity(second, ref[2], torch.float32, eager=eager[2].float(),
                  what=f"class_moments second {kind}", input_dtype=dtype)


@pytest.mark.parametrize("backend,n,d,c,kind,dtype,ignore", _cases())
def test_update_matches_reference(backend, n, d, c, kind, dtype, ignore):
    gen, feats, labels = _inputs(n, d, c, dtype, ignore, seed=1)
    mean, cov = make_stats(c, d, gen, full=kind == "full")
    count = torch.randint(0, 500, (c,), generator=gen).float()
    count[0] = 0  # a class never seen before: its statistics are taken from the batch
    mean[0] = 0
    cov[0] = 0
    with kernels.backend(backend):
        out = kernels.update_class_distribution(count, mean, cov, feats, labels)
    ref = update_class_distribution_reference(count.double(), mean.double(), cov.double(),
                                              feats.double(), labels)
    assert torch.equal(out[0], ref[0].float())
    assert_parity(out[1], ref[1], torch.float32, what="update mean", input_dtype=dtype)
    # The covariance is a small difference of moments: compare against the two-pass truth.
    assert_parity(out[2], ref[2], torch.float32, what=f"update cov {kind}", input_dtype=dtype)
    present = torch.isin(torch.arange(c), labels[labels != 255])
    absent = ~present
    assert torch.equal(out[1][absent], mean[absent]) and torch.equal(out[2][absent], cov[absent])


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_takes_two_passes_where_one_about_the_running_means_would_not_do(backend):
    """Why update_class_distribution is not the estimator's one pass (class_moments shifted by the
    running means, then merge_class_moments): about a running mean far from the batch's, here 0
    for a class never seen, that covariance is E[z^2] - m^2 and cancels; the two passes, sums
    then moments about the batch means, do not."""
    gen, feats, labels = _inputs(4099, 256, 1, torch.float32, 0.0, seed=1)
    count, mean, cov = torch.zeros(1), torch.zeros(1, 256), torch.zeros(1, 256)
    with kernels.backend(backend):
        two = kernels.update_class_distribution(count, mean, cov, feats, labels)
        one = kernels.merge_class_moments(count, mean, cov, *kernels.class_moments(feats, labels, 1, shift=mean),
                                          shift=mean)
    ref = update_class_distribution_reference(count.double(), mean.double(), cov.double(), feats.double(), labels)
    assert rel_error(two[2], ref[2]) < 2e-6 and rel_error(one[2], ref[2]) > 20 * rel_error(two[2], ref[2])


@pytest.mark.parametrize("backend,kind", [("torch", "diag"), ("torch", "full"), ("triton", "diag"),
                                          pytest.param("triton", "full", marks=pytest.mark.system)])
def test_moments_and_update_are_bit_reproducible(backend, kind):
    gen, feats, labels = _inputs(3001, 72, 19, torch.float32, 0.2, seed=2)
    mean, cov = make_stats(19, 72, gen, full=kind == "full")
    count = torch.rand(19, generator=gen) * 100
    with kernels.backend(backend):
        runs = [(kernels.class_moments(feats, labels, 19, covariance=kind),
                 kernels.update_class_distribution(count, mean, cov, feats, labels)) for _ in range(2)]
    for a, b in zip(sum(map(list, runs[0]), []), sum(map(list, runs[1]), [])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,kind", [("torch", "diag"), ("torch", "full"), ("triton", "diag"),
                                          pytest.param("triton", "full", marks=pytest.mark.system)])
def test_sequential_updates_follow_reference(backend, kind):
    """Three batches in a row (fresh statistics, as the estimator starts) stay on the reference."""
    gen = torch.Generator().manual_seed(21)
    c, d = 19, 40
    stats = (torch.zeros(c), torch.zeros(c, d), torch.zeros(c, d, d) if kind == "full" else torch.zeros(c, d))
    ref = tuple(t.double() for t in stats)
    for step in range(3):
        feats = make_feats(700, d, gen) + 0.1 * step
        labels = make_labels(700, c, gen, absent=(step, 5))
        with kernels.backend(backend):
            stats = kernels.update_class_distribution(*stats, feats, labels)
        ref = update_class_distribution_reference(*ref, feats.double(), labels)
        for ours, truth in zip(stats, ref):
            assert_parity(ours, truth, torch.float32, what="update (3 batches)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_with_int32_labels_and_custom_ignore(backend):
    gen, feats, labels = _inputs(400, 20, 7, torch.float32, 0.2, seed=3)
    labels = torch.where(labels == 255, torch.full_like(labels, -1), labels).to(torch.int32)
    mean, cov = make_stats(7, 20, gen)
    count = torch.rand(7, generator=gen) * 10
    with kernels.backend(backend):
        out = kernels.update_class_distribution(count, mean, cov, feats, labels, ignore_index=-1)
    ref = update_class_distribution_reference(count.double(), mean.double(), cov.double(),
                                              feats.double(), labels.long(), ignore_index=-1)
    for ours, truth in zip(out, ref):
        assert rel_error(ours, truth) < 1e-5


def test_update_float64_on_torch_path():
    gen, feats, labels = _inputs(300, 12, 5, torch.float64, 0.2, seed=4)
    mean, cov = make_stats(5, 12, gen, full=True)
    count = torch.rand(5, generator=gen, dtype=torch.float64) * 10
    out = kernels.update_class_distribution(count, mean.double(), cov.double(), feats, labels)
    ref = update_class_distribution_reference(count, mean.double(), cov.double(), feats, labels)
    assert all(o.dtype == torch.float64 for o in out)
    for ours, truth in zip(out, ref):
        assert rel_error(ours, truth) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_shifted_moments_match_reference(backend, kind):
    gen, feats, labels = _inputs(777, 40, 19, torch.float32, 0.2, seed=5)
    shift = torch.randn(19, 40, generator=gen)
    with kernels.backend(backend):
        count, total, second = kernels.class_moments(feats, labels, 19, covariance=kind, shift=shift)
    valid = labels != 255
    shifted = feats.double().clone()
    shifted[valid] -= shift.double()[labels[valid]]
    ref = class_moments_reference(shifted, labels, 19, covariance=kind)
    assert torch.equal(count, ref[0].float())
    assert_parity(total, ref[1], torch.float32, what="class_moments total (shifted)")
    assert_parity(second, ref[2], torch.float32, what=f"class_moments second {kind} (shifted)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_merge_of_moments_summed_over_parts_matches_update(backend, kind):
    """What distributed training does: shifted moments of two shards, summed, then merged."""
    gen, feats, labels = _inputs(1500, 24, 7, torch.float32, 0.2, seed=6)
    mean, cov = make_stats(7, 24, gen, full=kind == "full")
    count = torch.rand(7, generator=gen) * 1000
    count[2] = 0
    with kernels.backend(backend):
        parts = [kernels.class_moments(feats[s], labels[s], 7, covariance=kind, shift=mean)
                 for s in (slice(0, 600), slice(600, None))]
        summed = [a + b for a, b in zip(*parts)]
        out = kernels.merge_class_moments(count, mean, cov, *summed, shift=mean)
    ref = update_class_distribution_reference(count.double(), mean.double(), cov.double(),
                                              feats.double(), labels)
    assert torch.equal(out[0], ref[0].float())
    assert_parity(out[1], ref[1], torch.float32, what="merge_class_moments mean")
    assert_parity(out[2], ref[2], torch.float32, what=f"merge_class_moments cov {kind}")
    with pytest.raises(ValueError, match="batch moments must have shapes"):
        kernels.merge_class_moments(count, mean, cov, summed[0], summed[1][:, :3], summed[2])

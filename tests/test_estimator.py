"""ClassDistributionEstimator: parity with the float64 reference update on both backends, memory
bank semantics, merge associativity, state round trips, reference checkpoints and bad input."""
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from sepico import losses
from sepico.estimator import ClassDistributionEstimator
from sepico.reference import estimator_update_reference
from tests.parity import assert_parity, make_feats, make_labels, make_stats, rel_error

C, D = 7, 19


def batches(seed, sizes=(60, 1, 45, 80), dim=D, num_classes=C):
    """Float64 batches whose present classes differ (class 3 never appears, class 5 only in the
    last batch), with ignored pixels, plus an all-ignored batch."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        absent = (3,) if i == len(sizes) - 1 else (3, 5)
        out.append((make_feats(n, dim, gen, torch.float64) + 0.3,
                    make_labels(n, num_classes, gen, ignore_frac=0.2, absent=absent)))
    out.insert(2, (make_feats(9, dim, gen, torch.float64), torch.full((9,), 255)))
    return out


def reference_run(steps, covariance, memory_length, num_classes=C, dim=D):
    """Float64 states after each step, from the eager reference."""
    count = torch.zeros(num_classes, dtype=torch.float64)
    mean = torch.zeros(num_classes, dim, dtype=torch.float64)
    cov = torch.zeros((num_classes, dim) if covariance == "diag" else (num_classes, dim, dim),
                      dtype=torch.float64)
    bank = [[torch.zeros(dim, dtype=torch.float64)] if memory_length else [] for _ in range(num_classes)]
    states = []
    for feats, labels in steps:
        count, mean, cov, bank = estimator_update_reference(count, mean, cov, bank, feats, labels,
                                                            memory_length=memory_length)
        states.append((count, mean, cov, [torch.stack(q) if q else torch.zeros(0, dim, dtype=torch.float64)
                                          for q in bank]))
    return states


def check_state(est, want, dtype, tag):
    count, mean, cov, bank = want
    assert torch.equal(est.count.double(), count), f"{tag}: counts"
    assert_parity(est.mean, mean, dtype, what=f"estimator mean{tag}")
    assert_parity(est.cov, cov, dtype, what=f"estimator cov{tag}")
    got = est.bank
    assert [q.shape[0] for q in got] == [q.shape[0] for q in bank], f"{tag}: bank lengths"
    if sum(q.shape[0] for q in bank):
        assert_parity(torch.cat(got), torch.cat(bank), dtype, what=f"estimator bank{tag}")


@pytest.mark.parametrize("covariance", ("diag", "full"))
@pytest.mark.parametrize("memory_length", (0, 1, 3))
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_updates_match_reference(covariance, memory_length, dtype):
    steps = batches(seed=memory_length + 10 * (covariance == "full"))
    want = reference_run(steps, covariance, memory_length)
    est = ClassDistributionEstimator(C, D, covariance=covariance, memory_length=memory_length,
                                     dtype=dtype)
    for t, ((feats, labels), state) in enumerate(zip(steps, want)):
        est.update(feats.to(dtype), labels)
        check_state(est, state, dtype, f" ({covariance})")
        assert est.mean.dtype == dtype and est.cov.dtype == dtype


@pytest.mark.parametrize("covariance", ("diag", "full"))
def test_updates_match_reference_triton_backend(covariance):
    steps = batches(seed=40, sizes=(50, 33))
    want = reference_run(steps, covariance, 2)
    est = ClassDistributionEstimator(C, D, covariance=covariance, memory_length=2)
    with kernels.backend("triton"):
        for (feats, labels), state in zip(steps, want):
            est.update(feats.float(), labels.to(torch.int32))
            check_state(est, state, torch.float32, f" ({covariance}, triton)")


@pytest.mark.parametrize("backend", ("torch", "triton"))
@pytest.mark.parametrize("covariance", ("diag", "full"))
def test_update_is_one_pass_about_the_running_means(backend, covariance):
    """The estimator's update (one algorithm for one process and many) is class_moments about
    its running means and merge_class_moments, bit for bit; near those means it gives the
    statistics of kernels.update_class_distribution's two passes to float32 rounding."""
    gen = torch.Generator().manual_seed(8)
    c, d = 19, 130
    labels = make_labels(4099, c, gen, ignore_frac=0.2, absent=(4,))
    mean, cov = make_stats(c, d, gen, full=covariance == "full")
    feats = mean[labels.clamp(max=c - 1)] + 0.5 * make_feats(4099, d, gen)  # pixels around the means
    count = torch.rand(c, generator=gen) * 100
    est = ClassDistributionEstimator(c, d, covariance=covariance)
    est.load_state_dict({**est.state_dict(), "count": count, "mean": mean, "cov": cov})
    with kernels.backend(backend):
        est.update(feats, labels)
        moments = kernels.class_moments(feats, labels, c, covariance=covariance, shift=mean)
        want = kernels.merge_class_moments(count, mean, cov, *moments, shift=mean)
        two_pass = kernels.update_class_distribution(count, mean, cov, feats, labels)
    for name, got, expected, exact in zip(("count", "mean", "cov"), (est.count, est.mean, est.cov),
                                          want, two_pass):
        assert torch.equal(got, expected), name
        assert rel_error(got, exact) < 1e-6, name


def test_bank_semantics():
    """Each queue starts as one zero vector; an update appends the batch mean of each present
    class, the oldest entry leaves a full queue, absent classes keep their queue."""
    est = ClassDistributionEstimator(3, 2, memory_length=2, dtype=torch.float64)
    assert [q.tolist() for q in est.bank] == [[[0.0, 0.0]]] * 3
    est.update(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 5.0]], dtype=torch.float64),
               torch.tensor([0, 0, 255]))
    assert [q.tolist() for q in est.bank] == [[[0, 0], [2, 3]], [[0, 0]], [[0, 0]]]
    first = est.bank
    est.update(torch.tensor([[7.0, 7.0], [1.0, 1.0]], dtype=torch.float64), torch.tensor([0, 2]))
    assert [q.tolist() for q in est.bank] == [[[2, 3], [7, 7]], [[0, 0]], [[0, 0], [1, 1]]]
    # The same bank as the one value the kernel op takes: queues [C, memory_length, D], lengths.
    queues, lengths = est.memory_bank
    assert isinstance(est.memory_bank, kernels.MemoryBank) and lengths.tolist() == [2, 1, 2]
    assert [queues[c, :n].tolist() for c, n in enumerate(lengths.tolist())] == [q.tolist() for q in est.bank]
    # Tensors read before an update keep their values.
    assert [q.tolist() for q in first] == [[[0, 0], [2, 3]], [[0, 0]], [[0, 0]]]
    none = ClassDistributionEstimator(3, 2)
    none.update(torch.ones(4, 2), torch.tensor([0, 1, 2, 0]))
    assert [tuple(q.shape) for q in none.bank] == [(0, 2)] * 3
    with pytest.raises(ValueError, match="memory_length=0"):
        losses.bank_contrastive_loss(torch.ones(1, 2, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.int64),
                                     none.bank, num_classes=3)


def test_statistics_read_before_update_keep_their_values():
    steps = batches(seed=3)
    est = ClassDistributionEstimator(C, D, dtype=torch.float64)
    est.update(*steps[0])
    count, mean, cov = est.count.clone(), est.mean.clone(), est.cov.clone()
    held = est.count, est.mean, est.cov
    est.update(*steps[1])
    for a, b in zip(held, (count, mean, cov)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("covariance", ("diag", "full"))
def test_several_updates_equal_one_update_of_their_union(covariance):
    steps = batches(seed=5)
    split = ClassDistributionEstimator(C, D, covariance=covariance, dtype=torch.float64)
    for feats, labels in steps:
        split.update(feats, labels)
    union = ClassDistributionEstimator(C, D, covariance=covariance, dtype=torch.float64)
    union.update(torch.cat([f for f, _ in steps]), torch.cat([y for _, y in steps]))
    assert torch.equal(split.count, union.count)
    torch.testing.assert_close(split.mean, union.mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(split.cov, union.cov, rtol=1e-12, atol=1e-14)
    # The statistics of a class never seen stay zero.
    assert split.count[3] == 0 and not split.mean[3].any() and not split.cov[3].any()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 16), covariance=st.sampled_from(("diag", "full")))
def test_pixel_order_does_not_matter(seed, covariance):
    """Permuting the pixels of every batch changes statistics and bank only by rounding."""
    steps = batches(seed=seed, sizes=(40, 25))
    a = ClassDistributionEstimator(C, D, covariance=covariance, memory_length=2, dtype=torch.float64)
    b = ClassDistributionEstimator(C, D, covariance=covariance, memory_length=2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    for feats, labels in steps:
        perm = torch.randperm(labels.shape[0], generator=gen)
        a.update(feats, labels)
        b.update(feats[perm], labels[perm])
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("covariance", ("diag", "full"))
def test_state_dict_round_trip(covariance):
    steps = batches(seed=7)
    est = ClassDistributionEstimator(C, D, covariance=covariance, memory_length=3)
    for feats, labels in steps[:3]:
        est.update(feats.float(), labels)
    buffer = io.BytesIO()
    torch.save(est.state_dict(), buffer)
    buffer.seek(0)
    copy = ClassDistributionEstimator(C, D, covariance=covariance, memory_length=3)
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    for feats, labels in steps[3:]:
        est.update(feats.float(), labels)
        copy.update(feats.float(), labels)
    for key, value in est.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value), key
    assert all(torch.equal(a, b) for a, b in zip(copy.bank, est.bank))
    # The loaded tensors are copies: later updates of the source do not leak into the copy.
    state = est.state_dict()
    other = ClassDistributionEstimator(C, D, covariance=covariance, memory_length=3)
    other.load_state_dict(state)
    assert other.mean is not state["mean"]


def test_load_state_dict_rejects_mismatches():
    est = ClassDistributionEstimator(C, D, memory_length=2)
    state = est.state_dict()
    with pytest.raises(ValueError, match="'mean'"):
        ClassDistributionEstimator(C, D + 1, memory_length=2).load_state_dict(state)
    with pytest.raises(ValueError, match="'cov'"):
        ClassDistributionEstimator(C, D, covariance="full", memory_length=2).load_state_dict(state)
    with pytest.raises(ValueError, match="'bank'"):
        ClassDistributionEstimator(C, D, memory_length=3).load_state_dict(state)
    with pytest.raises(KeyError, match="missing"):
        est.load_state_dict({k: v for k, v in state.items() if k != "count"})
    with pytest.raises(ValueError, match="bank_len"):
        est.load_state_dict({**state, "bank_len": torch.full((C,), 3)})


@pytest.mark.parametrize("covariance", ("diag", "full"))
def test_from_reference_checkpoint(tmp_path, covariance):
    gen = torch.Generator().manual_seed(8)
    ave, var = torch.randn(C, D, generator=gen), torch.rand(C, D, generator=gen)
    amount = torch.randint(0, 50, (C,), generator=gen).float()
    path = tmp_path / "proto.pth"
    torch.save({"CoVariance": var, "Ave": ave, "Amount": amount}, path)
    est = ClassDistributionEstimator.from_reference_checkpoint(path, covariance=covariance,
                                                               memory_length=2)
    assert (est.num_classes, est.dim, est.covariance) == (C, D, covariance)
    assert torch.equal(est.mean, ave) and torch.equal(est.count, amount)
    assert torch.equal(est.cov, var if covariance == "diag" else torch.diag_embed(var))
    assert [q.tolist() for q in est.bank] == [[[0.0] * D]] * C
    # It continues exactly like the reference update from those statistics.
    feats, labels = batches(seed=8)[0]
    est.update(feats.float(), labels)
    cov0 = (var if covariance == "diag" else torch.diag_embed(var)).double()
    count, mean, cov, _ = estimator_update_reference(amount.double(), ave.double(), cov0,
                                                     [[] for _ in range(C)], feats.float().double(),
                                                     labels, memory_length=0)
    assert_parity(est.mean, mean, torch.float32, what="estimator mean (from checkpoint)")
    assert_parity(est.cov, cov, torch.float32, what="estimator cov (from checkpoint)")
    torch.save({"mean": ave}, path)
    with pytest.raises(KeyError, match="Ave, CoVariance, Amount"):
        ClassDistributionEstimator.from_reference_checkpoint(path)


def test_repr_names_the_covariance_as_a_config_does():
    assert "covariance='full'," in repr(ClassDistributionEstimator(C, D, covariance="full"))


def test_errors():
    with pytest.raises(ValueError, match="covariance must be one of 'diag', 'full', got 'diagonal'"):
        ClassDistributionEstimator(C, D, covariance="diagonal")
    with pytest.raises(ValueError, match="covariance must be one of 'diag', 'full', got 'none'"):
        ClassDistributionEstimator(C, D, covariance="none")  # an estimator keeps a covariance
    with pytest.raises(ValueError, match="memory_length"):
        ClassDistributionEstimator(C, D, memory_length=-1)
    with pytest.raises(TypeError, match="dtype"):
        ClassDistributionEstimator(C, D, dtype=torch.float16)
    with pytest.raises(ValueError, match="num_classes"):
        ClassDistributionEstimator(0, D)
    est = ClassDistributionEstimator(C, D)
    feats, labels = batches(seed=9)[0]
    with pytest.raises(ValueError, match=rf"\[N, {D}\]"):
        est.update(feats[:, :-1].float(), labels)
    with pytest.raises(ValueError, match=rf"\[N, {D}\]"):
        est.update(feats.float().view(1, -1, D), labels)
    bad = labels.clone()
    bad[4] = C
    with pytest.raises(ValueError, match=f"found {C}"):
        est.update(feats.float(), bad)
    with pytest.raises(ValueError, match="labels"):
        est.update(feats.float(), labels[:-1])
    # A failed update leaves the estimator as it was.
    assert not est.count.any()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_momentum_forgets_like_the_float64_reference(backend, covariance):
    from sepico.reference import momentum_update_reference

    gen = torch.Generator().manual_seed(31)
    c, d, momentum = 5, 9, 0.9
    est = ClassDistributionEstimator(c, d, covariance=covariance, momentum=momentum)
    ref = (torch.zeros(c, dtype=torch.float64), torch.zeros(c, d, dtype=torch.float64),
           torch.zeros((c, d, d) if covariance == "full" else (c, d), dtype=torch.float64))
    for step in range(4):
        feats = torch.randn(300, d, generator=gen) * 0.3 + step  # drifting features
        labels = torch.randint(0, c, (300,), generator=gen)
        labels[labels == step % c] = 255  # one class absent per step
        with kernels.backend(backend):
            est.update(feats, labels)
        ref = momentum_update_reference(*ref, feats.double(), labels, momentum=momentum)
        torch.testing.assert_close(est.count.double(), ref[0], rtol=0, atol=0)
        torch.testing.assert_close(est.mean.double(), ref[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(est.cov.double(), ref[2], rtol=1e-5, atol=1e-5)
    # Forgetting is real: the published merge weighs the early batches far more.
    plain = ClassDistributionEstimator(c, d, covariance=covariance)
    gen = torch.Generator().manual_seed(31)
    for step in range(4):
        feats = torch.randn(300, d, generator=gen) * 0.3 + step
        labels = torch.randint(0, c, (300,), generator=gen)
        labels[labels == step % c] = 255
        plain.update(feats, labels)
    assert (est.mean.mean() - plain.mean.mean()).abs() > 0.3


def test_momentum_must_be_in_the_open_unit_interval():
    for bad in (0.0, 1.0, -0.5, "0.9"):
        with pytest.raises(ValueError, match="momentum must be None or a number in"):
            ClassDistributionEstimator(3, 4, momentum=bad)

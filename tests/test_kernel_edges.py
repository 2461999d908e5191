"""Kernel edges: 64-bit offsets of strided views beyond 2^31 elements, C = 0, ignore_index types,
detached statistics, and the estimator's checks; the same answer on both backends."""
import numpy as np
import pytest
import torch

import kernels
from sepico.estimator import ClassDistributionEstimator
from sepico.reference import class_moments_reference, dist_contrastive_loss_reference
from tests.parity import assert_parity

BACKENDS = ("torch", "triton")


@pytest.fixture(scope="module")
def huge_strided(tmp_path_factory):
    """feats [300, 5] as a channels-first view into a 2.7 G-element float32 file (sparse: only the
    300 columns used are written), so that (D - 1) * stride_d = 4 * (2^29 + 1000) passes 2^31."""
    d, n, m = 5, 300, (1 << 29) + 1000
    path = tmp_path_factory.mktemp("sparse") / "channels_first.f32"
    base = np.memmap(path, dtype=np.float32, mode="w+", shape=(d, m))
    rng = np.random.default_rng(0)
    base[:, m - n:] = rng.standard_normal((d, n)).astype(np.float32) / 3
    feats = torch.from_numpy(base).as_strided((n, d), (1, m), storage_offset=m - n)
    assert (d - 1) * feats.stride(1) > 2 ** 31 and feats.untyped_storage().nbytes() // 4 > 2 ** 31
    labels = torch.from_numpy(rng.integers(0, 3, n))
    labels[::11] = 255
    yield feats, labels
    del base


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_view_beyond_two_to_the_31(huge_strided, backend):
    feats, labels = huge_strided
    gen = torch.Generator().manual_seed(1)
    mean, cov = torch.randn(3, 5, generator=gen) / 3, torch.rand(3, 5, generator=gen)
    x = feats.requires_grad_()
    with kernels.backend(backend):
        loss = kernels.dist_contrastive_loss(x, labels, mean, cov, temperature=0.5)
        loss.backward()
        count, total, second = kernels.class_moments(feats.detach(), labels, 3)
    dense = feats.detach().double().clone().requires_grad_()
    truth = dist_contrastive_loss_reference(dense, labels, mean.double(), cov.double(), temperature=0.5)
    truth.backward()
    assert_parity(loss, truth, torch.float32, what="loss, strided beyond 2^31")
    assert_parity(x.grad, dense.grad, torch.float32, what="loss gradient, strided beyond 2^31")
    ref = class_moments_reference(dense.detach(), labels, 3)
    assert torch.equal(count, ref[0].float())
    assert_parity(total, ref[1], torch.float32, what="class_moments total, strided beyond 2^31")
    assert_parity(second, ref[2], torch.float32, what="class_moments second, strided beyond 2^31")
    x.grad = None


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_backends_agree_on_bad_classes_labels_and_detached_statistics(backend):
    feats, labels = torch.randn(10, 8), torch.randint(0, 3, (10,))
    with kernels.backend(backend):
        with pytest.raises(ValueError, match="mean must hold at least 1 and at most 256 classes, got C = 0"):
            kernels.dist_contrastive_loss(feats, torch.full((10,), 255), torch.zeros(0, 8), None)
        with pytest.raises(ValueError, match=r"num_classes must be in \[1, 256\], got 0"):
            kernels.class_moments(feats, labels, 0)
        for op in (lambda: kernels.class_moments(feats, labels, 3, ignore_index=True),
                   lambda: kernels.dist_contrastive_loss(feats, labels, torch.zeros(3, 8), None, ignore_index=True),
                   lambda: kernels.update_class_distribution(torch.zeros(3), torch.zeros(3, 8), torch.zeros(3, 8),
                                                             feats, labels, ignore_index=1.0)):
            with pytest.raises(TypeError, match="ignore_index must be an int"):
                op()
        x = feats.clone().requires_grad_()
        outputs = (*kernels.class_moments(x, labels, 3, covariance="full"),
                   *kernels.update_class_distribution(torch.zeros(3), torch.zeros(3, 8), torch.zeros(3, 8), x, labels))
    assert not any(t.requires_grad for t in outputs)  # statistics, not a differentiable op


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_the_estimator_checks_labels_the_same_with_and_without_momentum(momentum):
    est = ClassDistributionEstimator(3, 4, momentum=momentum)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or ignore_index=255; found 7"):
        est.update(torch.randn(5, 4), torch.tensor([0, 1, 7, 255, 2]))


@pytest.mark.parametrize("key,value,message", [
    ("mean", float("nan"), "state_dict\\['mean'\\] holds NaN or infinite values"),
    ("cov", float("inf"), "state_dict\\['cov'\\] holds NaN or infinite values"),
    ("count", -1.0, "negative pixel counts"),
    ("cov", -0.5, "negative variances"),
])
def test_estimator_state_with_nan_or_negative_statistics_is_refused(key, value, message):
    source = ClassDistributionEstimator(3, 4)
    source.update(torch.randn(20, 4), torch.randint(0, 3, (20,)))
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state[key].view(-1)[0] = value
    with pytest.raises(ValueError, match=message):
        ClassDistributionEstimator(3, 4).load_state_dict(state)

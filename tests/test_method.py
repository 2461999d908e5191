"""`sepico.method.SePiCo`, the SePiCo part of a step: labels brought to feature resolution and
checked once, the estimator update and the loss on [B, D, h, w] maps, and the host syncs of one
training step."""
import collections
import os
import traceback

import pytest
import torch

import kernels
from sepico import labels, losses
from sepico.method import SePiCo
from sepico.train.trainer import Trainer
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C, D = 5, 12


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    feat = torch.nn.functional.normalize(torch.randn(2, D, 6, 10, generator=gen), dim=1)
    label = torch.randint(0, C, (2, 1, 24, 40), generator=gen)
    label[:, :, :4] = 255
    return feat, label


@pytest.mark.parametrize("variant", ("dist", "proto", "bank"))
def test_update_and_loss_equal_the_map_level_functions(variant):
    """The object's update + loss equal sepico.losses / the estimator called by hand."""
    feat, label = _inputs()
    method = SePiCo(variant, num_classes=C, dim=D, temperature=0.5, memory_length=4,
                    contrast_weight=0.3, reg_weight=0.7)
    small = method.labels(label, feat.shape[-2:])
    assert isinstance(small, kernels.CheckedLabels) and (small.num_classes, small.ignore_index) == (C, 255)
    assert small.tensor.shape == (2, 6, 10) and small.tensor.dtype == torch.int64
    torch.testing.assert_close(small.tensor, labels.labels_at_feature_resolution(label, (6, 10), num_classes=C)[:, 0])
    method.update(feat, small)
    flipped = kernels.checked_labels(small.tensor.flip(-1), C)
    method.update(feat.flip(-1), flipped)  # a second batch: non-trivial statistics and bank
    est = method.estimator
    opts = dict(temperature=0.5, num_classes=C, reg_weight=0.7)
    x = feat.clone().requires_grad_()
    y = feat.clone().requires_grad_()
    got = method.loss(x, small)
    if variant == "dist":
        want = losses.dist_contrastive_loss(y, label, est.mean, est.cov, **opts)
    elif variant == "proto":
        want = losses.proto_contrastive_loss(y, label, est.mean, **opts)
    else:
        want = losses.bank_contrastive_loss(y, label, est.bank, mean=est.mean, **opts)
    torch.testing.assert_close(got, 0.3 * want, rtol=1e-6, atol=1e-7)
    got.backward()
    (0.3 * want).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-8)


def test_linear_ratio_schedule():
    method = SePiCo("dist", num_classes=C, dim=D, ratio=2.0, ratio_schedule="linear", max_iters=10)
    assert [method.ratio(i) for i in (0, 5, 10)] == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="variant"):
        SePiCo("self_training", num_classes=C, dim=D)


def test_labels_are_checked_once(monkeypatch):
    """One range check (one host sync) for a pass's labels: the downscaled labels are known to be in
    range, so the update and the loss do not check them again; a bad label is still an error."""
    feat, label = _inputs(1)
    method = SePiCo("dist", num_classes=C, dim=D)
    checks = []
    real_any = torch.Tensor.any

    def counting_any(self, *a, **k):
        checks.append(traceback.extract_stack()[-2].name)
        return real_any(self, *a, **k)
    monkeypatch.setattr(torch.Tensor, "any", counting_any)
    small = method.labels(label, feat.shape[-2:])
    method.update(feat, small)
    method.loss(feat.clone().requires_grad_(), small).backward()
    assert checks.count("check_label_range") == 1
    bad = label.clone()
    bad[0, 0, -1, -1] = C
    with pytest.raises(ValueError, match=f"found {C}"):
        method.labels(bad, feat.shape[-2:])


@pytest.mark.parametrize("variant", ("dist", "proto"))
def test_statistics_are_scaled_once_per_update(monkeypatch, variant):
    """update scales the estimator's statistics once (kernels.scaled_statistics); every loss
    until the next update takes them as they are, with its own ratio, and equals the op on the
    raw statistics bit for bit; an estimator changed behind the object's back is an error."""
    feat, label = _inputs(2)
    method = SePiCo(variant, num_classes=C, dim=D, temperature=0.5, ratio=2.0,
                    ratio_schedule="linear", max_iters=4, reg_weight=0.5)
    calls = []
    real = kernels.scaled_statistics
    monkeypatch.setattr(kernels, "scaled_statistics", lambda *a, **k: calls.append(1) or real(*a, **k))
    small = method.labels(label, feat.shape[-2:])
    method.update(feat, small)
    est = method.estimator
    for iteration in (1, 3):
        got = method.loss(feat, small, iteration)
        cov = est.cov if variant == "dist" else None
        want = kernels.dist_contrastive_loss(feat, small, est.mean, cov, ratio=method.ratio(iteration),
                                             temperature=0.5, reg_weight=0.5)
        assert torch.equal(got, want)
    assert len(calls) == 1
    est.update(feat, small.tensor)  # not through method.update: the scaled statistics are stale
    with pytest.raises(RuntimeError, match="updated outside SePiCo.update"):
        method.loss(feat, small)
    method.load_state_dict(est.state_dict())
    assert torch.isfinite(method.loss(feat, small)) and len(calls) == 2


# Host reads of tensors (item / tolist / bool / int / float) made by sepico and kernels code during
# one training step: on a GPU each is a device sync. Reads of host-side values are not counted: the
# data pipeline (before .to(device)), the draws of the trainer's host random generator (the
# augmentation gates of augment.draw_strong, the jitter order of augment.color_jitter) and torch's
# own reads (AdamW's step counters live on the CPU).
HOST_SIDE = (os.path.join("sepico", "data", ""), os.path.join("sepico", "train", "data.py"))
HOST_RNG = ("draw_strong", "color_jitter")
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def _count_host_reads(monkeypatch):
    sites = collections.Counter()

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            path = os.path.relpath(caller.filename, ROOT)
            if (path.startswith(("sepico", "kernels")) and not path.startswith(HOST_SIDE)
                    and caller.name not in HOST_RNG):
                sites[f"{path}:{caller.name}"] += 1
            return original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    for name in READS:
        wrap(name)
    return sites


@pytest.mark.usefixtures("one_thread")
def test_host_syncs_per_training_step(tmp_path, monkeypatch):
    """A DistCL step (teacher pseudo labels, estimator update, source / target / mix passes, the
    optimiser step) on the Triton kernels (the GPU code path) reads the device three times: the
    range checks of the source labels and of the target pseudo labels, and the step's logged
    values, fetched together."""
    trainer = Trainer(tiny_config("dist"), tmp_path, progress=False)
    trainer.step()  # iteration 0: before start_distribution_iter (= 1), no contrastive passes
    sites = _count_host_reads(monkeypatch)
    with kernels.backend("triton"):
        log = trainer.step()
    assert "loss_cl_src" in log and "loss_cl_tgt" in log and "loss_mix" in log
    assert dict(sites) == {"kernels/_checks.py:check_label_range": 2,
                           "sepico/train/trainer.py:_update": 1}, dict(sites)

"""The ops on a whole [B, D, h, w] map (one launch, read in place, gradient in the map's layout)
against the same pixels as rows [N, D]: the float64 reference for the loss, the rows call of the
same op for the moments, the update and BankCL. Both backends; the Triton kernels also at the GPU
launch configurations (``kernels.tiles("gpu")``: 32-pixel tiles and 16-channel chunks of the map
path, pixel blocks that end inside an image)."""
import contextlib

import pytest
import torch

import kernels
import kernels.contrastive
from sepico.reference import dist_contrastive_loss_reference as reference
from tests.parity import assert_parity, make_stats

B, D, H, W, C = 3, 40, 7, 37, 6  # 259 pixels per image: no tile size divides it
RUNS = [("torch", "auto"), ("triton", "auto"), ("triton", "gpu")]
LAYOUTS = ("contiguous", "channels_last", "batch_slice", "one_image", "swapped_hw")


def _map(layout, gen, dtype=torch.float32):
    """A [B', D, h, w] map of the given layout (its values drawn in a fixed order)."""
    if layout == "batch_slice":  # every other image of a larger map: image stride 2 D h w
        return torch.randn(2 * B, D, H, W, generator=gen).to(dtype)[::2]
    if layout == "one_image":
        return torch.randn(1, D, H, W, generator=gen).to(dtype)
    if layout == "swapped_hw":  # h and w do not merge: the op takes a contiguous copy
        return torch.randn(B, D, W, H, generator=gen).to(dtype).transpose(2, 3)
    x = torch.randn(B, D, H, W, generator=gen).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _labels(shape, gen, ignore_frac=0.25):
    y = torch.randint(0, C, shape, generator=gen)
    y[y == 1] = 2  # class 1 absent
    y[torch.rand(shape, generator=gen) < ignore_frac] = 255
    return y


def _rows(t):
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _run(backend, tiles):
    stack = contextlib.ExitStack()
    stack.enter_context(kernels.backend(backend))
    stack.enter_context(kernels.tiles(tiles))
    return stack


# The kernels at the interpreter's large tiles take the contiguous map only (the GPU tiles and the
# torch path take every layout); full covariance at the GPU tiles is slow in the interpreter
# (16-channel chunks inside a class loop): the contiguous map stands for the layouts there too
# (the layout code is shared by every kind).
LOSS_CASES = [(b, t, layout, cov) for b, t in RUNS for layout in LAYOUTS for cov in ("none", "diag", "full")
              if not ((t == "auto" and b == "triton") or (cov == "full" and t == "gpu"))
              or layout == "contiguous"]
LAYOUT_RUNS = [(b, t, layout) for b, t in RUNS for layout in ("contiguous", "channels_last", "batch_slice")
               if not (b, t) == ("triton", "auto") or layout == "contiguous"]


@pytest.mark.parametrize("backend,tiles,layout,cov_kind", LOSS_CASES)
def test_loss_on_a_map_matches_the_reference(backend, tiles, layout, cov_kind):
    slow = cov_kind == "full" and tiles == "gpu"
    gen = torch.Generator().manual_seed(LAYOUTS.index(layout) * 7 + len(cov_kind))
    feat = _map(layout, gen)
    if slow:  # two images of 7 x 19 pixels: still blocks that end inside an image
        feat = feat[:2, :, :, :19].contiguous()
    labels = _labels(tuple(feat.shape[:1] + feat.shape[2:]), gen)
    weight = torch.rand(labels.shape, generator=gen)
    mean, cov = make_stats(C, D, gen, full=cov_kind == "full")
    cov = None if cov_kind == "none" else cov
    grad_out = torch.rand(labels.shape, generator=gen)
    for reduction in ("none",) if slow else ("mean", "none"):
        x = feat.clone().requires_grad_()
        with _run(backend, tiles):
            loss = kernels.dist_contrastive_loss(x, labels, mean, cov, ratio=0.7, temperature=0.5,
                                                 weight=weight, reduction=reduction)
        loss.backward(grad_out if reduction == "none" else None)
        rows = _rows(feat).double().requires_grad_()
        truth = reference(rows, labels.reshape(-1), mean.double(), None if cov is None else cov.double(),
                          ratio=0.7, temperature=0.5, weight=weight.reshape(-1).double(), reduction=reduction)
        truth.backward(grad_out.reshape(-1).double() if reduction == "none" else None)
        if reduction == "none":
            assert loss.shape == labels.shape
            truth = truth.view(labels.shape)
        assert x.grad.shape == feat.shape
        assert_parity(loss, truth, torch.float32, what=f"map loss {cov_kind}")
        assert_parity(_rows(x.grad), rows.grad, torch.float32, what=f"map loss gradient {cov_kind}")


@pytest.mark.parametrize("backend,tiles", RUNS)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_the_kernels_buffer_is_the_gradient(backend, tiles, layout, monkeypatch):
    """float32 map: feat.grad is the buffer the forward wrote (no copy, no second N x D tensor),
    in the map's layout; the regulariser's gradient is added into it. The test keeps the buffer's
    storage alive (so its memory cannot be reused by a copy) but no reference to the tensor
    itself (which would stop autograd from handing it on)."""
    storages = []
    make = kernels.contrastive.gradient_buffer

    def recording(*args):
        out = make(*args)
        storages.append(out.untyped_storage())
        return out
    monkeypatch.setattr(kernels.contrastive, "gradient_buffer", recording)
    gen = torch.Generator().manual_seed(4)
    feat = _map(layout, gen).requires_grad_()
    labels = _labels((B, H, W), gen)
    mean, cov = make_stats(C, D, gen, full=False)
    with _run(backend, tiles):
        kernels.dist_contrastive_loss(feat, labels, mean, cov, temperature=0.5, reg_weight=1.0).backward()
    assert len(storages) == 1
    assert feat.grad.untyped_storage().data_ptr() == storages[0].data_ptr()
    assert feat.grad.stride() == feat.stride()


@pytest.mark.parametrize("backend,tiles", RUNS)
def test_regulariser_on_a_map_matches_rows(backend, tiles):
    gen = torch.Generator().manual_seed(9)
    feat = _map("contiguous", gen)
    labels = _labels((B, H, W), gen)
    mean, cov = make_stats(C, D, gen, full=False)
    x = feat.clone().requires_grad_()
    with _run(backend, tiles):
        loss = kernels.dist_contrastive_loss(x, labels, mean, cov, temperature=0.5, reg_weight=0.6)
    loss.backward()
    rows = _rows(feat).double().requires_grad_()
    with kernels.backend("torch"):
        truth = kernels.dist_contrastive_loss(rows, labels.reshape(-1), mean.double(), cov.double(),
                                              temperature=0.5, reg_weight=0.6)
    truth.backward()
    assert_parity(loss, truth, torch.float32, what="map loss + regulariser")
    assert_parity(_rows(x.grad), rows.grad, torch.float32, what="map loss + regulariser gradient")


@pytest.mark.parametrize("backend,tiles,layout", LAYOUT_RUNS)
def test_moments_and_update_on_a_map_match_rows(backend, tiles, layout):
    gen = torch.Generator().manual_seed(13)
    feat = _map(layout, gen)
    labels = _labels((feat.shape[0], H, W), gen).to(torch.int32)
    with _run(backend, tiles):
        for covariance in ("diag", "full"):
            got = kernels.class_moments(feat, labels, C, covariance=covariance)
            want = kernels.class_moments(_rows(feat).contiguous(), labels.reshape(-1), C,
                                         covariance=covariance)
            for a, b in zip(got, want):
                assert_parity(a, b, torch.float32, what=f"map moments {covariance}")
        count = torch.rand(C) * 50
        mean, cov = make_stats(C, D, gen, full=False)
        got = kernels.update_class_distribution(count, mean, cov, feat, labels)
        want = kernels.update_class_distribution(count, mean, cov, _rows(feat).contiguous(),
                                                 labels.reshape(-1))
    for a, b in zip(got, want):
        assert_parity(a, b, torch.float32, what="map update")


@pytest.mark.parametrize("backend,tiles,layout", LAYOUT_RUNS)
def test_bank_loss_on_a_map_matches_rows(backend, tiles, layout):
    """BankCL on a map (both backends, the kernel at its GPU tiles too) against the float64 rows
    call of the torch path (itself against the reference and the golden vectors in
    test_losses.py / test_golden.py), with C = 1 (no negatives: l = 0) among the cases."""
    gen = torch.Generator().manual_seed(21)
    feat = _map(layout, gen)
    labels = _labels((feat.shape[0], H, W), gen)
    bank = torch.randn(C, 5, D, generator=gen)
    lengths = torch.tensor([1, 5, 3, 5, 2, 4])
    mean = torch.randn(C, D, generator=gen)
    for classes in (C, 1):
        y = labels if classes == C else torch.where(labels == 255, labels, 0)
        x = feat.clone().requires_grad_()
        with _run(backend, tiles):
            loss = kernels.bank_contrastive_loss(x, y, kernels.MemoryBank(bank[:classes], lengths[:classes]),
                                                 temperature=0.5, reg_weight=0.5, mean=mean[:classes])
        loss.backward()
        rows = _rows(feat).double().requires_grad_()
        with kernels.backend("torch"):
            truth = kernels.bank_contrastive_loss(
                rows, y.reshape(-1), kernels.MemoryBank(bank[:classes].double(), lengths[:classes]),
                temperature=0.5, reg_weight=0.5, mean=mean[:classes].double())
        truth.backward()
        assert x.grad.stride() == feat.stride() or layout == "batch_slice"
        assert_parity(loss, truth, torch.float32, what=f"map bank loss{' C=1' * (classes == 1)}")
        assert_parity(_rows(x.grad), rows.grad, torch.float32, what="map bank loss gradient")


def test_map_shapes_are_checked():
    feat = torch.zeros(2, 4, 3, 5)
    mean = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"\[B, h, w\] = \[2, 3, 5\]"):
        kernels.dist_contrastive_loss(feat, torch.zeros(2, 15, dtype=torch.int64), mean)
    with pytest.raises(ValueError, match="weight must have shape"):
        kernels.dist_contrastive_loss(feat, torch.zeros(2, 3, 5, dtype=torch.int64), mean,
                                      weight=torch.ones(30))
    with pytest.raises(ValueError, match=r"\[N, D\] or \[B, D, h, w\]"):
        kernels.class_moments(feat[0], torch.zeros(3, 5, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="reduction='mean'"):
        kernels.dist_contrastive_loss(feat, torch.zeros(2, 3, 5, dtype=torch.int64), mean,
                                      reduction="sum", reg_weight=1.0)

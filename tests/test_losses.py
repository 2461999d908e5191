"""SePiCo losses on feature maps: label downscaling, DistCL / ProtoCL / BankCL parity with the
float64 references of sepico/reference.py on both backends, invariances, options and bad input."""
from collections import deque
from itertools import product

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from sepico import losses
from sepico import reference as ref
from tests.helpers import make_label
from tests.parity import assert_parity

C = 6
PRESENT = (0, 2, 3, 5)  # classes 1 and 4 never appear in the labels
D = 13                  # not a multiple of any block size
GRID = (5, 7)           # feature map h x w


# --------------------------------------------------------------------------- inputs

def make_inputs(stride, seed, *, batch=2, grid=GRID, dim=D, num_classes=C, full=False):
    """float64 feat [B, D, h, w] (ReLU'd and L2-normalised like the projection head), labels at
    stride x the feature size, class means, covariances, and a bank with queues of 1 to 4."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    feat = F.normalize(torch.randn(batch, dim, h, w, generator=gen, dtype=torch.float64).relu()
                       + 0.05, dim=1)
    label = make_label(batch, h * stride, w * stride, gen,
                       classes=PRESENT if num_classes == C else tuple(range(num_classes)))
    mean = F.normalize(torch.randn(num_classes, dim, generator=gen, dtype=torch.float64).relu()
                       + 0.05, dim=1)
    if full:
        b = torch.randn(num_classes, dim, dim, generator=gen, dtype=torch.float64) / dim
        cov = b @ b.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=torch.float64)
    else:
        cov = torch.rand(num_classes, dim, generator=gen, dtype=torch.float64) * 0.5
    lengths = torch.randint(1, 5, (num_classes,), generator=gen).tolist()
    bank = [torch.randn(n, dim, generator=gen, dtype=torch.float64) / dim ** 0.5 for n in lengths]
    bank[0][0] = 0  # the reference estimator's initial zero entry
    return feat, label, mean, cov, bank


def loss_pair(mode, feat, label, mean, cov, bank, dtype, **opts):
    """(ours, float64 reference, reference in `dtype`): each a (loss, d loss / d feat) pair."""
    def run(fn, x_dtype, stat_dtype):
        x = feat.to(x_dtype, copy=True).requires_grad_()
        m, cv = mean.to(stat_dtype), cov.to(stat_dtype)
        bk = [q.to(stat_dtype) for q in bank]
        loss = fn(x, label, m, cv, bk)
        loss.backward()
        return loss.detach(), x.grad

    ours, refs = {
        "dist": (lambda x, y, m, cv, bk: losses.dist_contrastive_loss(x, y, m, cv, **opts),
                 lambda x, y, m, cv, bk: ref.dist_contrastive_map_reference(x, y, m, cv, **opts)),
        "proto": (lambda x, y, m, cv, bk: losses.proto_contrastive_loss(x, y, m, **opts),
                  lambda x, y, m, cv, bk: ref.proto_contrastive_map_reference(x, y, m, **opts)),
        "bank": (lambda x, y, m, cv, bk: losses.bank_contrastive_loss(x, y, bk, mean=m, **opts),
                 lambda x, y, m, cv, bk: ref.bank_contrastive_map_reference(x, y, bk, mean=m, **opts)),
    }[mode]
    truth = run(refs, torch.float64, torch.float64)
    eager = run(refs, dtype, dtype) if dtype != torch.float64 else None
    # Statistics come from the estimator in float32 in training; feed the same values.
    return run(ours, dtype, torch.float64 if dtype == torch.float64 else torch.float32), truth, eager


def check(mode, ours, truth, eager, dtype, tag=""):
    assert ours[0].dtype == dtype
    assert_parity(ours[0], truth[0], dtype, eager=None if eager is None else eager[0],
                  what=f"losses.{mode} loss{tag}")
    assert_parity(ours[1], truth[1], dtype, eager=None if eager is None else eager[1],
                  what=f"losses.{mode} grad{tag}")


# --------------------------------------------------------------------------- parity, torch path

SWEEP = list(product(("dist", "dist-full", "proto", "bank"), (4, 8), (True, False), (0.0, 1.0)))


@pytest.mark.parametrize("mode,stride,pool,reg", SWEEP)
def test_parity_float64(mode, stride, pool, reg):
    feat, label, mean, cov, bank = make_inputs(stride, seed=stride + 10 * pool + 100 * int(reg),
                                               full=mode == "dist-full")
    opts = dict(temperature=0.5, use_avg_pool=pool, num_classes=C, reg_weight=reg)
    if mode.startswith("dist"):
        opts["ratio"] = 0.7
    ours, truth, _ = loss_pair(mode.split("-")[0], feat, label, mean, cov, bank, torch.float64, **opts)
    check(mode, ours, truth, None, torch.float64)


@pytest.mark.parametrize("mode,stride,pool,reg", SWEEP[::3])
def test_parity_float32(mode, stride, pool, reg):
    feat, label, mean, cov, bank = make_inputs(stride, seed=7 + stride, full=mode == "dist-full")
    opts = dict(temperature=0.5, use_avg_pool=pool, num_classes=C, reg_weight=reg)
    if mode.startswith("dist"):
        opts["ratio"] = 0.7
    ours, truth, eager = loss_pair(mode.split("-")[0], feat, label, mean, cov, bank, torch.float32, **opts)
    check(mode, ours, truth, eager, torch.float32)


def test_parity_published_setting():
    """Temperature 100, ratio 1, regulariser on, 19 classes, D = 64, B = 3 at stride 4."""
    gen = torch.Generator().manual_seed(19)
    feat, label, mean, cov, bank = make_inputs(4, seed=19, batch=3, grid=(6, 9), dim=64, num_classes=19)
    label = make_label(3, 24, 36, gen, classes=tuple(range(0, 19, 2)))
    for mode in ("dist", "proto", "bank"):
        ours, truth, _ = loss_pair(mode, feat, label, mean, cov, bank, torch.float64,
                                   num_classes=19, reg_weight=1.0)
        check(mode, ours, truth, None, torch.float64)


# --------------------------------------------------------------------------- parity, triton path

@pytest.mark.parametrize("mode,stride,reg", [("dist", 4, 1.0), ("dist-full", 8, 0.0),
                                             ("proto", 8, 1.0)])
def test_parity_triton_backend(mode, stride, reg):
    """The fused Triton kernel (through the interpreter) on strided per-image views of feat."""
    feat, label, mean, cov, bank = make_inputs(stride, seed=31 + stride, full=mode == "dist-full")
    opts = dict(temperature=0.5, num_classes=C, reg_weight=reg)
    if mode.startswith("dist"):
        opts["ratio"] = 0.7
    with kernels.backend("triton"):
        ours, truth, eager = loss_pair(mode.split("-")[0], feat, label, mean, cov, bank,
                                       torch.float32, **opts)
    check(mode, ours, truth, eager, torch.float32, tag=" (triton)")


def test_channels_last_and_bfloat16_inputs():
    feat, label, mean, cov, _ = make_inputs(4, seed=5)
    want = ref.dist_contrastive_map_reference(feat, label, mean, cov, num_classes=C, temperature=0.5)
    x = feat.float().contiguous(memory_format=torch.channels_last).requires_grad_()
    got = losses.dist_contrastive_loss(x, label, mean.float(), cov.float(), num_classes=C, temperature=0.5)
    got.backward()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    assert_parity(got, want, torch.float32, what="losses.dist loss (channels_last)")
    x = feat.to(torch.bfloat16)
    got = losses.dist_contrastive_loss(x, label, mean.float(), cov.float(), num_classes=C, temperature=0.5)
    truth = ref.dist_contrastive_map_reference(x.double(), label, mean, cov, num_classes=C, temperature=0.5)
    assert got.dtype == torch.float32
    assert_parity(got, truth, torch.bfloat16, what="losses.dist loss")


# --------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("backend", ("torch", "triton"))
@pytest.mark.parametrize("mode", ("dist", "proto", "bank"))
def test_all_ignored_returns_connected_zero(mode, backend):
    """Deliberate difference from the public code, which returns an unconnected constant: the
    zero here backpropagates (zero gradients), so loss.backward() never breaks."""
    feat, label, mean, cov, bank = make_inputs(4, seed=2)
    x = feat.float().requires_grad_()
    for lab in (torch.full_like(label, 255),                 # ignored everywhere
                label * 0 + (torch.arange(label.shape[-1]) % 2)):  # every cell a 50 % tie
        with kernels.backend(backend):
            loss = losses.ContrastiveLoss(mode, num_classes=C, reg_weight=1.0)(
                x, lab, mean=mean.float(), cov=cov.float(), bank=[q.float() for q in bank])
        assert loss.dtype == torch.float32 and loss.item() == 0.0
        assert loss.requires_grad
        x.grad = None
        loss.backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("mode", ("dist", "proto", "bank"))
def test_single_class_regulariser_is_zero(mode):
    """C = 1: sum_c log softmax is identically 0. The public code divides it by C log C = 0 and
    returns NaN; this project returns 0, so reg_weight changes nothing."""
    feat, label, mean, cov, bank = make_inputs(4, seed=4, num_classes=1)
    results = []
    for reg in (0.0, 1.0):
        x = feat.clone().requires_grad_()
        loss = losses.ContrastiveLoss(mode, num_classes=1, reg_weight=reg, temperature=0.5)(
            x, label, mean=mean, cov=cov, bank=bank)
        loss.backward()
        results.append((loss.item(), x.grad))
    assert results[1][0] == results[0][0] and torch.equal(results[1][1], results[0][1])
    assert torch.isfinite(results[1][1]).all()
    if mode != "dist":  # one class: ProtoCL and BankCL have nothing to contrast against
        assert results[1][0] == 0.0


def test_absent_classes_enter_the_softmax():
    """A class that no pixel has still competes: dropping it from the statistics changes the loss."""
    feat, label, mean, cov, _ = make_inputs(4, seed=6)
    full = losses.proto_contrastive_loss(feat, label, mean, num_classes=C)
    keep = [c for c in range(C) if c != 4]
    relabel = label.clone()
    relabel[relabel == 5] = 4
    fewer = losses.proto_contrastive_loss(feat, relabel, mean[keep], num_classes=C - 1)
    assert full.item() > fewer.item()


def test_bank_accepts_reference_deques():
    feat, label, mean, _, bank = make_inputs(8, seed=8)
    deques = [deque(list(q.split(1)), maxlen=5) for q in bank]
    a = losses.bank_contrastive_loss(feat, label, bank, num_classes=C, temperature=0.5)
    b = losses.bank_contrastive_loss(feat, label, deques, num_classes=C, temperature=0.5)
    assert a.item() == b.item()


def test_retained_graph_second_backward():
    feat, label, mean, cov, bank = make_inputs(4, seed=9)
    for mode in ("dist", "bank"):
        x = feat.clone().requires_grad_()
        loss = losses.ContrastiveLoss(mode, num_classes=C, temperature=0.5)(x, label, mean, cov, bank)
        loss.backward(retain_graph=True)
        first = x.grad.clone()
        x.grad = None
        (2 * loss).backward()
        torch.testing.assert_close(x.grad, 2 * first, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ("dist", "dist-full", "proto", "bank"))
def test_functions_are_the_feature_labels_and_the_kernel_op(mode):
    """The map-level functions are an adapter and nothing more: sepico.labels's checked feature
    labels, then the kernels op of the loss, bit for bit in loss and gradient."""
    from sepico.labels import checked_feature_labels

    feat, label, mean, cov, bank = make_inputs(4, seed=12, full=mode == "dist-full")
    opts = dict(temperature=0.5, reg_weight=0.7)
    small = checked_feature_labels(label, feat.shape[-2:], num_classes=C, scale_min_ratio=0.6)
    x, y = feat.clone().requires_grad_(), feat.clone().requires_grad_()
    if mode == "bank":
        packed = torch.zeros(C, max(len(q) for q in bank), D, dtype=feat.dtype)
        for c, q in enumerate(bank):
            packed[c, :len(q)] = q
        memory_bank = kernels.MemoryBank(packed, torch.tensor([len(q) for q in bank]))
        got = losses.bank_contrastive_loss(x, label, bank, mean=mean, num_classes=C,
                                           scale_min_ratio=0.6, **opts)
        want = kernels.bank_contrastive_loss(y, small, memory_bank, mean=mean, **opts)
    elif mode == "proto":
        got = losses.proto_contrastive_loss(x, label, mean, num_classes=C, scale_min_ratio=0.6, **opts)
        want = kernels.dist_contrastive_loss(y, small, mean, **opts)
    else:
        got = losses.dist_contrastive_loss(x, label, mean, cov, ratio=0.8, num_classes=C,
                                           scale_min_ratio=0.6, **opts)
        want = kernels.dist_contrastive_loss(y, small, mean, cov, ratio=0.8, **opts)
    got.backward()
    want.backward()
    assert torch.equal(got, want) and torch.equal(x.grad, y.grad)


def test_functions_take_the_kernel_ops_labels_too():
    """Labels already at feature resolution (a factor of 1, the identity) give the kernels op of
    the same name, bit for bit: the map-level names take the ops' labels and finer ones."""
    from sepico.labels import labels_at_feature_resolution

    feat, label, mean, cov, bank = make_inputs(4, seed=13)
    small = labels_at_feature_resolution(label, feat.shape[-2:], num_classes=C)[:, 0]
    for pool in (True, False):
        got = losses.dist_contrastive_loss(feat, small, mean, cov, num_classes=C, use_avg_pool=pool,
                                           temperature=0.5)
        want = kernels.dist_contrastive_loss(feat, small, mean, cov, temperature=0.5)
        assert torch.equal(got, want)


def test_module_matches_functions():
    feat, label, mean, cov, bank = make_inputs(4, seed=10)
    opts = dict(num_classes=C, temperature=0.5, reg_weight=1.0, use_avg_pool=False)
    pairs = [
        (losses.ContrastiveLoss("dist", ratio=0.5, **opts),
         losses.dist_contrastive_loss(feat, label, mean, cov, ratio=0.5, **opts)),
        (losses.ContrastiveLoss("proto", **opts), losses.proto_contrastive_loss(feat, label, mean, **opts)),
        (losses.ContrastiveLoss("bank", **opts),
         losses.bank_contrastive_loss(feat, label, bank, mean=mean, **opts)),
    ]
    for module, want in pairs:
        assert module(feat, label, mean=mean, cov=cov, bank=bank).item() == want.item()
    weighted = losses.ContrastiveLoss("proto", loss_weight=0.25, **opts)
    assert weighted(feat, label, mean).item() == pytest.approx(0.25 * pairs[1][1].item(), rel=1e-14)
    with pytest.raises(TypeError, match="ratio"):
        losses.ContrastiveLoss("proto", ratio=1.0)
    with pytest.raises(ValueError, match="mode"):
        losses.ContrastiveLoss("pixel")


# --------------------------------------------------------------------------- invariance

@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 16), mode=st.sampled_from(("dist", "dist-full", "proto", "bank")),
       stride=st.sampled_from((1, 2, 4)), reg=st.booleans())
def test_permuting_pixels_leaves_the_loss_unchanged(seed, mode, stride, reg):
    """Moving feature pixels (with their label cells) across positions and images changes the
    loss only by rounding, and moves each pixel's gradient with it."""
    feat, label, mean, cov, bank = make_inputs(stride, seed=seed, full=mode == "dist-full")
    batch, dim, h, w = feat.shape
    perm = torch.randperm(batch * h * w, generator=torch.Generator().manual_seed(seed))
    pixels = feat.permute(0, 2, 3, 1).reshape(-1, dim)
    cells = label.view(batch, h, stride, w, stride).permute(0, 1, 3, 2, 4).reshape(-1, stride, stride)

    def to_map(pix, cel):
        f = pix.reshape(batch, h, w, dim).permute(0, 3, 1, 2).contiguous()
        lab = cel.reshape(batch, h, w, stride, stride).permute(0, 1, 3, 2, 4)
        return f, lab.reshape(batch, 1, h * stride, w * stride)

    opts = dict(num_classes=C, temperature=0.5, reg_weight=float(reg))
    if mode.startswith("dist"):
        opts["ratio"] = 0.7
    module = losses.ContrastiveLoss(mode.split("-")[0], **opts)
    results = []
    for order in (torch.arange(batch * h * w), perm):
        f, lab = to_map(pixels[order], cells[order])
        f.requires_grad_()
        loss = module(f, lab, mean=mean, cov=cov, bank=bank)
        loss.backward()
        results.append((loss.detach(), f.grad.permute(0, 2, 3, 1).reshape(-1, dim)))
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_b, grad_a[perm], rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- bad input

def test_errors():
    feat, label, mean, cov, bank = make_inputs(4, seed=11)
    dist = lambda f=feat, y=label, m=mean, cv=cov, **kw: losses.dist_contrastive_loss(
        f, y, m, cv, num_classes=kw.pop("num_classes", C), **kw)
    bad = label.clone()
    bad[0, 0, -1, -1] = C  # a class id >= C that is not ignore
    with pytest.raises(ValueError, match=rf"\[0, {C}\).*found {C}"):
        dist(y=bad)
    with pytest.raises(ValueError, match="multiple"):
        dist(y=label[..., :-2])  # width no longer the feature width times the factor
    with pytest.raises(ValueError, match="multiple"):
        dist(y=label[..., :-4, :])  # height does not match the width's factor
    with pytest.raises(ValueError, match="cov must have shape"):
        dist(cv=cov[:, :-1])
    with pytest.raises(ValueError, match="cov must have shape"):
        dist(cv=cov[:-1])
    with pytest.raises(ValueError, match="cov is required"):
        dist(cv=None)
    with pytest.raises(ValueError, match="mean must have shape"):
        dist(m=mean[:, :-1])
    with pytest.raises(ValueError, match="mean must have shape"):
        dist(num_classes=C + 1)
    with pytest.raises(ValueError, match=r"\[B, D, h, w\]"):
        dist(f=feat.permute(0, 2, 3, 1).reshape(-1, D))
    with pytest.raises(ValueError, match=r"\[B, D, h, w\]"):
        dist(f=feat[0])
    with pytest.raises(ValueError, match="batch size"):
        dist(y=label[:1])
    with pytest.raises(TypeError, match="integer"):
        dist(y=label.float())
    with pytest.raises(ValueError, match="requires? grad"):
        dist(m=mean.clone().requires_grad_())
    with pytest.raises(ValueError, match="one queue per class"):
        losses.bank_contrastive_loss(feat, label, bank[:-1], num_classes=C)
    with pytest.raises(ValueError, match="empty"):
        losses.bank_contrastive_loss(feat, label, [q[:0] for q in bank], num_classes=C)
    with pytest.raises(ValueError, match=r"bank\[2\] must have shape"):
        losses.bank_contrastive_loss(feat, label, bank[:2] + [bank[2][:, :-1]] + bank[3:], num_classes=C)
    with pytest.raises(ValueError, match="mean .* required"):
        losses.bank_contrastive_loss(feat, label, bank, num_classes=C, reg_weight=1.0)
    with pytest.raises(ValueError, match="temperature"):
        losses.proto_contrastive_loss(feat, label, mean, num_classes=C, temperature=0)

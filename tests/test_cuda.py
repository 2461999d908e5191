"""The compiled Triton kernels and the training step on a CUDA device (skipped without one).

`make gpu-check` runs this file on a GPU machine: float32 (exact products), TF32 and bfloat16
against float64; N x D beyond 2^31 elements (int64 offsets); bitwise repeatability of the kernels
and of a 20-iteration DAFormer MiT-B0 run with ``train.deterministic``; ``torch.compile`` of a
step with the kernels inside; one bfloat16 ``Trainer.step()``.
"""
import pytest
import torch

import kernels
from kernels._backend import interpreting
from sepico.reference import (class_moments_reference, dist_contrastive_loss_reference,
                              update_class_distribution_reference)
from tests.parity import assert_parity, make_feats, make_labels, make_stats, rel_error

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
    # Under the interpreter a CUDA tensor's kernel runs on a host copy: that would test nothing compiled.
    pytest.mark.skipif(torch.cuda.is_available() and interpreting(),
                       reason="the kernels run in the Triton interpreter (tests/conftest.py): make gpu-check runs "
                              "this file compiled (KERNELS_TEST_COMPILED=1)"),
]
DEV = "cuda"
# float32 products are exact by default; TF32 on request (torch.backends.cuda.matmul.allow_tf32)
# bounds the loss within 3e-4 (the tf32 tolerance); bfloat16 inputs within 1e-2.
TOL = {"ieee": 1e-5, "tf32": 3e-4, "bf16": 1e-2}


@pytest.fixture
def tf32(request):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = request.param == "tf32"
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = old


def _loss_inputs(n, d, c, cov_kind, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed + n + d + c)
    feats = make_feats(n, d, gen, dtype)
    labels = make_labels(n, c, gen, ignore_frac=0.2, absent=(1,))
    mean, cov = make_stats(c, d, gen, full=cov_kind == "full")
    return feats, labels, mean, None if cov_kind == "none" else cov


@pytest.mark.parametrize("tf32", ["ieee", "tf32", "bf16"], indirect=True)
@pytest.mark.parametrize("cov_kind", ["none", "diag", "full"])
@pytest.mark.parametrize("n,d,c", [(4099, 130, 19), (517, 64, 130)])
def test_loss_on_cuda_matches_float64(tf32, cov_kind, n, d, c):
    dtype = torch.bfloat16 if tf32 == "bf16" else torch.float32
    feats, labels, mean, cov = _loss_inputs(n, d, c, cov_kind, dtype)

    def run(fn, device, x_dtype, stat_dtype):
        x = feats.to(device, x_dtype).requires_grad_()
        loss = fn(x, labels.to(device), mean.to(device, stat_dtype),
                  None if cov is None else cov.to(device, stat_dtype), ratio=0.7, temperature=0.5)
        loss.backward()
        return loss.cpu(), x.grad.cpu()

    loss, grad = run(kernels.dist_contrastive_loss, DEV, dtype, torch.float32)
    loss_t, grad_t = run(dist_contrastive_loss_reference, "cpu", torch.float64, torch.float64)
    loss_e, grad_e = run(dist_contrastive_loss_reference, DEV, dtype, dtype)
    if tf32 == "tf32":
        # The three-way rule against the eager reference with allow_tf32 on, plus the tf32 floor.
        # Where cuBLAS keeps float32 for a shape (eager 3.6e-7 off on the 4099 x 130 cases on an
        # H200), TF32's own unit roundoff 2^-11 stands in for the eager error: rounded operands
        # put the gradient about 4e-4 off float64 (tests/test_tf32.py prints its figures).
        # Truncated operands (before kernels/contrastive.py rounded them) gave 8.6e-4 to 1.1e-3.
        for what, a, t, e in (("loss", loss, loss_t, loss_e), ("gradient", grad, grad_t, grad_e)):
            err, eager_err = rel_error(a, t), rel_error(e, t)
            assert err <= max(eager_err, 2.0 ** -11) + TOL["tf32"], \
                f"{what} tf32 error {err:.2e}, eager TF32 {eager_err:.2e}"
        return
    assert_parity(loss, loss_t, dtype, eager=loss_e, what=f"cuda loss {cov_kind}")
    assert_parity(grad, grad_t, dtype, eager=grad_e, what=f"cuda loss gradient {cov_kind}")


@pytest.mark.parametrize("kind", ["diag", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moments_and_update_on_cuda_match_float64(kind, dtype):
    gen = torch.Generator().manual_seed(3)
    n, d, c = 200_003, 70, 19
    feats = make_feats(n, d, gen, dtype) + 0.3
    labels = make_labels(n, c, gen, ignore_frac=0.2, absent=(1,))
    count, total, second = kernels.class_moments(feats.to(DEV), labels.to(DEV), c, covariance=kind)
    ref = class_moments_reference(feats.double(), labels, c, covariance=kind)
    assert torch.equal(count.cpu(), ref[0].float())
    for what, a, t in (("total", total, ref[1]), ("second", second, ref[2])):
        assert_parity(a.cpu(), t, torch.float32, what=f"cuda class_moments {what} {kind}", input_dtype=dtype)
    mean, cov = make_stats(c, d, gen, full=kind == "full")
    prior = torch.randint(0, 500, (c,), generator=gen).float()
    out = kernels.update_class_distribution(prior.to(DEV), mean.to(DEV), cov.to(DEV), feats.to(DEV), labels.to(DEV))
    ref = update_class_distribution_reference(prior.double(), mean.double(), cov.double(), feats.double(), labels)
    for what, a, t in zip(("count", "mean", "cov"), out, ref):
        assert_parity(a.cpu(), t, torch.float32, what=f"cuda update {what} {kind}", input_dtype=dtype)


def _free_bytes() -> int:
    free, _ = torch.cuda.mem_get_info()
    return free


def test_beyond_two_to_the_31_elements():
    """N x D > 2^31: int64 offsets in the loss (forward and its gradient buffer) and the moments.
    Each pixel's loss depends on its own row only, so the last rows are checked against float64
    on their own."""
    d, c = 256, 19
    n = (1 << 31) // d + 4099
    need = n * d * 4 * 3  # features, gradient buffer, headroom for the moments' sort
    if _free_bytes() < need + (4 << 30):
        pytest.skip(f"needs about {need / 2**30:.0f} GiB of free device memory")
    gen = torch.Generator(device=DEV).manual_seed(0)
    feats = torch.randn(n, d, device=DEV, generator=gen).div_(d ** 0.5)
    labels = torch.randint(0, c, (n,), device=DEV, generator=gen)
    mean, cov = (t.to(DEV) for t in make_stats(c, d, torch.Generator().manual_seed(1)))
    x = feats.requires_grad_()
    per_pixel = kernels.dist_contrastive_loss(x, labels, mean, cov, reduction="none", temperature=0.5)
    per_pixel[-1000:].sum().backward()
    tail = slice(n - 1000, n)
    xt = feats[tail].detach().double().cpu().requires_grad_()
    truth = dist_contrastive_loss_reference(xt, labels[tail].cpu(), mean.double().cpu(), cov.double().cpu(),
                                            reduction="none", temperature=0.5)
    truth.sum().backward()
    assert_parity(per_pixel[tail].detach().cpu(), truth, torch.float32, what="loss beyond 2^31")
    assert_parity(x.grad[tail].cpu(), xt.grad, torch.float32, what="gradient beyond 2^31")
    assert torch.count_nonzero(x.grad[: n - 1000]) == 0
    del x, per_pixel
    count, total, _ = kernels.class_moments(feats.detach(), labels, c, covariance="diag")
    assert int(count.sum()) == n
    last = labels[tail].cpu()
    assert torch.isfinite(total).all() and count.cpu()[last].min() > 0


def test_kernels_are_bitwise_repeatable():
    feats, labels, mean, cov = _loss_inputs(100_003, 256, 19, "diag", torch.float32)
    feats, labels, mean, cov = feats.to(DEV), labels.to(DEV), mean.to(DEV), cov.to(DEV)
    outs = []
    for _ in range(2):
        x = feats.clone().requires_grad_()
        loss = kernels.dist_contrastive_loss(x, labels, mean, cov)
        loss.backward()
        moments = kernels.class_moments(feats, labels, 19, covariance="full")
        update = kernels.update_class_distribution(torch.ones(19, device=DEV), mean, cov, feats, labels)
        outs.append([loss, x.grad, *moments, *update])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def _tiny_cuda_config(**train):
    from tests.helpers import tiny_config

    cfg = tiny_config("dist", model="daformer_mit_b0")
    cfg.train.device = DEV
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_deterministic_training_is_bitwise_repeatable(tmp_path):
    """train.deterministic: deterministic cuDNN and PyTorch algorithms; two 20-iteration runs of
    DAFormer MiT-B0 at the same seed end with identical weights."""
    from sepico.train import Trainer

    states = []
    for k in range(2):
        cfg = _tiny_cuda_config(deterministic=True, max_iters=20, checkpoint_interval=100, eval_interval=0)
        trainer = Trainer(cfg, tmp_path / f"run{k}", progress=False)
        for _ in range(20):
            trainer.step()
        states.append({k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()})
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), f"{key} differs between the two runs"


def test_torch_compile_of_a_step_with_the_kernels_inside():
    from sepico.models import build_model

    torch.manual_seed(0)
    # eval(): MiT's stochastic depth and dropout would draw different random numbers in the eager
    # and the compiled call (their results then differed, on the CPU path too).
    model = build_model("daformer_mit_b0", num_classes=19, proj_dim=64, embed_dim=64, channels=64).to(DEV).eval()
    gen = torch.Generator().manual_seed(0)
    mean, cov = (t.to(DEV) for t in make_stats(19, 64, gen))
    images = torch.rand(2, 3, 128, 128, device=DEV)
    labels = torch.randint(0, 19, (2, 32, 32), device=DEV)

    def step(x):
        logits, emb = model(x)
        feats = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
        loss = kernels.dist_contrastive_loss(feats, labels.reshape(-1), mean, cov)
        return loss + logits.float().mean()

    eager = step(images)
    compiled = torch.compile(step)(images)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_one_bfloat16_training_step(tmp_path):
    from sepico.train import Trainer

    trainer = Trainer(_tiny_cuda_config(amp=True), tmp_path, progress=False)
    trainer.step()  # the contrastive terms start at iteration 1 in the tiny config
    log = trainer.step()
    assert {"loss_ce", "loss_cl_src", "loss_mix"} <= set(log)
    assert all(torch.isfinite(torch.tensor(v)) for v in log.values())

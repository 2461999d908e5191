"""The launch configurations a GPU gets, run in the interpreter against float64.

The broad sweeps (test_contrastive.py, test_moments.py) run the interpreter's large tiles, which
are fast there; these cases force the GPU ones (``kernels.tiles("gpu")``): 64-pixel tiles, 16- to
64-channel chunks, the 16-channel chunks and 16-pixel tiles of wide class counts, split moment
reductions and tiled merges, each on a shape that leaves a partial tile on every axis. Each case
first checks that its shape does hit those paths under the configuration it names.
"""
import pytest
import torch

import kernels
from kernels.contrastive import loss_config
from kernels.distribution import merge_block_d
from kernels.moments import moment_config
from sepico.reference import (class_moments_reference, dist_contrastive_loss_reference,
                              update_class_distribution_reference)
from tests.parity import assert_parity, make_feats, make_labels, make_stats

def _partial(size: int, block: int) -> bool:
    return size % block != 0 and size > block  # more than one tile, the last one partial


# N, D, C, covariance, dtype: ProtoCL / diagonal / full at C = 19 (32-wide class tile), and the
# wide class tiles of C > 128 (16 pixels, 16-channel chunks), one bfloat16 case.
LOSS_CASES = [
    (150, 100, 19, "none", torch.float32),
    (150, 100, 19, "diag", torch.float32),
    (150, 100, 19, "diag", torch.bfloat16),
    (70, 40, 19, "full", torch.float32),
    (37, 40, 130, "diag", torch.float32),
    (20, 20, 130, "full", torch.float32),
]


@pytest.mark.parametrize("n,d,c,cov_kind,dtype", LOSS_CASES)
def test_loss_at_the_gpu_tiles(n, d, c, cov_kind, dtype):
    cfg = loss_config(c, d, kernels.Covariance(cov_kind), interpret=False)
    assert cfg != loss_config(c, d, kernels.Covariance(cov_kind), interpret=True)
    assert _partial(n, cfg.block_n) and _partial(d, cfg.block_d) and c < cfg.block_c
    gen = torch.Generator().manual_seed(n + d + c)
    feats = make_feats(n, d, gen, dtype)
    labels = make_labels(n, c, gen, ignore_frac=0.2, absent=(1,))
    mean, cov = make_stats(c, d, gen, full=cov_kind == "full")
    cov = None if cov_kind == "none" else cov
    weight = torch.rand(n, generator=gen)

    def run(fn, x_dtype, stat_dtype):
        x = feats.to(x_dtype, copy=True).requires_grad_()
        loss = fn(x, labels, mean.to(stat_dtype), None if cov is None else cov.to(stat_dtype),
                  weight=weight.to(stat_dtype), ratio=0.7, temperature=0.5)
        loss.backward()
        return loss, x.grad

    with kernels.backend("triton"), kernels.tiles("gpu"):
        loss, grad = run(kernels.dist_contrastive_loss, dtype, torch.float32)
    loss_t, grad_t = run(dist_contrastive_loss_reference, torch.float64, torch.float64)
    loss_e, grad_e = run(dist_contrastive_loss_reference, dtype, dtype)
    assert_parity(loss, loss_t, dtype, eager=loss_e, what=f"loss {cov_kind} (GPU tiles)")
    assert_parity(grad, grad_t, dtype, eager=grad_e, what=f"loss gradient {cov_kind} (GPU tiles)")


# N, D, C, kind: enough pixels per class for a split reduction (SPLIT > 1), channel tiles with a
# partial last one, 64-row (diagonal) and 32-row (full) steps.
MOMENT_CASES = [(25_013, 150, 3, "diag"), (25_013, 70, 3, "full"), (999, 150, 19, "diag")]


@pytest.mark.parametrize("n,d,c,kind", MOMENT_CASES)
def test_moments_at_the_gpu_tiles(n, d, c, kind):
    mode = kernels.Covariance(kind)
    cfg = moment_config(n, c, d, mode, interpret=False)
    assert cfg != moment_config(n, c, d, mode, interpret=True)
    assert _partial(d, cfg.block_d) and (cfg.split > 1 or c == 19)
    gen = torch.Generator().manual_seed(n + d)
    feats = make_feats(n, d, gen) + 0.3
    labels = make_labels(n, c, gen, ignore_frac=0.2, absent=(1,) if c > 3 else ())
    with kernels.backend("triton"), kernels.tiles("gpu"):
        count, total, second = kernels.class_moments(feats, labels, c, covariance=kind)
    ref = class_moments_reference(feats.double(), labels, c, covariance=kind)
    eager = class_moments_reference(feats, labels, c, covariance=kind)
    assert torch.equal(count, ref[0].float())
    assert_parity(total, ref[1], torch.float32, eager=eager[1], what="class_moments total (GPU tiles)")
    assert_parity(second, ref[2], torch.float32, eager=eager[2], what=f"class_moments {kind} (GPU tiles)")


@pytest.mark.parametrize("n,d,c,kind", [(3001, 1000, 3, "diag"), (3001, 70, 3, "full"), (517, 130, 19, "full")])
def test_update_at_the_gpu_tiles(n, d, c, kind):
    full = kind == "full"
    with kernels.tiles("gpu"):
        gpu_block = merge_block_d(d, full)
    # The merge's tiles (64 x 64 when full: partial on both axes here) and the moments' GPU tiles.
    assert _partial(d, gpu_block) if full else d % gpu_block != 0
    mode = kernels.Covariance(kind)
    assert moment_config(n, c, d, mode, interpret=False) != moment_config(n, c, d, mode, interpret=True)
    gen = torch.Generator().manual_seed(d + c)
    feats = make_feats(n, d, gen) + 0.3
    labels = make_labels(n, c, gen, ignore_frac=0.2)
    mean, cov = make_stats(c, d, gen, full=full)
    count = torch.randint(0, 500, (c,), generator=gen).float()
    count[0], mean[0], cov[0] = 0, 0, 0  # a class seen for the first time
    with kernels.backend("triton"), kernels.tiles("gpu"):
        out = kernels.update_class_distribution(count, mean, cov, feats, labels)
    ref = update_class_distribution_reference(count.double(), mean.double(), cov.double(), feats.double(), labels)
    eager = update_class_distribution_reference(count, mean, cov, feats, labels)
    for name, a, t, e in zip(("count", "mean", "cov"), out, ref, eager):
        assert_parity(a, t, torch.float32, eager=e, what=f"update {name} {kind} (GPU tiles)")


def test_tiles_switch_is_checked():
    with pytest.raises(ValueError, match="tiles must be one of"):
        with kernels.tiles("big"):
            pass

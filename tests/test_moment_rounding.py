"""The class-moment kernel's full second moments on a GPU: bench/moment_rounding.py replays the
float32 order of its FMA chains on the CPU. One accumulator per program (the kernel before its
GROUP) reaches errors beyond the parity cap; the shipped GROUP stays well inside it."""
import torch

from bench import moment_rounding
from kernels import Covariance
from kernels.compile_check import rows_layout
from kernels.moments import MOMENT_GROUP, moment_launch
from tests.parity import make_feats, make_labels


def test_the_shipped_group_keeps_the_gpu_order_inside_the_cap():
    feats, labels = moment_rounding.inputs(20_000, 8, 3, torch.bfloat16)
    chained = moment_rounding.relative_error(feats, labels, 3, moment_rounding.UNGROUPED)
    grouped = moment_rounding.relative_error(feats, labels, 3, MOMENT_GROUP)
    assert chained > 1e-5          # float32 inputs' parity cap (tests/parity.py): missed
    assert grouped < 1e-6 and grouped < chained / 10


def test_the_inputs_are_test_cudas():
    gen = torch.Generator().manual_seed(3)
    feats = make_feats(500, 7, gen, torch.bfloat16) + 0.3
    labels = make_labels(500, 4, gen, ignore_frac=0.2, absent=(1,))
    got = moment_rounding.inputs(500, 7, 4, torch.bfloat16)
    assert (got[0] == feats.float().numpy()).all() and (got[1] == labels.numpy()).all()


def test_the_replay_is_the_float32_sum_and_the_kernel_takes_its_group():
    feats, labels = moment_rounding.inputs(3_000, 5, 3, torch.float32)  # class 1 absent
    got = moment_rounding.replay(feats, labels, 3, split=2, block_n=32, group=4)
    z = feats.astype("float64")
    truth = torch.stack([torch.from_numpy(z[labels == c].T @ z[labels == c]) for c in range(3)])
    assert got.dtype.name == "float32" and not got[1].any()
    assert (torch.from_numpy(got).double() - truth).abs().max() < 1e-6 * truth.abs().max()
    launch = moment_launch(*[None] * 6, z=rows_layout(8), n=1000, num_classes=3, dim=8,
                           second_mode=Covariance.FULL)
    assert dict(launch.args)["GROUP"] == MOMENT_GROUP

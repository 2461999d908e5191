"""Golden vectors: the public SePiCo implementation's own outputs (tests/data/*.npz; each file's
meta_json names its source functions and commit) against sepico.losses and sepico.estimator.

Loss files hold feat [N, D] and labels [N]; the reference was called with feat.T.reshape(1, D, 1, N)
and labels.reshape(1, 1, 1, N), so label downscaling is the identity (factor 1). `*_f64` results
come from float64 runs, `*_f32` from float32 runs of the same float32-exact inputs.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kernels

from sepico import losses
from sepico.estimator import ClassDistributionEstimator
from tests.parity import assert_parity

DATA = Path(__file__).parent / "data"
DTYPES = {"f64": torch.float64, "f32": torch.float32}


def load(name):
    data = np.load(DATA / name)
    return {k: data[k] for k in data.files}


def configs(data):
    return sorted({k.split("__")[0] for k in data if "__" in k and not k.startswith("step")})


def options(data, config):
    """The reference's hyper-parameters under this project's names."""
    return dict(num_classes=int(data[f"{config}__num_classes"]),
                temperature=float(data[f"{config}__contrast_temp"]),
                reg_weight=float(data[f"{config}__reg_weight"]),
                use_avg_pool=bool(data[f"{config}__use_avg_pool"]),
                scale_min_ratio=float(data[f"{config}__scale_min_ratio"]))


def as_map(feat):
    n, dim = feat.shape
    return feat.T.reshape(1, dim, 1, n)


def bank_of(data, dtype):
    ends = np.concatenate([[0], np.cumsum(data["bank_len"])])
    return [torch.tensor(data["bank_flat"][a:b], dtype=dtype) for a, b in zip(ends[:-1], ends[1:])]


def run_loss(kind, data, config, dtype, labels=None):
    """Our loss and d loss / d feat (in the [N, D] layout) on the file's inputs."""
    feat = torch.tensor(data["feat"], dtype=dtype)
    labels = torch.tensor(data["labels"]) if labels is None else labels
    x = as_map(feat).clone().requires_grad_()
    y = labels.reshape(1, 1, 1, -1)
    opts = options(data, config)
    mean = torch.tensor(data["mean"], dtype=dtype)
    if kind == "distcl":
        loss = losses.dist_contrastive_loss(x, y, mean, torch.tensor(data["covariance"], dtype=dtype),
                                            ratio=float(data[f"{config}__ratio"]), **opts)
    elif kind == "protocl":
        loss = losses.proto_contrastive_loss(x, y, mean, **opts)
    else:
        loss = losses.bank_contrastive_loss(x, y, bank_of(data, dtype), mean=mean, **opts)
    loss.backward()
    return loss.detach(), x.grad.reshape(feat.shape[1], -1).T


LOSS_FILES = {"distcl": "distcl_c3_d8_n50.npz", "protocl": "protocl_c3_d8_n50.npz",
              "bankcl": "bankcl_c3_d8_n50.npz"}
LOSS_CASES = [(kind, config, dt) for kind, name in LOSS_FILES.items()
              for config in configs(load(name)) for dt in DTYPES]


@pytest.mark.parametrize("kind,config,dt", LOSS_CASES)
def test_loss_and_gradient(kind, config, dt):
    data = load(LOSS_FILES[kind])
    meta = json.loads(str(data["meta_json"]))
    assert meta["source_repo"] == "BIT-DA/SePiCo"
    dtype = DTYPES[dt]
    loss, grad = run_loss(kind, data, config, dtype)
    want_loss = torch.tensor(float(data[f"{config}__loss_{dt}"]), dtype=torch.float64)
    want_grad = torch.tensor(data[f"{config}__grad_{dt}"], dtype=torch.float64)
    assert loss.dtype == dtype
    # Compared with the reference run in the same dtype: float64 to ~1e-10, float32 to ~1e-5.
    assert_parity(loss, want_loss, dtype, what=f"golden {kind} loss")
    assert_parity(grad, want_grad, dtype, what=f"golden {kind} grad")
    ignored = torch.tensor(data["labels"]) == 255
    assert not grad[ignored].any()


@pytest.mark.parametrize("kind,config", [(k, c) for k, c, dt in LOSS_CASES if dt == "f32"])
def test_loss_and_gradient_on_the_triton_kernels(kind, config):
    """The float32 golden cases once more with the Triton kernels (the interpreter here), BankCL's
    included."""
    data = load(LOSS_FILES[kind])
    with kernels.backend("triton"):
        loss, grad = run_loss(kind, data, config, torch.float32)
    assert_parity(loss, torch.tensor(float(data[f"{config}__loss_f32"]), dtype=torch.float64),
                  torch.float32, what=f"golden {kind} loss (triton)")
    assert_parity(grad, torch.tensor(data[f"{config}__grad_f32"], dtype=torch.float64),
                  torch.float32, what=f"golden {kind} grad (triton)")


@pytest.mark.parametrize("kind,config", [(k, c) for k, c, dt in LOSS_CASES
                                         if dt == "f64" and "reg0" in c])
def test_per_pixel_losses(kind, config):
    """Each valid pixel's loss: the loss of a call where every other pixel is ignored."""
    data = load(LOSS_FILES[kind])
    labels = torch.tensor(data["labels"])
    valid = torch.nonzero(labels != 255).squeeze(1)
    # BankCL concatenates its losses class by class: per_pixel_order indexes the valid pixels.
    order = valid[torch.tensor(data["per_pixel_order"])] if "per_pixel_order" in data else valid
    want = torch.tensor(data[f"{config}__per_pixel_f64"])
    assert order.shape == want.shape
    got = []
    for i in order.tolist():
        alone = torch.full_like(labels, 255)
        alone[i] = labels[i]
        got.append(run_loss(kind, data, config, torch.float64, labels=alone)[0])
    assert_parity(torch.stack(got), want, torch.float64, what=f"golden {kind} per-pixel")


@pytest.mark.parametrize("dt", DTYPES)
def test_estimator_three_updates(dt):
    data = load("estimator_c3_d8.npz")
    dtype = DTYPES[dt]
    est = ClassDistributionEstimator(int(data["num_classes"]), int(data["dim"]),
                                     memory_length=int(data["memory_length"]), dtype=dtype)
    for t in range(int(data["num_steps"])):
        est.update(torch.tensor(data[f"step{t}__features"], dtype=dtype),
                   torch.tensor(data[f"step{t}__labels"]))
        amount = torch.tensor(data[f"step{t}__amount_{dt}"], dtype=torch.float64)
        assert torch.equal(est.count.double(), amount)
        assert_parity(est.mean, torch.tensor(data[f"step{t}__mean_{dt}"]), dtype,
                      what="golden estimator mean")
        assert_parity(est.cov, torch.tensor(data[f"step{t}__covariance_{dt}"]), dtype,
                      what="golden estimator cov")
    assert [q.shape[0] for q in est.bank] == data[f"final_bank_len_{dt}"].tolist()
    assert_parity(torch.cat(est.bank), torch.tensor(data[f"final_bank_flat_{dt}"]), dtype,
                  what="golden estimator bank")


@pytest.mark.parametrize("kind", ("distcl", "protocl", "bankcl"))
def test_all_ignored(kind):
    """The reference returns a constant 0.0 that is not connected to feat (feat.grad stays None).
    This project deliberately differs: the same value, float32, but connected, so backward runs
    and gives zero gradients."""
    data = load("empty_all_ignored.npz")
    assert float(data[f"{kind}__loss"]) == 0.0 and bool(data[f"{kind}__loss_dtype_is_float32"])
    assert not bool(data[f"{kind}__grad_connected"])  # the reference's behaviour
    feat = torch.tensor(data["feat"], dtype=torch.float32)
    x = as_map(feat).clone().requires_grad_()
    y = torch.tensor(data["labels"]).reshape(1, 1, 1, -1)
    mean = torch.tensor(data["mean"], dtype=torch.float32)
    opts = dict(num_classes=int(data["num_classes"]), temperature=float(data["contrast_temp"]),
                reg_weight=float(data["reg_weight"]), use_avg_pool=bool(data["use_avg_pool"]),
                scale_min_ratio=float(data["scale_min_ratio"]))
    if kind == "distcl":
        loss = losses.dist_contrastive_loss(x, y, mean, torch.tensor(data["covariance"], dtype=torch.float32),
                                            ratio=float(data["ratio"]), **opts)
    elif kind == "protocl":
        loss = losses.proto_contrastive_loss(x, y, mean, **opts)
    else:
        loss = losses.bank_contrastive_loss(x, y, bank_of(data, torch.float32), mean=mean, **opts)
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    assert loss.requires_grad  # the deliberate difference
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))

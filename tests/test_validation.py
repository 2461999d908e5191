"""Bad input gets a clear error naming the argument; backend selection behaves as documented."""
import os
import subprocess
import sys

import pytest
import torch

import kernels
from kernels._backend import requested_backend, resolve_backend

N, D, C = 10, 6, 4


def _good():
    gen = torch.Generator().manual_seed(0)
    return dict(feats=torch.randn(N, D, generator=gen), labels=torch.randint(0, C, (N,), generator=gen),
                mean=torch.randn(C, D, generator=gen), cov=torch.rand(C, D, generator=gen))


def _loss(**over):
    a = {**_good(), **over}
    return kernels.dist_contrastive_loss(a["feats"], a["labels"], a["mean"], a["cov"],
                                         **{k: v for k, v in over.items()
                                            if k not in ("feats", "labels", "mean", "cov")})


def _moments(**over):
    a = {**_good(), **over}
    return kernels.class_moments(a["feats"], a["labels"], over.get("num_classes", C))


def _update(**over):
    a = {**_good(), **over}
    return kernels.update_class_distribution(over.get("count", torch.zeros(C)), a["mean"], a["cov"],
                                             a["feats"], a["labels"])


def _written_since():
    labels = kernels.checked_labels(torch.zeros(N, dtype=torch.int64), C)
    labels.tensor[0] = C  # out of range, and the version counter moves
    return labels


OPS = {"loss": _loss, "moments": _moments, "update": _update}
BAD = [
    ("labels checked for another C", dict(labels=kernels.checked_labels(torch.zeros(N, dtype=torch.int64), C + 1)),
     ValueError, f"labels were checked for num_classes={C + 1}, ignore_index=255; this op has num_classes={C}"),
    ("labels checked for another ignore_index",
     dict(labels=kernels.checked_labels(torch.zeros(N, dtype=torch.int64), C, 7)), ValueError, "ignore_index=7"),
    ("checked labels written since", dict(labels=_written_since()), ValueError, "written in place after"),
    ("checked labels N mismatch", dict(labels=kernels.checked_labels(torch.zeros(N + 1, dtype=torch.int64), C)),
     ValueError, "labels must have shape"),
    ("labels N mismatch", dict(labels=torch.zeros(N + 1, dtype=torch.int64)), ValueError, "labels must have shape"),
    ("label >= C", dict(labels=torch.full((N,), C)), ValueError, f"found {C}"),
    ("negative label", dict(labels=torch.full((N,), -3)), ValueError, "found -3"),
    ("float labels", dict(labels=torch.zeros(N)), TypeError, "labels must be int64 or int32"),
    ("int feats", dict(feats=torch.zeros(N, D, dtype=torch.int64)), TypeError, "feats must be float"),
    ("1-D feats", dict(feats=torch.zeros(N)), ValueError, r"feats must have shape \[N, D\]"),
    ("feats not a tensor", dict(feats=[[0.0] * D] * N), TypeError, "feats must be a torch.Tensor"),
    ("labels on another device", dict(labels=torch.zeros(N, dtype=torch.int64, device="meta")), ValueError,
     "labels is on meta"),
]
BAD_STATS = [
    ("mean shape", dict(mean=torch.zeros(C, D + 1)), ValueError, "mean must have shape"),
    ("cov shape", dict(cov=torch.zeros(C, D + 1)), ValueError, "cov must have shape"),
    ("cov classes", dict(cov=torch.zeros(C + 1, D, D)), ValueError, "cov must have shape"),
    ("mean on another device", dict(mean=torch.zeros(C, D, device="meta")), ValueError, "mean is on meta"),
]


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("case,over,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(op, case, over, exc, msg):
    with pytest.raises(exc, match=msg):
        OPS[op](**over)


@pytest.mark.parametrize("op", ("loss", "update"))
@pytest.mark.parametrize("case,over,exc,msg", BAD_STATS, ids=[b[0] for b in BAD_STATS])
def test_bad_statistics(op, case, over, exc, msg):
    with pytest.raises(exc, match=msg):
        OPS[op](**over)


@pytest.mark.parametrize("over,exc,msg", [
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(temperature=0.0), ValueError, "temperature must be a positive"),
    (dict(ratio=float("nan")), ValueError, "ratio must be a finite"),
    (dict(weight=torch.ones(N + 1)), ValueError, r"weight must have shape \[N\]"),
    (dict(weight=torch.ones(N, dtype=torch.int64)), TypeError, "weight must be a floating"),
    (dict(weight=torch.ones(N, requires_grad=True)), ValueError, "weight must not require grad"),
    (dict(mean=torch.zeros(C, D, requires_grad=True)), ValueError, "mean must not require grad"),
    (dict(cov=torch.zeros(C, D, requires_grad=True)), ValueError, "cov must not require grad"),
    (dict(feats=torch.zeros(N, 1025), mean=torch.zeros(C, 1025), cov=None), ValueError, "exceeds"),
    (dict(feats=torch.zeros(N, 257), mean=torch.zeros(C, 257), cov=torch.zeros(C, 257, 257)), ValueError,
     "full-covariance limit of 256"),
    (dict(mean=torch.zeros(257, D), cov=None, labels=torch.zeros(N, dtype=torch.int64)), ValueError,
     "at most 256"),
])
def test_bad_loss_options(over, exc, msg):
    with pytest.raises(exc, match=msg):
        _loss(**over)


def test_bad_moment_options():
    g = _good()
    with pytest.raises(ValueError, match="covariance must be one of 'diag', 'full', got 'diagonal'"):
        kernels.class_moments(g["feats"], g["labels"], C, covariance="diagonal")
    with pytest.raises(ValueError, match="num_classes must be in"):
        kernels.class_moments(g["feats"], g["labels"], 0)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        kernels.class_moments(g["feats"], g["labels"], 4.0)


def test_covariance_kind_is_one_enum():
    """kernels.Covariance names the kind from a config to the kernels: a member equals its name,
    and a tensor tells its kind; an op or estimator refuses a kind it does not keep."""
    Cov = kernels.Covariance
    assert [k.value for k in Cov] == ["none", "diag", "full"] and Cov.DIAG == "diag"
    assert (str(Cov.FULL), f"{Cov.FULL}", f"{Cov.FULL:>5}") == ("full", "full", " full")
    assert kernels.covariance_kind("full") is Cov.FULL and kernels.covariance_kind(Cov.NONE) is Cov.NONE
    assert [Cov.of(t) for t in (None, torch.zeros(C, D), torch.zeros(C, D, D))] == [Cov.NONE, Cov.DIAG, Cov.FULL]
    with pytest.raises(ValueError, match=r"covariance must be one of 'none', 'diag', 'full', got \[1\]"):
        kernels.covariance_kind([1])
    g = _good()
    with pytest.raises(ValueError, match="covariance must be one of 'diag', 'full', got 'none'"):
        kernels.class_moments(g["feats"], g["labels"], C, covariance="none")
    by_name = kernels.class_moments(g["feats"], g["labels"], C, covariance="full")
    by_member = kernels.class_moments(g["feats"], g["labels"], C, covariance=Cov.FULL)
    assert all(torch.equal(a, b) for a, b in zip(by_name, by_member))


@pytest.mark.parametrize("backend", ("torch", "triton"))
@pytest.mark.parametrize("kind", ("none", "diag", "full"))
def test_scaled_statistics_give_the_raw_statistics_results(backend, kind):
    """kernels.scaled_statistics scales once; the op then gives what it gives on the raw
    statistics, bit for bit, at any ratio (the ratio is the call's)."""
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(N, D, generator=gen).requires_grad_()
    labels = torch.randint(0, C, (N,), generator=gen)
    mean = torch.randn(C, D, generator=gen)
    b = torch.randn(C, D, D, generator=gen)
    cov = {"none": None, "diag": torch.rand(C, D, generator=gen), "full": b @ b.transpose(1, 2)}[kind]
    stats = kernels.scaled_statistics(mean, cov, temperature=0.5)
    for ratio in (1.0, 0.7, 0.0):
        with kernels.backend(backend):
            got = kernels.dist_contrastive_loss(feats, labels, stats, ratio=ratio, reg_weight=0.3)
            (g_got,) = torch.autograd.grad(got, feats)
            want = kernels.dist_contrastive_loss(feats, labels, mean, cov, ratio=ratio, temperature=0.5,
                                                 reg_weight=0.3)
            (g_want,) = torch.autograd.grad(want, feats)
        assert torch.equal(got, want) and torch.equal(g_got, g_want), ratio


def test_bad_scaled_statistics():
    g = _good()
    stats = kernels.scaled_statistics(g["mean"], g["cov"], temperature=0.5)
    with pytest.raises(ValueError, match="cov must be None when mean is a kernels.ScaledStatistics"):
        kernels.dist_contrastive_loss(g["feats"], g["labels"], stats, g["cov"])
    with pytest.raises(ValueError, match=r"temperature=100.0, but the statistics were scaled for temperature=0.5"):
        kernels.dist_contrastive_loss(g["feats"], g["labels"], stats, temperature=100.0)
    kernels.dist_contrastive_loss(g["feats"], g["labels"], stats, temperature=0.5)  # the same: fine
    with pytest.raises(ValueError, match="the statistics have D = 6 channels but feats have 5"):
        kernels.dist_contrastive_loss(g["feats"][:, :5], g["labels"], stats)
    with pytest.raises(ValueError, match="must not require grad"):
        kernels.scaled_statistics(g["mean"].requires_grad_(), g["cov"])
    with pytest.raises(ValueError, match="cov must have shape"):
        kernels.scaled_statistics(g["mean"].detach(), g["cov"][:, :-1])
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        kernels.scaled_statistics(g["mean"].detach(), temperature=0.0)
    with pytest.raises(ValueError, match=r"mean must have shape \[C, D\]"):
        kernels.scaled_statistics(g["mean"].detach()[0])
    for written in ("mean", "cov"):
        a = _good()
        stats = kernels.scaled_statistics(a["mean"], a["cov"])
        a[written].mul_(2.0)  # in place after scaling: the scaled copy is stale
        with pytest.raises(ValueError, match="written in place after kernels.scaled_statistics"):
            kernels.dist_contrastive_loss(a["feats"], a["labels"], stats)


def test_bad_memory_bank():
    g = _good()
    queues = torch.randn(C, 3, D)
    lengths = torch.full((C,), 3)

    def bank_loss(bank, **kw):
        return kernels.bank_contrastive_loss(g["feats"], g["labels"], bank, **kw)

    assert torch.isfinite(bank_loss(kernels.MemoryBank(queues, lengths)))
    with pytest.raises(TypeError, match=r"bank must be a kernels.MemoryBank\(queues"):
        bank_loss((queues, lengths))  # a plain tuple is not the bank
    with pytest.raises(TypeError, match=r"bank must be a kernels.MemoryBank"):
        bank_loss(queues)
    with pytest.raises(ValueError, match=rf"bank.queues must have shape \[C, L, {D}\]"):
        bank_loss(kernels.MemoryBank(queues[:, :, :-1], lengths))
    with pytest.raises(TypeError, match="bank.queues must be floating point"):
        bank_loss(kernels.MemoryBank(queues.long(), lengths))
    with pytest.raises(ValueError, match=rf"bank.lengths must be an integer tensor of shape \[{C}\]"):
        bank_loss(kernels.MemoryBank(queues, lengths[:-1]))
    with pytest.raises(ValueError, match="bank.lengths must be an integer"):
        bank_loss(kernels.MemoryBank(queues, lengths.float()))
    with pytest.raises(ValueError, match=r"bank\[1\] is empty"):
        bank_loss(kernels.MemoryBank(queues, torch.tensor([3, 0, 3, 3])))
    with pytest.raises(ValueError, match=r"bank.lengths\[2\] = 4 exceeds the queues' L = 3"):
        bank_loss(kernels.MemoryBank(queues, torch.tensor([3, 3, 4, 3])))
    with pytest.raises(ValueError, match="bank.queues must not require grad"):
        bank_loss(kernels.MemoryBank(queues.requires_grad_(), lengths))
    with pytest.raises(ValueError, match=r"mean \[C, D\] is required when reg_weight > 0"):
        bank_loss(kernels.MemoryBank(queues.detach(), lengths), reg_weight=1.0)


def test_bad_update_options():
    g = _good()
    with pytest.raises(ValueError, match=r"count must have shape \[4\]"):
        kernels.update_class_distribution(torch.zeros(C + 1), g["mean"], g["cov"], g["feats"], g["labels"])
    with pytest.raises(TypeError, match="cov must be float32 or float64 like mean"):
        kernels.update_class_distribution(torch.zeros(C), g["mean"], g["cov"].double(), g["feats"], g["labels"])
    with pytest.raises(ValueError, match="cov is required"):
        kernels.update_class_distribution(torch.zeros(C), g["mean"], None, g["feats"], g["labels"])


def test_backend_context_and_environment(monkeypatch):
    monkeypatch.delenv("KERNELS_BACKEND", raising=False)
    cpu = torch.zeros(1)
    assert requested_backend() == "auto" and resolve_backend(cpu) == "torch"
    with kernels.backend("triton"):
        assert resolve_backend(cpu) == "triton"  # the interpreter is on in the tests
        with kernels.backend("torch"):
            assert resolve_backend(cpu) == "torch"
        with pytest.raises(TypeError, match="float64 inputs run on the torch backend"):
            resolve_backend(cpu.double())
    monkeypatch.setenv("KERNELS_BACKEND", "triton")
    assert resolve_backend(cpu) == "triton"
    monkeypatch.setenv("KERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="KERNELS_BACKEND must be one of"):
        resolve_backend(cpu)
    with pytest.raises(ValueError, match="backend must be one of"):
        with kernels.backend("gpu"):
            pass


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["KERNELS_BACKEND"] = "triton"
    code = ("import torch, kernels\n"
            "kernels.dist_contrastive_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 3))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode != 0
    assert "the triton backend needs CUDA tensors, or TRITON_INTERPRET=1" in proc.stderr


def test_the_global_batch_is_divided_among_the_processes():
    from sepico.errors import ConfigError
    from sepico.train.config import TrainConfig
    from sepico.train.trainer import process_batch_size

    assert process_batch_size(TrainConfig(batch_size=3), 4) == 3  # each process its own batch
    assert process_batch_size(TrainConfig(batch_size=3, global_batch_size=8), 4) == 2
    assert process_batch_size(TrainConfig(global_batch_size=2), 1) == 2
    with pytest.raises(ConfigError, match="'train.global_batch_size' \\(6\\) must be a multiple of the 4 processes"):
        process_batch_size(TrainConfig(global_batch_size=6), 4)


def test_checked_labels_are_read_without_a_check_and_give_the_same_results(monkeypatch):
    """Every op takes kernels.CheckedLabels in place of the tensor: the same outputs, and no
    reduction (no host sync) for the range; checked_labels itself checks once, unless in_range."""
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(N, D, generator=gen)
    labels = torch.randint(0, C, (N,), generator=gen)
    labels[:3] = 255
    mean, cov = torch.randn(C, D, generator=gen), torch.rand(C, D, generator=gen)
    bank = torch.nn.functional.normalize(torch.randn(C, 3, D, generator=gen), dim=2)
    ops = [lambda y: kernels.dist_contrastive_loss(feats, y, mean, cov),
           lambda y: kernels.bank_contrastive_loss(feats, y, kernels.MemoryBank(bank, torch.full((C,), 3))),
           lambda y: kernels.class_moments(feats, y, C),
           lambda y: kernels.update_class_distribution(torch.ones(C), mean, cov, feats, y)]
    plain = [op(labels) for op in ops]
    checks = []
    real_any = torch.Tensor.any
    monkeypatch.setattr(torch.Tensor, "any", lambda self, *a, **k: checks.append(1) or real_any(self, *a, **k))
    checked = kernels.checked_labels(labels, C)
    assert len(checks) == 1
    vouched = kernels.checked_labels(labels, C, in_range=True)
    assert len(checks) == 1
    for op, want in zip(ops, plain):
        for given in (checked, vouched):
            got = op(given)
            for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                assert torch.equal(a, b)
    assert len(checks) == 1  # the ops checked nothing
    with pytest.raises(ValueError, match=f"found {C}"):
        kernels.checked_labels(torch.full((N,), C), C)
    with pytest.raises(TypeError, match="labels must be int64 or int32"):
        kernels.checked_labels(torch.zeros(N), C)
    with torch.inference_mode():
        frozen = kernels.checked_labels(torch.zeros(N, dtype=torch.int64), C)
    assert frozen.version is None and kernels.class_moments(feats, frozen, C)[0][0] == N

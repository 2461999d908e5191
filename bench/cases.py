"""Benchmark cases: the ops, sizes, dtypes and sets, and the inputs of a case (design-sized
feats, labels with 10 % ignored, class statistics, BankCL queues)."""
from __future__ import annotations

import os
from dataclasses import dataclass


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "bench", "results")

C = 19
SIZES = {  # name: (N, what it is)
    "2x160x160": 2 * 160 * 160,     # two 640 x 640 crops at stride 4
    "2x256x512": 2 * 256 * 512,     # two full-resolution 1024 x 2048 images at stride 4
    "2x512x1024": 2 * 512 * 1024,   # the same at stride 2
}
DIMS = (64, 256, 512)
DTYPES = ("float32", "bfloat16")
IGNORED = 0.1            # share of ignored (255) labels
TARGET_N, TARGET_D = SIZES["2x256x512"], 256
SLOW_S = 5.0             # a call slower than this is timed once, in its memory child
MEMORY_MARGIN = 1.5 * 2 ** 30   # left to the rest of the machine when a child sets its limit

# Op families and their ops. The loss ops have modes fwd+bwd, bwd (both from one "train"
# measurement) and fwd (no grad); moments and the update one mode, "forward".
def loss_op(variant: str, covariance: str = "diag") -> str:
    """A loss op's benchmark name, from the variant's one name (sepico.method.variant_name)."""
    from sepico.method import variant_name
    return f"loss {variant_name(variant, covariance)}"


LOSS_OPS = {loss_op("proto"): None, loss_op("dist", "diag"): "diag", loss_op("dist", "full"): "full",
            loss_op("bank"): "bank"}
BANK_LENGTH = 200  # the published memory_length: the queue of every class full
MOMENT_OPS = {"class_moments diag": "diag", "class_moments full": "full"}
UPDATE_OPS = {"update_class_distribution diag": "diag", "update_class_distribution full": "full"}
FAMILY_OPS = {"loss": LOSS_OPS, "moments": MOMENT_OPS, "update": UPDATE_OPS}

IMPL_LABEL = {
    "eager": "eager reference",
    "compiled": "torch.compile(reference)",
    "onehot": "one-hot N x C x D reference",
    "ours": "ours",
    "ours_tf32": "ours (triton, TF32 dots)",
    "estimator": "estimator: ours in one pass about the running means (training's path)",
}


@dataclass(frozen=True)
class Case:
    """One op at one size and dtype, and the implementations to put side by side."""
    family: str          # "loss" | "moments" | "update"
    op: str              # a key of FAMILY_OPS[family]
    kind: str            # "train" (fwd+bwd and bwd) | "no_grad" | "forward"
    n: int
    d: int
    dtype: str
    impls: tuple

    @property
    def id(self) -> str:
        return (f"{self.op.replace(' ', '-')}-{self.kind}-N{self.n}-D{self.d}-{self.dtype}")


@dataclass
class Settings:
    set_name: str = "quick"
    device: str = "cpu"
    threads: int = 1
    budget_s: float = 10.0       # timing budget per case (all implementations)
    max_rounds: int = 15
    min_rounds: int = 5


# --------------------------------------------------------------------------- the sets

SETS = ("quick", "medium", "full", "tiny")
TINY_N, TINY_D = 4096, 64  # the tiny set: the quick set's cases at a size any machine runs in seconds


def cases(family: str, set_name: str, device: str = "cpu") -> list[Case]:
    """The cases of one family in a set: "quick" (the CPU targets), "medium" (every op, size
    and implementation at D = 256, float32) or "full" (D in 64, 256, 512; float32 and bfloat16)."""
    out = []
    if set_name in ("quick", "tiny"):
        # The CPU targets: N = 2 x 256 x 512, D = 256, float32, eager vs ours (on a GPU also
        # torch.compile of the reference); "tiny" runs the same cases small (make gpu-check's dry run).
        n, d, dt = (TARGET_N, TARGET_D, "float32") if set_name == "quick" else (TINY_N, TINY_D, "float32")
        impls = ("eager", "compiled", "ours") if device == "cuda" else ("eager", "ours")
        if family == "loss":
            diag, full = loss_op("dist", "diag"), loss_op("dist", "full")
            out += [Case("loss", diag, "train", n, d, dt, impls),
                    Case("loss", diag, "no_grad", n, d, dt, impls),
                    Case("loss", full, "train", n, d, dt, impls)]
            if set_name == "quick":  # not in the tiny set (make gpu-check's dry run): its eager loop is slow
                out.append(Case("loss", loss_op("bank"), "train", n, d, dt, ("eager", "ours")))
        elif family == "update":
            out.append(Case("update", "update_class_distribution diag", "forward", n, d, dt,
                            ("onehot",) + impls + ("estimator",)))
        return out
    dtypes, dims = (("float32",), (TARGET_D,)) if set_name == "medium" else (DTYPES, DIMS)
    for op, cov in FAMILY_OPS[family].items():
        for dt in dtypes:
            for d in dims:
                for n in SIZES.values():
                    if family == "loss":
                        impls = ("eager", "ours") if cov == "bank" else ("eager", "compiled", "ours")
                        if device == "cuda" and cov not in (None, "bank"):
                            impls += ("ours_tf32",)   # the opt-in tensor-core path
                        out += [Case(family, op, "train", n, d, dt, impls),
                                Case(family, op, "no_grad", n, d, dt, impls)]
                    else:
                        impls = ("eager", "compiled", "ours")
                        if family == "update":
                            impls += ("estimator",)
                        if family == "update" and cov == "diag":
                            impls = ("onehot",) + impls
                        out.append(Case(family, op, "forward", n, d, dt, impls))
    return out


def modes(case: Case) -> tuple:
    return {"train": ("fwd+bwd", "bwd"), "no_grad": ("fwd (no grad)",),
            "forward": ("forward",)}[case.kind]


# --------------------------------------------------------------------------- inputs

def make_inputs(case: Case, n: int | None = None, device: str = "cpu", seed: int = 0) -> dict:
    """Feats [N, D] (L2-normalised, as the projection head gives them), int64 labels with 10 %
    ignored, class statistics. Statistics go to ours in float32 and to the references in the
    feats dtype (their matmuls need one dtype), as the tests do."""
    import torch
    import torch.nn.functional as F

    n = case.n if n is None else n
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator().manual_seed(seed + n + case.d)
    feats = F.normalize(torch.randn(n, case.d, generator=gen), dim=1).to(dtype)
    labels = torch.randint(0, C, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < IGNORED] = 255
    mean = F.normalize(torch.randn(C, case.d, generator=gen), dim=1)
    cov_kind = FAMILY_OPS[case.family][case.op]
    if cov_kind == "full":
        root = torch.randn(C, case.d, case.d, generator=gen) / case.d
        cov = root @ root.transpose(1, 2) * 0.1
    else:
        cov = torch.rand(C, case.d, generator=gen) * 1e-2
    count = torch.randint(0, 10_000, (C,), generator=gen).float()
    out = dict(feats=feats, labels=labels, mean=mean, cov=cov, count=count)
    if cov_kind == "bank":  # every queue full: BANK_LENGTH past batch means near the class mean
        out["bank"] = F.normalize(mean[:, None] + 0.1 * torch.randn(C, BANK_LENGTH, case.d, generator=gen), dim=2)
        out["bank_len"] = torch.full((C,), BANK_LENGTH)
    out = {k: v.to(device) for k, v in out.items()}
    out["mean_ref"], out["cov_ref"] = out["mean"].to(dtype), out["cov"].to(dtype)
    return out


def input_bytes(inputs: dict) -> int:
    return sum(t.numel() * t.element_size() for k, t in inputs.items() if not k.endswith("_ref"))

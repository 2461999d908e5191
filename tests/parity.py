"""Shared helpers for parity tests: input generators and an error report that names the worst element."""
from __future__ import annotations

import torch

# Caps on the max-norm relative error against float64, by input dtype, and the
# floor added to the eager reference's own error in the three-way rule.
CAP = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-10}
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def rel_error(actual: torch.Tensor, truth: torch.Tensor) -> float:
    """max |actual - truth| / max |truth| (inf when actual has a NaN/inf that truth lacks)."""
    a = actual.detach().to(torch.float64)
    t = truth.detach().to(torch.float64)
    if a.shape != t.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(t.shape)}")
    if a.numel() == 0:
        return 0.0
    if not torch.isfinite(a).all():
        return float("inf")
    scale = t.abs().max().item()
    return (a - t).abs().max().item() / max(scale, 1e-30)


def report(actual: torch.Tensor, truth: torch.Tensor, tol: float) -> str:
    a = actual.detach().to(torch.float64).reshape(-1)
    t = truth.detach().to(torch.float64).reshape(-1)
    nan = int(torch.isnan(a).sum())
    inf = int(torch.isinf(a).sum())
    scale = max(t.abs().max().item(), 1e-30) if t.numel() else 1.0
    err = (a - t).abs() / scale
    err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
    bad = int((err > tol).sum())
    worst = int(err.argmax()) if err.numel() else -1
    where = (f"worst flat index {worst}: got {a[worst].item():.9g}, want {t[worst].item():.9g}"
             if worst >= 0 else "empty")
    return (f"{bad}/{a.numel()} elements beyond {tol:.1e} (relative to max |truth| = {scale:.3g}); "
            f"NaN {nan}, inf {inf}; {where}")


# Largest error seen per (quantity, input dtype) over the test run; conftest prints it at the end.
LARGEST: dict = {}


def assert_parity(actual, truth, dtype, *, eager=None, what="output", input_dtype=None):
    """Kernel error within the dtype cap and (three-way rule) at most eager's error plus a floor.
    `dtype` sets the tolerance; `input_dtype` (default: dtype) only labels the summary."""
    err = rel_error(actual, truth)
    key = (what, str(input_dtype or dtype).replace("torch.", ""))
    LARGEST[key] = max(LARGEST.get(key, 0.0), err)
    tol = CAP[dtype]
    if eager is not None:
        tol = min(tol, rel_error(eager, truth) + FLOOR[dtype])
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}; " + report(actual, truth, tol)
    return err


def make_labels(n, num_classes, gen, *, ignore_frac=0.2, absent=(), ignore_index=255,
                dtype=torch.int64):
    """Random labels with a share of ignored pixels and some classes never drawn."""
    present = [c for c in range(num_classes) if c not in set(absent)] or [0]
    pick = torch.randint(0, len(present), (n,), generator=gen)
    labels = torch.tensor(present, dtype=torch.int64)[pick]
    ignored = torch.rand(n, generator=gen) < ignore_frac
    labels[ignored] = ignore_index
    return labels.to(dtype)


def make_feats(n, dim, gen, dtype=torch.float32):
    """Embeddings of roughly unit norm (what the projection head emits), as `dtype`."""
    return (torch.randn(n, dim, generator=gen, dtype=torch.float64) / dim ** 0.5).to(dtype)


def make_stats(num_classes, dim, gen, full=False):
    """Float32 class means of roughly unit norm and positive (semi-)definite covariances."""
    mean = torch.randn(num_classes, dim, generator=gen) / dim ** 0.5 * 2
    if full:
        b = torch.randn(num_classes, dim, dim, generator=gen) / dim
        cov = b @ b.transpose(1, 2) + 0.05 * torch.eye(dim)
    else:
        cov = torch.rand(num_classes, dim, generator=gen) * 0.5
    return mean, cov

"""The float32 rounding of the class-moment kernel's full second moments on a GPU, replayed on the CPU.

On a GPU, ``tl.dot(a, b, acc)`` with float32 operands (``input_precision="ieee"``) runs as fused
multiply-adds that chain into ``acc``: every element of the accumulator is one sequential float32
sum. The kernel (``kernels/moments.py``) gives GROUP row blocks their own accumulator and adds it
to the program's sum, so a chain is GROUP x BLOCK_N products long and the sum takes one addition
per GROUP blocks; with one accumulator for all of a program's blocks (GROUP = infinity) a chain is
thousands of additions long. This script replays that order in NumPy for the shipped GPU launch
configuration (``kernels.moments.moment_config``: programs per class, rows per block) and prints
the error against float64 for several GROUP values. Each addition is formed in float64 and rounded
to float32 once, as an FMA rounds (exact for bfloat16 inputs, whose products are exact in float64;
for float32 inputs to within a rare double rounding). The interpreter cannot show this: its dot is
NumPy's, which sums a block in its own order. (GROUP = 1 is no remedy on a GPU: Triton folds
``tl.dot(a, b) + acc`` into ``tl.dot(a, b, acc)``, one chain again.)

    python -m bench.moment_rounding                 # the inputs of tests/test_cuda.py's moment case
    python -m bench.moment_rounding --n 20000 --groups 1 4

CPU figures of a GPU's arithmetic order: they match what ``make gpu-check`` measured on an H200
(bfloat16 1.604e-05 and float32 3.03e-06 with one accumulator per program).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from kernels import Covariance
from kernels.moments import moment_config

UNGROUPED = 0  # one accumulator for all of a program's blocks


def replay(feats: np.ndarray, labels: np.ndarray, num_classes: int, *, split: int, block_n: int,
           group: int) -> np.ndarray:
    """[C, D, D] float32 sums of z z^T per class in the kernel's order: program s of a class takes
    row blocks s, s + split, ...; ``group`` blocks share an accumulator (0: all of them); the
    programs' partials are added in program order."""
    d = feats.shape[1]
    key = np.where((labels >= 0) & (labels < num_classes), labels, num_classes)
    order = np.argsort(key, kind="stable")
    bounds = np.searchsorted(key[order], np.arange(num_classes + 1))
    out = np.zeros((num_classes, d, d), np.float32)
    for c in range(num_classes):
        z = feats[order[bounds[c]:bounds[c + 1]]].astype(np.float64)
        for s in range(split):
            total = np.zeros((d, d), np.float32)
            acc = np.zeros((d, d), np.float32)
            blocks = 0
            for start in range(s * block_n, len(z), split * block_n):
                for row in z[start:start + block_n]:
                    acc = (acc + np.outer(row, row)).astype(np.float32)  # one rounding, as an FMA
                blocks += 1
                if group and blocks % group == 0:
                    total, acc = (total + acc).astype(np.float32), np.zeros((d, d), np.float32)
            out[c] = (out[c] + (total + acc).astype(np.float32)).astype(np.float32)
    return out


def inputs(n: int, d: int, c: int, dtype: torch.dtype, seed: int = 3):
    """tests/test_cuda.py's moment inputs, drawn in its order: roughly unit-norm embeddings + 0.3
    in ``dtype``, labels with class 1 absent and 20 % ignored (255)."""
    gen = torch.Generator().manual_seed(seed)
    feats = (torch.randn(n, d, generator=gen, dtype=torch.float64) / d ** 0.5).to(dtype) + 0.3
    present = torch.tensor([k for k in range(c) if k != 1] or [0])
    labels = present[torch.randint(0, len(present), (n,), generator=gen)]
    labels[torch.rand(n, generator=gen) < 0.2] = 255
    return feats.float().numpy(), labels.numpy()


def relative_error(feats: np.ndarray, labels: np.ndarray, num_classes: int, group: int,
                   layout_rows: bool = True) -> float:
    """max |replay - float64| / max |float64| at the shipped GPU configuration."""
    cfg = moment_config(len(labels), num_classes, feats.shape[1], Covariance.FULL,
                        strided_channels=not layout_rows, interpret=False)
    got = replay(feats, labels, num_classes, split=cfg.split, block_n=cfg.block_n, group=group)
    z = feats.astype(np.float64)
    truth = np.stack([z[labels == c].T @ z[labels == c] for c in range(num_classes)])
    return float(np.abs(got - truth).max() / np.abs(truth).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_003, help="pixels (default: tests/test_cuda.py's)")
    p.add_argument("--dim", type=int, default=70)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--groups", type=int, nargs="+", default=[UNGROUPED, 4, 8, 16],
                   help="row blocks per accumulator; 0: one accumulator per program")
    args = p.parse_args(argv)
    print(f"full second moments, N = {args.n}, D = {args.dim}, C = {args.classes}: "
          "relative error against float64 (CPU replay of the GPU's float32 order)")
    for dtype in (torch.bfloat16, torch.float32):
        feats, labels = inputs(args.n, args.dim, args.classes, dtype)
        for group in args.groups:
            err = relative_error(feats, labels, args.classes, group)
            name = "one per program" if group == UNGROUPED else f"GROUP = {group}"
            print(f"  {str(dtype).removeprefix('torch.'):9s} {name:16s} {err:.3e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak extra host memory of the SePiCo losses, label downscaling and the estimator update on the
CPU (torch) path, against the eager references of sepico/reference.py.

    python -m bench.memory_losses            # B = 2, 1024 x 2048 labels, D = 256, C = 19, stride 4
    python -m bench.memory_losses --dim 512  # the published projection width
    python -m bench.memory_losses --small    # a quick run at 256 x 512

For every backward case the last column is the peak over the N x D float32 gradient that
``feat.grad`` keeps (the issue's bound for the map-level DistCL: at most 1.3).

Every case runs in a fresh Python process: it warms the libraries up on a tiny input, builds its
inputs, resets the peak resident set size (writing 5 to /proc/self/clear_refs), runs the op once and
reads VmHWM from /proc/self/status. "peak" is VmHWM minus the resident size just before the op
(the inputs, the interpreter and the libraries); "kept" is what is still resident after it (e.g.
feat.grad after a backward). The processes run with MALLOC_MMAP_THRESHOLD_=1048576 so that every
block of 1 MiB or more comes from mmap and goes back on free, and call malloc_trim before the op:
a freed block cannot hide a later allocation. No timings: the measurement itself slows the op
down. Linux only.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import subprocess
import sys

from bench.memory import status_kb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, C, STRIDE, MEMORY = 2, 19, 4, 200
SIZES = {"full": (1024, 2048), "small": (256, 512)}


# --------------------------------------------------------------------------- one case (child)

def _inputs(height, width, dim, *, seed=0):
    """Float32 feat [B, D, H/4, W/4] (ReLU + L2 norm, like the projection head), int64 labels
    [B, 1, H, W] made of 32 x 32 blocks with 3 % salt noise and an ignored band, statistics."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    h, w = height // STRIDE, width // STRIDE
    feat = F.normalize(torch.randn(B, dim, h, w, generator=gen).relu_().add_(0.01), dim=1)
    blocks = torch.randint(0, C, (B, 1, height // 32, width // 32), generator=gen)
    label = blocks.repeat_interleave(32, 2).repeat_interleave(32, 3)
    noise = torch.rand(B, 1, height, width, generator=gen) < 0.03
    label[noise] = torch.randint(0, C, (int(noise.sum()),), generator=gen)
    del noise
    label[:, :, -height // 8:] = 255
    mean = F.normalize(torch.rand(C, dim, generator=gen), dim=1)
    cov = torch.rand(C, dim, generator=gen) * 1e-3
    return feat, label, mean, cov


def _case_fn(name, height, width, dim):
    """Build the inputs of case `name` and return a closure that runs it once."""
    import torch

    from sepico import losses, reference
    from sepico.estimator import ClassDistributionEstimator

    feat, label, mean, cov = _inputs(height, width, dim)
    small = losses.labels_at_feature_resolution(label, feat.shape[-2:], num_classes=C)[:, 0]
    pixels = feat.permute(0, 2, 3, 1).reshape(-1, dim).contiguous()
    flat = small.reshape(-1)
    bank = [torch.randn(MEMORY, dim) / dim ** 0.5 for _ in range(C)]
    opts = dict(num_classes=C)

    def backward(fn):
        def run():
            x = feat.requires_grad_()
            fn(x).backward()
        return run

    cases = {
        "downscale_labels": (lambda: losses.downscale_labels(label, STRIDE, num_classes=C)),
        "downscale_labels reference": (
            lambda: reference.downscale_labels_reference(label, STRIDE, num_classes=C)),
        "dist_contrastive_loss forward (no grad)": (
            lambda: losses.dist_contrastive_loss(feat, label, mean, cov, **opts)),
        "dist_contrastive_loss fwd+bwd": backward(
            lambda x: losses.dist_contrastive_loss(x, label, mean, cov, **opts)),
        "dist_contrastive_loss fwd+bwd reg_weight=1": backward(
            lambda x: losses.dist_contrastive_loss(x, label, mean, cov, reg_weight=1.0, **opts)),
        "dist_contrastive_loss fwd+bwd full cov": backward(
            lambda x: losses.dist_contrastive_loss(x, label, mean, torch.diag_embed(cov), **opts)),
        "dist_contrastive_map_reference fwd+bwd": backward(
            lambda x: reference.dist_contrastive_map_reference(x, label, mean, cov, **opts)),
        "proto_contrastive_loss fwd+bwd": backward(
            lambda x: losses.proto_contrastive_loss(x, label, mean, **opts)),
        f"bank_contrastive_loss fwd+bwd (L={MEMORY})": backward(
            lambda x: losses.bank_contrastive_loss(x, label, bank, **opts)),
    }
    full = dim <= 256  # the full-covariance ops take D <= 256
    if not full:
        del cases["dist_contrastive_loss fwd+bwd full cov"]
    for covariance, memory in (("diag", 0), ("diag", MEMORY)) + ((("full", 0),) if full else ()):
        est = ClassDistributionEstimator(C, dim, covariance=covariance, memory_length=memory)
        est.update(pixels[:1000], flat[:1000])  # statistics already populated, as in training
        # The map as the trainer passes it (read in place, no [N, D] copy).
        cases[f"ClassDistributionEstimator.update {covariance} memory_length={memory}"] = (
            lambda est=est: est.update(feat, small))

    def reference_update():  # the reference takes [N, D] rows: counted among the inputs
        z = torch.zeros(C)
        reference.update_class_distribution_reference(z, torch.zeros(C, dim), torch.zeros(C, dim),
                                                       pixels, flat)
    cases["update_class_distribution_reference diag"] = reference_update
    inputs_mb = sum(t.numel() * t.element_size() for t in (feat, label, mean, cov, pixels, flat)) / 2 ** 20
    grad_mb = feat.numel() * 4 / 2 ** 20
    return cases[name], inputs_mb, grad_mb, list(cases)


def _child(name, size, dim):
    import torch

    torch.manual_seed(0)
    # Warm-up on a tiny input: thread pools and library buffers are not the op's memory.
    run, _, _, _ = _case_fn(name, 64, 128, dim)
    run()
    run, inputs_mb, grad_mb, _ = _case_fn(name, *SIZES[size], dim)
    ctypes.CDLL(None).malloc_trim(0)  # hand freed heap back, so reusing it counts as growth
    before = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    run()
    peak = status_kb("VmHWM")
    after = status_kb("VmRSS")
    print(json.dumps({"case": name, "peak_mb": (peak - before) / 1024, "kept_mb": (after - before) / 1024,
                      "inputs_mb": inputs_mb, "grad_mb": grad_mb}))


# --------------------------------------------------------------------------- driver

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="256 x 512 labels instead of 1024 x 2048")
    parser.add_argument("--dim", type=int, default=256, help="embedding channels D (published: 512)")
    parser.add_argument("--docs", metavar="PAGE",
                        help="also rewrite the 'memory-losses-d<D>' block of this page (docs/memory.md)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="full", choices=tuple(SIZES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        _child(args.case, args.size, args.dim)
        return
    size = "small" if args.small else "full"
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", KERNELS_BACKEND="torch")
    env.pop("TRITON_INTERPRET", None)
    import torch

    *_, names = _case_fn("downscale_labels", 64, 128, args.dim)
    height, width = SIZES[size]
    setting = (f"B = {B}, labels {height} x {width} int64, feat [{B}, {args.dim}, {height // STRIDE}, "
               f"{width // STRIDE}] float32 (N = {B * height * width // STRIDE ** 2} pixels), C = {C}, "
               f"CPU torch path; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores")
    print(setting)
    table = ["| case | peak MB | kept MB | peak / gradient |", "|---|---|---|---|"]
    print(f"{'case':<62} {'peak MB':>9} {'kept MB':>9} {'peak/grad':>9}")
    inputs = None
    failed = False
    for name in names:
        out = subprocess.run([sys.executable, "-m", "bench.memory_losses", "--case", name, "--size", size,
                              "--dim", str(args.dim)], cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name:<62} failed: {out.stderr.strip().splitlines()[-1]}")
            failed = True
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        inputs, grad = row["inputs_mb"], row["grad_mb"]
        ratio = f"{row['peak_mb'] / grad:9.2f}" if "bwd" in name else f"{'':9}"
        print(f"{name:<62} {row['peak_mb']:9.1f} {row['kept_mb']:9.1f} {ratio}", flush=True)
        table.append(f"| {name} | {row['peak_mb']:.1f} | {row['kept_mb']:.1f} | {ratio.strip()} |")
    if inputs is not None:
        note = (f"(peak and kept are above the resident inputs: feat, labels, statistics, and the "
                f"[N, D] rows and [N] labels the reference update takes: {inputs:.0f} MB; "
                f"the N x D float32 gradient is {grad:.0f} MB)")
        print(note)
        if args.docs and not failed:
            from sepico.pages import write_block

            command = "python -m bench.memory_losses" + (" --small" if args.small else "") + f" --dim {args.dim}"
            write_block(args.docs, f"memory-losses-d{args.dim}",
                        f"`{command}`, {datetime.date.today().isoformat()}: {setting}.\n\n"
                        + "\n".join(table) + f"\n\n{note}")
            print(f"wrote the 'memory-losses-d{args.dim}' block of {args.docs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

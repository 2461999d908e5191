"""Where the time of the diagonal DistCL forward + backward goes on the CPU (torch backend).

    python -m bench.profile_loss            # both parts below, N = 262,144, D = 256, C = 19, 1 thread

1. ``torch.profiler`` table of one call of the chunked torch path (the GEMMs against the rest).
2. The [N, D] gradient buffer backed by huge pages (what ``kernels`` does on Linux) against plain
   4 KiB pages, each call preceded by 825 MB of freed temporaries as the eager reference leaves
   them in the benchmark: median and every call's time, with the kernel (system) time per call.

docs/benchmarks.md quotes these figures; the benchmark JSON holds the same kernel
time per round for the real interleaved runs.
"""
from __future__ import annotations

import resource
import statistics
import time

import torch

import kernels._launch as kl
import kernels.contrastive as kc

N, D, C, IGNORE = 262144, 256, 19, 255


def inputs():
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
    labels = torch.randint(0, C, (N,), generator=g)
    labels[torch.rand(N, generator=g) < 0.1] = IGNORE
    mean = torch.nn.functional.normalize(torch.randn(C, D, generator=g), dim=1)
    cov = torch.rand(C, D, generator=g) * 0.01
    return feats, labels, mean, cov


def profile(args) -> None:
    from torch.profiler import profile as torch_profile

    kc.contrastive_forward_torch(*args)
    with torch_profile() as prof:
        kc.contrastive_forward_torch(*args)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def pages(args, calls=12) -> None:
    huge = kl._advise_huge_pages
    for name, advise in (("huge pages", huge), ("4 KiB pages", lambda out: None)):
        kl._advise_huge_pages = advise
        walls, kernel = [], []
        try:
            for _ in range(calls):
                torch.empty(825 << 18).fill_(1.0)      # the eager reference's freed temporaries
                sys_before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
                start = time.perf_counter()
                out = kc.contrastive_forward_torch(*args)
                walls.append(time.perf_counter() - start)
                kernel.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys_before)
                del out
        finally:
            kl._advise_huge_pages = huge
        walls, kernel = walls[2:], kernel[2:]   # the first two calls warm up
        print(f"{name:12s} median {1e3 * statistics.median(walls):6.1f} ms; calls "
              f"{[round(1e3 * w) for w in walls]} ms; kernel time {[round(1e3 * k) for k in kernel]} ms")


def main(argv=None) -> None:
    import argparse

    argparse.ArgumentParser(prog="python -m bench.profile_loss", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    torch.set_num_threads(1)
    feats, labels, mean, cov = inputs()
    args = (feats, labels, mean, cov, None, IGNORE, True)
    print(f"# CPU, torch {torch.__version__}, 1 thread, N = {N}, D = {D}, C = {C}, diagonal, fwd + gradient")
    profile(args)
    pages(args)


if __name__ == "__main__":
    main()

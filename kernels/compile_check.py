"""Ahead-of-time compile of every Triton kernel for sm_80 (A100) and sm_90 (H100), with a resource
report. No GPU is needed:

    python -m kernels.compile_check [--jobs N] [--arch 80,90] [--only TEXT]

Each kernel is compiled at representative shapes with the launch its op module describes (the
same `moment_launch`, `merge_launch`, `loss_launch` and `bank_launch` the launchers call, compiled-path branch,
with pointer stand-ins for the tensors: no second copy of any argument list) and with
the argument specialisation Triton's launcher applies at run time: integer arguments equal to 1
become constants (a contiguous tensor's last stride), integers divisible by 16 and tensor pointers
carry a divisibility-16 hint. The PTX is then run through the wheel's own `ptxas -v` (CUDA 12.9
below sm_90, `ptxas-blackwell` from sm_90 on, the same tools and flags Triton uses) for registers,
stack frame and spill bytes, and the cubin through `cuobjdump --dump-resource-usage`; the PTX's
float32 FMA and tensor-core MMA instructions are counted (which units the dots run on).

The exit status is non-zero when any variant fails to compile, spills (spill stores or loads above
0 bytes), asks for more shared memory than the architecture allows per block, or when the re-run
of ptxas disagrees with the cubin Triton built (then the spill figures would not describe it).
Compiling proves the kernels lower and shows what they use; it says nothing about speed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ._backend import interpreting
from ._checks import Covariance
from ._launch import Launch
from ._layout import PixelLayout
from .bank import MAX_TRITON_CLASSES as MAX_BANK_CLASSES
from .bank import _bank_contrastive_kernel, bank_launch
from .contrastive import _dist_contrastive_kernel, loss_launch
from .distribution import _merge_class_distribution_kernel, merge_launch
from .moments import _class_moment_partials_kernel, moment_launch

# Representative sizes: two full-resolution Cityscapes images at output stride 4 (2 x 256 x 512
# pixels), Cityscapes' 19 classes, and the widest class axis the loss accepts.
BATCH, HEIGHT, WIDTH = 2, 256, 512
N_PIXELS = BATCH * HEIGHT * WIDTH
NUM_CLASSES = 19
MANY_CLASSES = 256
MID_CLASSES = (64, 128)
DIMS = (64, 256)
FEAT_DTYPES = ("fp32", "bf16")
IGNORE_INDEX = 255
ARCHS = (80, 90)

# Largest dynamic shared memory one block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin):
# A100 163 KiB, H100 227 KiB (and the other --arch values one may ask for). Triton raises
# OutOfResources at launch above it.
MAX_SHARED = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024,
              120: 99 * 1024}


KERNELS = {
    "class_moment_partials": _class_moment_partials_kernel,
    "merge_class_distribution": _merge_class_distribution_kernel,
    "dist_contrastive": _dist_contrastive_kernel,
    "bank_contrastive": _bank_contrastive_kernel,
}

COV_NAMES = {Covariance.NONE: "protocl", Covariance.DIAG: "diag", Covariance.FULL: "full"}


class Ptr(str):
    """A tensor argument, by Triton pointer type ("*fp32", "*bf16", "*i64", "*i32")."""


@dataclass(frozen=True)
class Variant:
    kernel: str            # key of KERNELS
    label: str             # what the variant stands for, as printed in the table
    args: tuple            # (argument name, Ptr | int | constexpr value) in launch order
    options: dict          # compile options of the launch (`Launch.options`)


@dataclass
class Result:
    kernel: str
    label: str
    arch: int
    num_warps: int = 0
    num_stages: int = 0
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    shared: int | None = None
    cubin: dict = field(default_factory=dict)  # cuobjdump: REG, STACK, SHARED, LOCAL
    ptx_ops: dict = field(default_factory=dict)  # ptx_op_counts: which units the dots run on
    seconds: float = 0.0
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        if self.error:
            return [self.error]
        out = []
        if self.spill_stores or self.spill_loads:
            out.append(f"spills {self.spill_stores} B stored / {self.spill_loads} B loaded")
        if self.shared > MAX_SHARED.get(self.arch, self.shared):
            out.append(f"{self.shared} B shared memory exceeds the sm_{self.arch} limit of "
                       f"{MAX_SHARED[self.arch]} B")
        if self.cubin.get("REG") != self.registers or self.cubin.get("STACK") != self.stack:
            out.append(f"ptxas re-run (REG {self.registers}, STACK {self.stack}) disagrees with "
                       f"the cubin ({self.cubin})")
        return out


# --------------------------------------------------------------------------- parsing tool output

_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_CUOBJDUMP = re.compile(r"\b(REG|STACK|SHARED|LOCAL):(\d+)")


def parse_ptxas(log: str) -> dict:
    """``ptxas -v`` output of one kernel -> registers, stack, spill_stores, spill_loads (bytes)."""
    regs = _PTXAS_REGS.search(log)
    frame = _PTXAS_FRAME.search(log)
    if regs is None or frame is None:
        raise ValueError(f"no resource usage in ptxas output:\n{log}")
    stack, stores, loads = (int(g) for g in frame.groups())
    return {"registers": int(regs.group(1)), "stack": stack, "spill_stores": stores,
            "spill_loads": loads}


_PTX_OPS = {"fma": re.compile(r"^\s*fma\.rn\.f32\b", re.M),
            "mma": re.compile(r"^\s*(?:mma\.sync|wgmma\.mma_async)\b", re.M)}


def ptx_op_counts(ptx: str) -> dict:
    """How many float32 FMA and tensor-core MMA instructions the PTX holds: an ieee ``tl.dot``
    becomes FMAs, a TF32 or bfloat16 one MMAs."""
    return {name: len(pattern.findall(ptx)) for name, pattern in _PTX_OPS.items()}


def parse_cuobjdump(text: str) -> dict:
    """``cuobjdump --dump-resource-usage`` of a one-kernel cubin -> {REG, STACK, SHARED, LOCAL}."""
    fields = {k: int(v) for k, v in _CUOBJDUMP.findall(text.split("Function", 1)[-1])}
    if "REG" not in fields:
        raise ValueError(f"no resource usage in cuobjdump output:\n{text}")
    return fields


# --------------------------------------------------------------------------- variants

def rows_layout(dim: int) -> PixelLayout:
    """Contiguous rows [N_PIXELS, D] (`kernels._layout.pixel_layout` of such a tensor)."""
    return PixelLayout(rows=True, batch=1, hw=N_PIXELS, stride_b=0, stride_p=dim, stride_d=1)


def map_layout(dim: int) -> PixelLayout:
    """A contiguous map [BATCH, D, HEIGHT, WIDTH], as the projection head emits it."""
    hw = HEIGHT * WIDTH
    return PixelLayout(rows=False, batch=BATCH, hw=hw, stride_b=dim * hw, stride_p=1, stride_d=hw)


LAYOUTS = {"rows": rows_layout, "map": map_layout}


def _variant(launch: Launch, label: str) -> Variant:
    kernel = next(k for k, fn in KERNELS.items() if fn is launch.kernel)
    return Variant(kernel, label, launch.args, launch.options)


def _moment_variants() -> list[Variant]:
    """`moment_partials_triton`, as `class_moments` and both passes of
    `update_class_distribution` call it."""
    # (name, HAS_SHIFT, WITH_TOTAL, SECOND_MODE)
    calls = [("class_moments diag", False, True, Covariance.DIAG),
             ("class_moments full", False, True, Covariance.FULL),
             ("update pass1 totals", False, True, Covariance.NONE),
             ("update pass2 diag", True, False, Covariance.DIAG),
             ("update pass2 full", True, False, Covariance.FULL)]
    shapes = [(NUM_CLASSES, dim, dtype, "i64", layout) for dim in DIMS for dtype in FEAT_DTYPES
              for layout in LAYOUTS]
    shapes += [(NUM_CLASSES, 256, "fp32", "i32", "map"), (MANY_CLASSES, 256, "fp32", "i64", "map")]
    out = []
    for name, has_shift, with_total, mode in calls:
        for c, dim, dtype, label_t, layout in shapes:
            if label_t == "i32" and name != "class_moments diag":
                continue  # int32 labels change one pointer type: checked once
            if c == MANY_CLASSES and name not in ("class_moments diag", "class_moments full"):
                continue
            # sort_by_class: ORDER is torch.sort's int64 indices, BOUNDS has the labels' dtype.
            f32 = Ptr("*fp32")
            launch = moment_launch(Ptr(f"*{dtype}"), Ptr("*i64"), Ptr(f"*{label_t}"),
                                   f32 if has_shift else None, f32 if with_total else None,
                                   f32 if mode != Covariance.NONE else None, z=LAYOUTS[layout](dim),
                                   n=N_PIXELS, num_classes=c, dim=dim, second_mode=mode)
            cfg = dict(launch.args)
            label = (f"{name} D={dim} C={c} {dtype} {layout} labels={label_t} "
                     f"[N{cfg['BLOCK_N']} D{cfg['BLOCK_D']} S{cfg['SPLIT']}]")
            out.append(_variant(launch, label))
    return out


def _merge_variants() -> list[Variant]:
    """`_merge_triton`: running statistics and batch moments, all float32."""
    out = []
    for full in (False, True):
        for dim in DIMS:
            launch = merge_launch(*[Ptr("*fp32")] * 9, num_classes=NUM_CLASSES, dim=dim, full=full)
            label = f"merge {'full' if full else 'diag'} D={dim} [D{dict(launch.args)['BLOCK_D']}]"
            out.append(_variant(launch, label))
    return out


def _loss_variant(cov_mode, c, dim, dtype, has_grad, *, layout="map", has_weight=True,
                  label_t="i64", precision="ieee") -> Variant:
    """`contrastive_forward_triton`: every pointer but Z and Y is float32."""
    f32 = Ptr("*fp32")
    z = LAYOUTS[layout](dim)
    launch = loss_launch(Ptr(f"*{dtype}"), Ptr(f"*{label_t}"), f32 if has_weight else None, f32,
                         None if cov_mode == Covariance.NONE else f32, f32, f32 if has_grad else None,
                         z=z, num_classes=c, dim=dim,
                         ignore_index=IGNORE_INDEX, cov_mode=cov_mode, precision=precision)
    cfg = dict(launch.args)
    label = (f"loss {COV_NAMES[cov_mode]} {'fwd+grad' if has_grad else 'fwd'} D={dim} C={c} {dtype} "
             f"{layout}{'' if has_weight else ' noweight'}{'' if label_t == 'i64' else ' labels=' + label_t}"
             f"{'' if precision == 'ieee' else ' ' + precision} "
             f"[N{cfg['BLOCK_N']} C{cfg['BLOCK_C']} D{cfg['BLOCK_D']}]")
    return _variant(launch, label)


def _loss_variants() -> list[Variant]:
    out = []
    for cov_mode in Covariance:
        for dim in DIMS:
            for has_grad in (True, False):
                for dtype in FEAT_DTYPES:
                    for layout in LAYOUTS:
                        out.append(_loss_variant(cov_mode, NUM_CLASSES, dim, dtype, has_grad,
                                                 layout=layout))
                # The large-class configuration (smaller pixel tile, more warps); the feature
                # dtype only changes one load, so float32 stands for both here.
                out.append(_loss_variant(cov_mode, MANY_CLASSES, dim, "fp32", has_grad))
        out.append(_loss_variant(cov_mode, NUM_CLASSES, 256, "fp32", True, has_weight=False))
    for c in MID_CLASSES:  # the pixel tile shrinks with the class axis: 32 and 16 rows
        for cov_mode in Covariance:
            out.append(_loss_variant(cov_mode, c, 256, "fp32", True))
    out.append(_loss_variant(Covariance.DIAG, NUM_CLASSES, 256, "fp32", True, label_t="i32"))
    for layout in LAYOUTS:
        out.append(_loss_variant(Covariance.FULL, NUM_CLASSES, 256, "fp32", True, layout=layout, precision="tf32"))
        out.append(_loss_variant(Covariance.DIAG, NUM_CLASSES, 256, "bf16", True, layout=layout, precision="tf32"))
    return out


BANK_LENGTHS = (200, 32)  # the published memory_length, and a short queue (32-pixel tiles)


def _bank_variants() -> list[Variant]:
    """`bank_forward_triton`: ORDER int64, BOUNDS the labels' dtype, LEN int64, the rest float32."""
    out = []
    for length in BANK_LENGTHS:
        for dim in DIMS:
            # The short queue (32-pixel tiles) with its gradient; the published one both ways.
            for has_grad in (True, False) if length == BANK_LENGTHS[0] else (True,):
                for dtype in FEAT_DTYPES:
                    for layout in LAYOUTS:
                        wide = (NUM_CLASSES, MAX_BANK_CLASSES)
                        for c in wide if (dtype, layout) == ("fp32", "map") else (NUM_CLASSES,):
                            f32 = Ptr("*fp32")
                            launch = bank_launch(Ptr(f"*{dtype}"), Ptr("*i64"), Ptr("*i64"), f32,
                                                 Ptr("*i64"), f32, f32, f32 if has_grad else None,
                                                 z=LAYOUTS[layout](dim), n=N_PIXELS, num_classes=c,
                                                 length=length, dim=dim)
                            cfg = dict(launch.args)
                            label = (f"bank {'fwd+grad' if has_grad else 'fwd'} L={length} D={dim} C={c} "
                                     f"{dtype} {layout} [N{cfg['BLOCK_N']} C{cfg['BLOCK_C']} "
                                     f"L{cfg['BLOCK_L']} D{cfg['BLOCK_D']} S{cfg['SPLIT']}]")
                            out.append(_variant(launch, label))
    return out


def all_variants() -> list[Variant]:
    return _moment_variants() + _merge_variants() + _loss_variants() + _bank_variants()


# --------------------------------------------------------------------------- compiling

def _specialise(fn, args):
    """Signature, constants and attributes as Triton's launcher derives them from the values."""
    names = [name for name, _ in args]
    if names != list(fn.arg_names):
        raise ValueError(f"{fn.__name__}: variant arguments {names} do not match the kernel's "
                         f"{list(fn.arg_names)}")
    signature, constexprs, attrs = {}, {}, {}
    for i, ((name, value), param) in enumerate(zip(args, fn.params)):
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, Ptr):
            signature[name] = str(value)
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(value, int) and not isinstance(value, bool):
            if value == 1 and not param.do_not_specialize:
                signature[name], constexprs[name] = "constexpr", 1
                continue
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0 and not (param.do_not_specialize
                                        or param.do_not_specialize_on_alignment):
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise TypeError(f"{fn.__name__}: no specialisation rule for {name}={value!r}")
    return signature, constexprs, attrs


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _ptxas_usage(ptx: str, arch: int, fp_fusion: bool, workdir: str) -> dict:
    # The flags of Triton's own ptxas call (backends/nvidia/compiler.py, make_cubin), so the
    # numbers are those of the cubin it built: cuobjdump cross-checks REG and STACK below.
    exe, gpu = ("ptxas", f"sm_{arch}") if arch < 90 else ("ptxas-blackwell", f"sm_{arch}a")
    src = os.path.join(workdir, "kernel.ptx")
    with open(src, "w") as f:
        f.write(ptx)
    cmd = [_tool(exe), "-v", "-lineinfo", "--regAllocOptLevel=2", f"--gpu-name={gpu}",
           *([] if fp_fusion else ["--fmad=false"]), src, "-o", src + ".o"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr}")
    return parse_ptxas(run.stderr + run.stdout)


def _cubin_usage(cubin: bytes, workdir: str) -> dict:
    path = os.path.join(workdir, "kernel.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    run = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path],
                         capture_output=True, text=True, check=True)
    return parse_cuobjdump(run.stdout)


def compile_key(variant: Variant) -> tuple:
    """Variants with equal keys compile to the same binary (they differ only in run-time integer
    values, such as D = 64 and D = 256 at the same block sizes): compile them once."""
    signature, constexprs, attrs = _specialise(KERNELS[variant.kernel], variant.args)
    return (variant.kernel, tuple(signature.items()), repr(sorted(constexprs.items())),
            repr(sorted(attrs.items())), repr(sorted(variant.options.items())))


def merge_labels(labels: list[str]) -> str:
    """"a D=64 b" and "a D=256 b" -> "a D=64,256 b"."""
    tokens = [label.split(" ") for label in labels]
    if len(labels) == 1 or len({len(t) for t in tokens}) != 1:
        return " / ".join(labels)
    merged = []
    for column in zip(*tokens):
        values = list(dict.fromkeys(column))
        if len(values) == 1:
            merged.append(values[0])
        elif all("=" in v and v.split("=")[0] == values[0].split("=")[0] for v in values):
            merged.append(values[0].split("=")[0] + "=" + ",".join(v.split("=", 1)[1] for v in values))
        else:
            return " / ".join(labels)
    return " ".join(merged)


def unique_variants(variants: list[Variant]) -> list[Variant]:
    groups: dict[tuple, list[Variant]] = {}
    for v in variants:
        groups.setdefault(compile_key(v), []).append(v)
    return [Variant(g[0].kernel, merge_labels([v.label for v in g]), g[0].args, g[0].options)
            for g in groups.values()]


def check_variant(variant: Variant, arch: int) -> Result:
    """Compile one variant for one architecture and read its resource use."""
    res = Result(variant.kernel, variant.label, arch, variant.options["num_warps"])
    start = time.perf_counter()
    try:
        fn = KERNELS[variant.kernel]
        signature, constexprs, attrs = _specialise(fn, variant.args)
        options = dict(variant.options)
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                                            attrs=attrs),
                                  target=GPUTarget("cuda", arch, 32), options=options)
        res.num_stages = compiled.metadata.num_stages
        res.shared = compiled.metadata.shared
        res.ptx_ops = ptx_op_counts(compiled.asm["ptx"])
        with tempfile.TemporaryDirectory(prefix="compile_check_") as workdir:
            usage = _ptxas_usage(compiled.asm["ptx"], arch, compiled.metadata.enable_fp_fusion,
                                 workdir)
            res.cubin = _cubin_usage(compiled.asm["cubin"], workdir)
        res.registers, res.stack = usage["registers"], usage["stack"]
        res.spill_stores, res.spill_loads = usage["spill_stores"], usage["spill_loads"]
    except Exception as exc:  # reported per variant; the run goes on
        res.error = f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
    res.seconds = time.perf_counter() - start
    return res


def _check_task(task):
    return check_variant(*task)


# --------------------------------------------------------------------------- report

COLUMNS = ("kernel", "variant", "arch", "warps", "stages", "regs", "spill st/ld B", "stack B",
           "shared B", "cuobjdump REG/STACK/SHARED/LOCAL", "PTX fma/mma", "status")


def _row(r: Result) -> tuple:
    if r.error:
        return (r.kernel, r.label, f"sm_{r.arch}", str(r.num_warps), "-", "-", "-", "-", "-", "-", "-",
                "COMPILE FAILED")
    cub = "/".join(str(r.cubin.get(k, "?")) for k in ("REG", "STACK", "SHARED", "LOCAL"))
    return (r.kernel, r.label, f"sm_{r.arch}", str(r.num_warps), str(r.num_stages),
            str(r.registers), f"{r.spill_stores}/{r.spill_loads}", str(r.stack), str(r.shared),
            cub, f"{r.ptx_ops.get('fma', '?')}/{r.ptx_ops.get('mma', '?')}", "ok" if not r.problems else "FAIL")


def format_table(results: list[Result]) -> str:
    rows = [COLUMNS] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def headline(results: list[Result]) -> str:
    """Per kernel and architecture: the worst registers, spills and shared memory."""
    lines = []
    for kernel in KERNELS:
        for arch in sorted({r.arch for r in results}):
            group = [r for r in results if r.kernel == kernel and r.arch == arch and not r.error]
            if not group:
                continue
            lines.append(
                f"{kernel:26s} sm_{arch}: {len(group):2d} binaries, registers "
                f"{min(r.registers for r in group)}-{max(r.registers for r in group)}, "
                f"max spill {max(max(r.spill_stores, r.spill_loads) for r in group)} B, "
                f"max stack {max(r.stack for r in group)} B, "
                f"max shared {max(r.shared for r in group)} B")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point

def _reexec_without_interpreter(argv: list[str]) -> int:
    # With TRITON_INTERPRET=1 at import the kernels are InterpretedFunction objects, which cannot
    # be compiled: run the check again in a fresh interpreter without the variable.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    print("kernels.compile_check: TRITON_INTERPRET is set; re-running without it", flush=True)
    return subprocess.call([sys.executable, "-m", "kernels.compile_check", *argv], env=env)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m kernels.compile_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="compile processes (default: min(4, CPUs))")
    parser.add_argument("--arch", default=",".join(map(str, ARCHS)),
                        help="comma-separated compute capabilities (default: 80,90)")
    parser.add_argument("--only", default="",
                        help="check only variants whose kernel name or label contains this text")
    args = parser.parse_args(argv)
    if interpreting():
        return _reexec_without_interpreter(argv)
    # Explicit, so Triton does not warn about it; 1 is its default (FMA contraction on).
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

    archs = [int(a) for a in args.arch.split(",") if a.strip()]
    started = time.perf_counter()
    variants = [v for v in all_variants() if args.only in f"{v.kernel} {v.label}"]
    if not variants:
        print(f"no variant matches --only {args.only!r}")
        return 2
    binaries = unique_variants(variants)
    tasks = [(v, arch) for v in binaries for arch in archs]
    # The loss kernel takes the longest to compile: hand it out first so the pool ends together.
    order = sorted(range(len(tasks)), key=lambda i: tasks[i][0].kernel != "dist_contrastive")
    results: list[Result | None] = [None] * len(tasks)
    if args.jobs > 1:
        # spawn: fresh workers, nothing inherited from an already-initialised parent
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            for i, res in zip(order, pool.map(_check_task, [tasks[i] for i in order])):
                results[i] = res
    else:
        results = [_check_task(t) for t in tasks]
    elapsed = time.perf_counter() - started

    print(format_table(results))
    print()
    print(headline(results))
    failed = [r for r in results if r.problems]
    for r in failed:
        print(f"\nFAIL {r.kernel} | {r.label} | sm_{r.arch}:\n  " + "\n  ".join(r.problems))
    print(f"\n{len(variants)} variants ({len(binaries)} distinct binaries) x {len(archs)} "
          f"architectures = {len(results)} compiles in "
          f"{elapsed:.1f} s ({args.jobs} jobs, triton {triton.__version__}); "
          f"{len(failed)} failing")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

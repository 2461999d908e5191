"""Run cards: what produced a result, written beside it.

``sepico train`` writes ``card.json`` and a short ``card.md`` into the run folder when it ends,
``sepico eval`` beside its result (``--card FILE``, by default ``<--out stem>.card.json``) and
``sepico ablate`` into its ``--out``. A card holds

- ``code``: the sepico version, the git commit (read from ``.git`` without running git) and
  whether the checkout had uncommitted changes (``git status``, when a git command is there);
- ``environment``: Python, torch, triton, CUDA, cuDNN and driver versions, the device, the torch
  threads and the kernel backend;
- ``config``: the full resolved configuration;
- ``weights``: where the initial weights came from and their SHA-256 (``model.pretrained``, as the
  run's ``pretrained.json`` records them; ``model.init_checkpoint``), or the checkpoint evaluated;
- ``data``: the quick dataset check's summary (``sepico.train.data.check_run_data``) and a
  manifest per dataset: the SHA-256 of its file list (paths relative to the dataset folder and
  sizes, not contents; for the synthetic scenes, their defining parameters);
- ``seeds`` (restating the config's), ``run`` (iterations, processes), ``measurements`` (wall time,
  peak memory) and ``result`` (mIoU, per-class IoU by class name).

``sepico card A B`` (run folders or card files) prints what differs, settings first, then
results. The card's ``created`` time, the run's name and folder, and ``seeds`` (the config's fields
again) are not compared.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

from sepico.errors import ConfigError
from sepico.files import atomic_write, check_output

CARD_FORMAT = "sepico-card-1"
CARD_FILE = "card.json"  # and card.md beside it
_PAGE_MARK = f"<!-- {CARD_FORMAT} -->"
SETTINGS = ("code", "environment", "config", "weights", "data", "run")
RESULTS = ("result", "measurements")
NOT_COMPARED = ("config.name", "config.train.run_dir", "run.folder")
_GIT_TIMEOUT_S = 10


# --------------------------------------------------------------------------- what ran

def code_record() -> dict:
    """The sepico version, the commit of the checkout it runs from, and its uncommitted changes."""
    import sepico

    checkout = Path(sepico.__file__).resolve().parent.parent
    return {"version": sepico.__version__, "commit": git_commit(checkout), "changes": git_changes(checkout)}


def git_commit(folder: Path) -> str:
    """The commit ``folder``'s ``.git`` (a folder, or a worktree's ``gitdir:`` file) has checked
    out, read from its files; "not a git checkout" when there is none."""
    dotgit = Path(folder) / ".git"
    try:
        if dotgit.is_file():
            text = dotgit.read_text().strip()
            if not text.startswith("gitdir:"):
                return f"not a git checkout ({dotgit} is not a gitdir link)"
            gitdir = (Path(folder) / text[len("gitdir:"):].strip()).resolve()
        elif dotgit.is_dir():
            gitdir = dotgit
        else:
            return "not a git checkout"
        head = (gitdir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head  # a detached HEAD holds the commit itself
        ref = head[len("ref: "):]
        common = gitdir
        if (gitdir / "commondir").is_file():  # a worktree keeps its branches in the main repository
            common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        for base in (gitdir, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
        return f"unknown (HEAD names {ref}, which {gitdir} does not hold)"
    except OSError as err:
        return f"unknown ({dotgit}: {err.strerror})"


def git_changes(folder: Path) -> str:
    """``git status`` of the tracked files: "none", "N files changed", or why it was not checked."""
    git = shutil.which("git")
    if git is None or not (Path(folder) / ".git").exists():
        return "not checked (no git command)" if git is None else "not checked (not a git checkout)"
    try:
        done = subprocess.run([git, "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True, timeout=_GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"not checked (git status: {type(err).__name__})"
    if done.returncode != 0:
        return f"not checked (git status exited {done.returncode})"
    changed = [line for line in done.stdout.splitlines() if line.strip()]
    return f"{len(changed)} files changed" if changed else "none"


def environment(device) -> dict:
    """The versions and the machine a result came from."""
    import torch
    import triton

    import kernels

    cuda = torch.version.cuda
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": cuda or "none (a CPU build of torch)",
            "cudnn": str(torch.backends.cudnn.version()) if cuda and torch.backends.cudnn.is_available() else "none",
            "driver": nvidia_driver(), "device": device_name(device), "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "kernel_backend": kernels.requested_backend()}


def nvidia_driver() -> str:
    """The NVIDIA kernel driver's version, read from /proc (no process started)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return "no NVIDIA driver found (/proc/driver/nvidia/version)"
    found = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d[\w.]*)", text)
    return found.group(1) if found else text.splitlines()[0].strip()


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} {torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return f"cpu {model or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def peak_memory(device) -> dict:
    """The peak memory of this process: CUDA memory allocated by torch on a GPU, else the host's
    peak resident set (VmHWM)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "what": f"torch.cuda.max_memory_allocated({device})"}
    try:
        status = Path("/proc/self/status").read_text()
        kib = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    except (OSError, AttributeError):
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"bytes": kib * 1024, "what": "peak resident set size of the process (host)"}


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_record(cfg, run_dir=None, pretrained: dict | None = None) -> dict:
    """The initial weights: ``model.pretrained`` with the provenance the run recorded
    (``run_dir/pretrained.json``: the weights it started from; else ``pretrained``), and
    ``model.init_checkpoint`` with its SHA-256."""
    model_cfg = cfg.model
    recorded = Path(run_dir) / "pretrained.json" if run_dir else None
    if not model_cfg.pretrained:
        source = "not set (the encoder starts from random weights)"
    elif recorded is not None and recorded.is_file():
        source = _read_json(recorded)
    else:
        source = pretrained or {"source": model_cfg.pretrained}
    start = "not set" if not model_cfg.init_checkpoint else {
        "file": str(model_cfg.init_checkpoint), "sha256": file_sha256(model_cfg.init_checkpoint),
        "bytes": Path(model_cfg.init_checkpoint).stat().st_size}
    return {"model.pretrained": source, "model.init_checkpoint": start}


# --------------------------------------------------------------------------- which data

def dataset_manifest(dataset) -> dict:
    """The file list a dataset object reads, hashed: ``files``, ``bytes`` and the ``sha256`` of its
    lines ``<path relative to the dataset folder>\\t<size>`` (in reading order). Synthetic scenes
    have no files: the hash is that of their defining parameters."""
    from sepico.data.synthetic import SyntheticStreets
    from sepico.train.data import ScaledViews, TestView, TrainingView

    if isinstance(dataset, ScaledViews):
        dataset = dataset.dataset
    if isinstance(dataset, SyntheticStreets):
        scenes = {"domain": dataset.domain, "split": dataset.split, "size": list(dataset.size),
                  "length": dataset.length, "seed": dataset.seed}
        return {"synthetic scenes": scenes, "sha256": _sha256_text(json.dumps(scenes, sort_keys=True))}
    if not isinstance(dataset, (TrainingView, TestView)):
        raise TypeError(f"no manifest for a {type(dataset).__name__}")
    folder = dataset.folder
    paths = list(folder.images) + list(folder.labels or []) + list(getattr(dataset, "companions", None) or [])
    lines, total = [], 0
    for path in paths:
        size = Path(path).stat().st_size
        total += size
        lines.append(f"{Path(path).relative_to(folder.root).as_posix()}\t{size}\n")
    return {"dataset": folder.name, "root": str(folder.root), "files": len(paths), "bytes": total,
            "sha256": _sha256_text("".join(lines))}


def data_manifest(datasets: dict) -> dict:
    """``dataset_manifest`` of each role (``source``, ``target``, ``target_test``) and one
    ``sha256`` over them all."""
    roles = {role: dataset_manifest(dataset) for role, dataset in datasets.items()}
    return roles | {"sha256": _sha256_text("".join(f"{role} {m['sha256']}\n" for role, m in roles.items()))}


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- the card

def result_record(result: dict) -> dict:
    """mIoU, per-class IoU by class name (null: a class neither labelled nor predicted), the
    protocols' mIoUs and the pixel accuracy of an evaluation result."""
    from sepico.data.cityscapes import CLASS_NAMES

    def name(c):
        return c if isinstance(c, str) else CLASS_NAMES[c] if c < len(CLASS_NAMES) else str(c)

    record = {"miou": _finite(result["miou"]), "classes": len(result["iou"]),
              "iou": {name(c): _finite(v) for c, v in result["iou"].items()}}
    for key in ("protocols", "pixel_accuracy", "images"):
        if key in result:
            record[key] = ({k: _finite(v) for k, v in result[key].items()} if isinstance(result[key], dict)
                           else _finite(result[key]))
    if "conditions" in result:
        record["conditions"] = {c: _finite(r["miou"]) for c, r in result["conditions"].items()}
    return record


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def make_card(command: str, cfg, *, weights: dict, data: dict, run: dict, measurements: dict, result: dict,
              device) -> dict:
    return {"format": CARD_FORMAT, "command": command,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "code": code_record(), "environment": environment(device), "config": cfg.to_dict(),
            "weights": weights, "data": data,
            "seeds": {"train.seed": cfg.train.seed, "data.seed": cfg.data.seed},
            "run": run, "measurements": measurements, "result": result}


def write_card(path, card: dict) -> None:
    """``path`` (the JSON) and the page beside it (``.md``), each written atomically."""
    path = Path(path)
    atomic_write(path, json.dumps(card, indent=2) + "\n")
    atomic_write(path.with_suffix(".md"), card_page(card))


def card_page(card: dict) -> str:
    """The short page: what ran, on what, from which weights and data, and the result."""
    code, env, run, m, res = card["code"], card["environment"], card["run"], card["measurements"], card["result"]
    lines = [_PAGE_MARK, f"# {card['command']}: {run.get('folder') or run.get('checkpoint')}", "",
             f"- created {card['created']}; sepico {code['version']}, commit {code['commit']} (uncommitted "
             f"changes: {code['changes']})",
             f"- Python {env['python']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
             f"driver {env['driver']}; {env['device']}; {env['torch_threads']} torch threads; kernel backend "
             f"{env['kernel_backend']}"]
    for key, value in card["weights"].items():
        lines.append(f"- {key}: " + (value if isinstance(value, str) else
                                     ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)))
    manifest = card["data"].get("manifest", {})
    for role, check in card["data"].get("check", {}).items():
        found = manifest.get(role, {})
        state = ("generated" if check["dataset"] == "synthetic" else "as published" if check["as_published"]
                 else "not as published: " + "; ".join(check["differences"]))
        lines.append(f"- {role}: {check['dataset']} ({state}; {check['read']})"
                     + (f"; file list sha256 {found['sha256']}" if "sha256" in found else ""))
    lines.append("- seeds: " + ", ".join(f"{k} {v}" for k, v in card["seeds"].items())
                 + "; " + ", ".join(f"{k} {v}" for k, v in run.items() if k not in ("folder", "checkpoint")))
    lines.append(f"- wall time {m['wall_time_s']:.1f} s; peak memory {m['peak_memory']['bytes'] / 2**30:.2f} GiB "
                 f"({m['peak_memory']['what']})")
    miou = "-" if res["miou"] is None else f"{res['miou']:.2f}"
    lines.append(f"- result: mIoU {miou} over {res['classes']} classes")
    lines += ["", "| class | IoU |", "|---|---|"]
    lines += [f"| {c} | {'-' if v is None else f'{v:.2f}'} |" for c, v in res["iou"].items()]
    lines += ["", "Everything, the whole configuration included, is in the JSON file beside this page; "
              "`sepico card A B` prints what differs between two cards."]
    return "\n".join(lines) + "\n"


def read_card(path) -> dict:
    """The card of a run folder (its ``card.json``) or a card file; ``ConfigError`` in one line
    when it is neither."""
    path = Path(path)
    file = path / CARD_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path}: no {CARD_FILE} (a run that ended before run cards were written has none)"
                          if path.is_dir() else f"{path}: no such file")
    try:
        card = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file}: not a sepico run card (not JSON: {' '.join(str(err).split())[:120]})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ConfigError(f"{file}: not a sepico run card (no \"format\": \"{CARD_FORMAT}\")")
    return card


def card_differences(a: dict, b: dict) -> tuple[list, list]:
    """(settings, results): the ``(key, value in a, value in b)`` that differ, dotted keys in card
    order; a key only one card has is compared with "absent"."""
    def differing(sections):
        flat_a, flat_b = _flatten({s: a.get(s) for s in sections}), _flatten({s: b.get(s) for s in sections})
        keys = list(flat_a) + [k for k in flat_b if k not in flat_a]
        return [(k, flat_a.get(k, "absent"), flat_b.get(k, "absent")) for k in keys
                if k not in NOT_COMPARED and flat_a.get(k, "absent") != flat_b.get(k, "absent")]

    return differing(SETTINGS), differing(RESULTS)


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out |= _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


def _is_card(kind: str):
    def ours(path: Path) -> bool:
        if path.suffix == ".md":
            try:
                with open(path, encoding="utf-8") as f:
                    return f.readline().strip() == _PAGE_MARK
            except (OSError, UnicodeDecodeError):
                return False
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return False
        return isinstance(card, dict) and card.get("format") == CARD_FORMAT and card.get("command") == kind
    return ours


# --------------------------------------------------------------------------- train, eval, ablate

def start_run_card(trainer) -> dict:
    """What a card needs from the start of a run (rank 0): the quick data check, the weights'
    hashes, the data manifest, the clock and the first iteration."""
    from sepico.train.data import check_run_data

    return {"started": time.perf_counter(), "first_iteration": trainer.iteration,
            "weights": weights_record(trainer.cfg, trainer.run_dir, trainer.pretrained),
            "data": {"check": check_run_data(trainer.cfg),
                     "manifest": data_manifest({"source": trainer.data.source, "target": trainer.data.target,
                                                "target_test": trainer.data.target_test})}}


def write_run_card(trainer, start: dict, result: dict) -> None:
    """``card.json`` and ``card.md`` in the run folder, at the end of a run."""
    cfg = trainer.cfg
    card = make_card("sepico train", cfg, weights=start["weights"], data=start["data"], device=trainer.device,
                     run={"folder": str(trainer.run_dir), "iterations": trainer.iteration,
                          "max_iters": cfg.train.max_iters, "started_at_iteration": start["first_iteration"],
                          "processes": trainer.world},
                     measurements={"wall_time_s": time.perf_counter() - start["started"],
                                   "peak_memory": peak_memory(trainer.device)},
                     result=result_record(result))
    write_card(Path(trainer.run_dir) / CARD_FILE, card)


def eval_card_path(args) -> Path | None:
    """Where ``sepico eval`` writes its card (``--card``, else beside ``--out``, else nowhere) and
    the page beside it, checked before any work: only an earlier card of ``sepico eval`` is
    replaced without --force, never the checkpoint or the result."""
    if args.export:
        if args.card:
            raise ConfigError("--card records an evaluation's result; --export scores nothing")
        return None
    if args.card is None and args.out is None:
        return None
    path = Path(args.card) if args.card else Path(args.out).with_name(Path(args.out).stem + ".card.json")
    if path.suffix != ".json":
        raise ConfigError(f"--card takes a .json file name (the page goes beside it as .md), got {path}")
    for target in (path, path.with_suffix(".md")):
        if args.out and os.path.abspath(target) == os.path.abspath(args.out):
            raise ConfigError(f"--card: {target} is the --out file; the card goes beside the result")
        check_output(target, what="--card", ours=_is_card("sepico eval"), force=args.force,
                     inputs=[args.checkpoint])
    return path


def write_eval_card(path: Path, args, cfg, report: dict, *, started: float, check: dict, device) -> None:
    from sepico.train.data import build_test_dataset

    weights = {"checkpoint": {"file": str(args.checkpoint), "sha256": file_sha256(args.checkpoint),
                              "weights": report["weights"], "iteration": report["iteration"]}}
    card = make_card("sepico eval", cfg, weights=weights, device=device,
                     data={"check": check, "manifest": data_manifest({"target_test": build_test_dataset(cfg)[0]})},
                     run={"checkpoint": str(args.checkpoint), "aug_test": bool(args.aug_test),
                          "mode": cfg.data.eval_mode},
                     measurements={"wall_time_s": time.perf_counter() - started, "peak_memory": peak_memory(device)},
                     result=result_record(report))
    write_card(path, card)


def write_ablation_card(out, config, overrides, iters, *, seeds, summary: dict, started: float) -> None:
    """``card.json`` and ``card.md`` in the ablation's folder: its base configuration (``config``
    with ``overrides`` and ``iters``), seeds and the mean mIoU of every variant; each run's own
    card is in ``runs/<name>/``."""
    import torch

    from sepico.train.config import load_config

    cfg = load_config(config, list(overrides) + ([f"train.max_iters={iters}"] if iters else []))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.train.device == "auto" else cfg.train.device
    rows = summary["rows"]
    result = {"variants": {r["variant"] + ("" if r["temperature"] is None else f" T={r['temperature']:g}"):
                           {"miou_mean": _finite(r["miou_mean"]), "miou_std": _finite(r["miou_std"]),
                            "seeds": r["seeds"]} for r in rows}}
    if rows:  # the best variant's
        result |= result_record({"miou": rows[0]["miou_mean"],
                                 "iou": {int(c): v for c, v in rows[0]["iou_mean"].items()}})
    card = make_card("sepico ablate", cfg, weights=weights_record(cfg), device=device,
                     data={"runs": "each run's data check and manifest are in runs/<name>/card.json"},
                     run={"folder": str(out), "seeds": list(seeds), "runs": sum(len(r["seeds"]) for r in rows),
                          "iterations_per_run": cfg.train.max_iters},
                     measurements={"wall_time_s": time.perf_counter() - started,
                                   "peak_memory": peak_memory(device) | {
                                       "what": "of the ablation's own process (runs in --jobs processes not counted)"},
                                   "training_time_s": summary["wall_time_s"]},
                     result=result)
    write_card(Path(out) / CARD_FILE, card)


# --------------------------------------------------------------------------- sepico card A B

def add_arguments(p) -> None:
    p.add_argument("first", metavar="A", help="a run folder (its card.json) or a card file")
    p.add_argument("second", metavar="B", help="the run folder or card to compare it with")


def run_from_args(args) -> int:
    a, b = read_card(args.first), read_card(args.second)
    settings, results = card_differences(a, b)
    print(f"A: {args.first} ({a['command']}, {a['created']})\nB: {args.second} ({b['command']}, {b['created']})")
    for title, found in (("settings", settings), ("results", results)):
        if not found:
            print(f"{title}: the same")
            continue
        print(f"{title} that differ ({len(found)}):")
        width = max(len(k) for k, _, _ in found)
        for key, va, vb in found:
            print(f"  {key:<{width}}  A {_shown(va)}  B {_shown(vb)}")
    return 0


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return {"source": f"{path} unreadable ({type(err).__name__})"}


__all__ = ["CARD_FILE", "CARD_FORMAT", "add_arguments", "card_differences", "card_page", "code_record",
           "data_manifest", "dataset_manifest", "environment", "eval_card_path", "git_commit", "make_card",
           "read_card", "result_record", "run_from_args", "start_run_card", "weights_record", "write_ablation_card",
           "write_card", "write_eval_card", "write_run_card"]

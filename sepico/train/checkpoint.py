"""Checkpoints that survive interruption and run no foreign code.

Written to a temporary file, flushed to disk, then renamed over the final name (atomic on POSIX),
so a crash leaves either the old or the new file. Read with ``torch.load(weights_only=True)``:
a checkpoint holds tensors and plain containers only (RNG states included), and a file holding
anything else is refused in one line that names it, before any of it runs.
"""
from __future__ import annotations

import os
import pickle
import re
import sys
from pathlib import Path

import torch

from sepico.errors import ConfigError

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
_TMP = re.compile(r"^\.ckpt_\d{8}\.pt\.tmp$")


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, unreadable or holds more than tensors and containers."""


def read_checkpoint(path, map_location="cpu") -> dict:
    """The dict a checkpoint holds, read without running any pickled code."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a checkpoint file (e.g. {path}/ckpt_*.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a readable checkpoint (an empty file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        detail = found.group(1).strip()[:160] if found else _first_line(err)
        # "Unsupported global: GLOBAL x.y", or for a blocked module (os, posix, subprocess, ...)
        # "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
        foreign = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(err))
        if foreign is None:  # not a pickle of tensors and containers at all
            raise CheckpointError(f"{path}: not a readable checkpoint ({detail})") from None
        raise CheckpointError(f"{path}: refused: it holds more than tensors and plain containers (it "
                              f"calls {foreign.group(1)}); nothing in it was run") from None
    except Exception as err:  # truncated, empty, random bytes, not a torch file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: "
                              f"{_first_line(err)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a sepico checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:160]


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files a save that was killed left behind; returns them."""
    run_dir = Path(run_dir)
    stale = [p for p in run_dir.iterdir() if _TMP.match(p.name)] if run_dir.is_dir() else []
    for p in stale:
        p.unlink()
    return stale


def newest_readable_checkpoint(run_dir: Path, map_location="cpu") -> tuple[Path, dict]:
    """(path, state) of the newest checkpoint that loads; each newer one that does not is named in a
    warning line and skipped. CheckpointError when none loads."""
    bad = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, read_checkpoint(path, map_location)
        except CheckpointError as err:
            print(f"warning: skipping {err}", file=sys.stderr, flush=True)
            bad.append(path.name)
    detail = f" that loads (unreadable: {', '.join(bad)})" if bad else ""
    raise CheckpointError(f"--resume: no checkpoint in {run_dir}{detail}")


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / f"ckpt_{iteration:08d}.pt"


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk
    finally:
        os.close(fd)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files are never listed)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None

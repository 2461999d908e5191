"""Checkpoints that survive interruption and run no foreign code, and the run folder they live in.

Written to a temporary file created exclusively in the run folder, flushed to disk, then renamed
over the final name (``sepico.files.atomic_write``), so a crash leaves either the old or the new
file. Read with ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain containers
only (RNG states included; numpy scalars, as in an mmcv ``meta``, are allowed as plain data), and a
file holding anything else is refused in one line that names it, before any of it runs.

A run folder (``RunFolder``) is claimed by one process for the length of a run: an exclusive
``flock`` on its marker file ``.sepico-run`` (released by the system when the process ends, however
it ends), so a second ``sepico train`` into the same folder is refused while the first one runs.
The marker, or a ``config.json`` that parses as a sepico run configuration, is what makes a folder
a run; ``--overwrite`` removes only the files the run layout names (``RUN_FILES`` and checkpoints).
A resumed run may change only ``RESUMABLE_FIELDS`` of its configuration (``changed_fields``).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import re
import socket
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from sepico.errors import ConfigError
from sepico.files import atomic_write, remove_temporaries

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
MARKER = ".sepico-run"
RUN_FILES = ("config.json", "pretrained.json", "metrics.jsonl", "eval.json", "train.log", "curves.png",
             "card.json", "card.md")
# What weights-only loading may rebuild beyond tensors and containers: numpy scalars and their
# dtypes (mmcv's runner stores some in a checkpoint's meta), under numpy 1's and numpy 2's names.
_NUMPY_SCALARS = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np._core.multiarray.scalar,
                  np.dtype] + [type(np.dtype(kind)) for kind in "?bBhHiIlLqQefdgFDG"]


# What a resumed run may change: nothing that the iterations already computed depend on.
RESUMABLE_FIELDS = ("train.max_iters", "train.log_interval", "train.eval_interval", "train.checkpoint_interval",
                    "train.keep_checkpoints", "train.device", "train.run_dir", "data.num_workers")


def changed_fields(stored: dict, current: dict, ignore=RESUMABLE_FIELDS) -> list[str]:
    """``section.field`` names whose values differ between two config dicts, those in ``ignore``
    (by default what a resumed run may change) aside."""
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a or {}) | set(b or {}))
                    if _plain((a or {}).get(k)) != _plain((b or {}).get(k)) and f"{key}.{k}" not in ignore]
        elif _plain(a) != _plain(b) and key not in ignore:
            out.append(key)
    return out


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


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
        with torch.serialization.safe_globals(_NUMPY_SCALARS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warning on legacy (non-zip) files: the errors below say it all
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
    """Delete the temporary files that a killed write of a run file (a checkpoint, the config,
    the metrics, ...) left behind; returns them."""
    names = "|".join(re.escape(name) for name in RUN_FILES)
    return remove_temporaries(run_dir, rf"ckpt_\d{{8}}\.pt|{names}")


def newest_readable_checkpoint(run_dir: Path, map_location="cpu") -> tuple[Path, dict, list[Path]]:
    """(path, state, unreadable) of the newest checkpoint that loads; each newer one that does not
    is named in a warning line, skipped and listed in ``unreadable``. CheckpointError when none loads."""
    bad = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, read_checkpoint(path, map_location), bad
        except CheckpointError as err:
            print(f"warning: skipping {err}", file=sys.stderr, flush=True)
            bad.append(path)
    detail = f" that loads (unreadable: {', '.join(p.name for p in bad)})" if bad else ""
    raise CheckpointError(f"--resume: no checkpoint in {run_dir}{detail}")


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / f"ckpt_{iteration:08d}.pt"


def atomic_save(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (``sepico.files.atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files are never listed)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: Path, keep: int, *, newest: Path, unreadable=()) -> list[Path]:
    """Delete all but the ``keep`` highest-numbered checkpoints, never ``newest`` (the one just
    written) and never counting or deleting a file in ``unreadable`` (checkpoints a resume could not
    load: a kept slot must hold a checkpoint that loads). Returns the deleted files."""
    unreadable = {Path(p).name for p in unreadable}
    counted = [p for p in reversed(list_checkpoints(run_dir)) if p.name not in unreadable and p != Path(newest)]
    deleted = counted[max(keep - 1, 0):]
    for old in deleted:
        old.unlink()
    return deleted


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def run_files(run_dir: Path) -> list[Path]:
    """The files of a run in ``run_dir`` that ``--overwrite`` removes: its config, metrics, log,
    result, curves, run card and checkpoints (not its class-statistics cache, which stays valid)."""
    run_dir = Path(run_dir)
    return [p for p in (run_dir / name for name in RUN_FILES) if p.is_file()] + list_checkpoints(run_dir)


def is_run_config(path: Path) -> bool:
    """A ``config.json`` that parses as a sepico run configuration."""
    from sepico.train.config import from_dict

    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not {"data", "model", "train"} <= set(data):
            return False
        from_dict(data)
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    return True


_HELD: dict[str, list] = {}  # run folder -> [file descriptor, claims]: this process's claims


class RunFolder:
    """The folder of one run, claimed by one process (``claim``) until ``release`` or its end.

    ``claim`` takes an exclusive, non-blocking ``flock`` on ``MARKER`` and writes the process id
    and host into it; a folder another live process holds is refused in one line naming that
    process. A lock held by a process that died (SIGKILL included) is released by the system, so
    no stale lock can remain. Claims from one process nest (the lock is released with the last one).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._key = None
        self._created_marker = self._created_folder = False

    def is_run(self) -> bool:
        """The folder holds a sepico run: the marker of an earlier run (not just this claim's), or a
        config.json that parses as a run's."""
        earlier = (self.path / MARKER).is_file() and not self._created_marker
        return earlier or is_run_config(self.path / "config.json")

    def foreign_files(self) -> list[str]:
        """Files with the names of the run layout that are not a sepico run's (in a folder that is
        not a run): a run started here would write over them."""
        if self.is_run():
            return []
        return sorted(p.name for p in run_files(self.path))

    def claim(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run folder {self.path} is a file; train.run_dir names a folder")
        self._created_folder = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            self._key = key
            return
        marker = self.path / MARKER
        created = not os.path.lexists(marker)
        try:
            fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise ConfigError(f"{marker}: cannot create the run's marker ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").split()
            os.close(fd)
            who = f" (pid {holder[0]} on {holder[1]})" if len(holder) >= 2 else ""
            raise ConfigError(f"{self.path} is in use by another sepico run{who}; wait for it to end, or "
                              "choose another train.run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        self._key = key
        self._created_marker = created

    def release(self, *, remove_marker: bool = False) -> None:
        """Give up this claim; ``remove_marker``: the claim was refused after all (the folder is
        not a run), so the marker this claim created goes too."""
        if self._key is None:
            return
        held = _HELD[self._key]
        held[1] -= 1
        if held[1] == 0:
            os.close(held[0])
            del _HELD[self._key]
            if remove_marker and self._created_marker:
                (self.path / MARKER).unlink(missing_ok=True)
                if self._created_folder:
                    with contextlib.suppress(OSError):
                        self.path.rmdir()  # only when empty
        self._key = None

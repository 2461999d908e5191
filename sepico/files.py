"""Writing files without losing anything of the user's: every file a command writes goes through here.

- ``atomic_write(path, data)``: the bytes go to a temporary file created exclusively
  (``tempfile.mkstemp``: a fresh random name, ``O_CREAT | O_EXCL``) in the target's own folder, are
  flushed to disk, and the temporary is renamed over ``path`` (``os.replace``, atomic on POSIX). A
  crash leaves the old file or the new one, never half of one; a symlink at ``path`` is replaced
  as a link, never written through, so nothing outside the folder is touched.
- ``open_append(path)``: a log opened for appending without following a symlink.
- ``check_output(path, ...)``: whether a command may write ``path``. An input of the same command
  is never replaced; a weight file (a checkpoint) is never replaced by a result; a link, a folder
  or a file that is not an earlier result of the same command (``ours``) is refused unless the
  user gave ``--force``. Refusals are one line naming the file (``OutputError``).
- ``remove_temporaries(folder, name)``: the temporaries that a write killed mid-way left.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from sepico.errors import OutputError

# .NAME.<mkstemp's 8 characters>.tmp, and .NAME.tmp (the fixed name of earlier versions)
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)(\.[A-Za-z0-9_]{8})?\.tmp$")


def atomic_write(path, data: bytes | str | Callable) -> Path:
    """Write ``data`` (bytes, text, or a function that writes into a binary file object) to
    ``path`` atomically; the folder must exist. Returns ``path``."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{path} is a folder; give a file name")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)
    return path


def open_append(path):
    """``path`` opened for appending text (created when absent); a symlink there is refused
    (``O_NOFOLLOW``), so a log never grows a file outside its folder."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise OutputError(f"{path}: cannot append to it ({err.strerror}{'; it is a link' if os.path.islink(path) else ''})") from None
    return os.fdopen(fd, "a")


def remove_temporaries(folder, name_pattern: str) -> list[Path]:
    """Delete the regular files in ``folder`` that ``atomic_write`` left while writing a file whose
    name matches ``name_pattern`` (a regular expression); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for p in folder.iterdir():
        found = _TEMPORARY.match(p.name)
        if found and re.fullmatch(name_pattern, found.group("name")) and p.is_file() and not p.is_symlink():
            p.unlink()
            stale.append(p)
    return stale


def check_output(path, *, what: str, ours: Callable[[Path], bool] | None = None, force: bool = False,
                 inputs=()) -> None:
    """Raise ``OutputError`` unless ``path`` may be written: absent, or an earlier result of the same
    command (``ours(path)`` true), or, with ``force``, any file that is neither an input (``inputs``,
    compared as files, links resolved) nor a weight file. ``what`` names the option in messages."""
    path = Path(path)
    if not os.path.lexists(path):
        if not path.parent.is_dir():
            raise OutputError(f"{what}: no folder {path.parent} to write {path.name} into")
        return
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{what}: {path} is a folder; give a file name")
    for item in inputs:
        if same_file(path, item):
            raise OutputError(f"{what}: {path} is also an input of this command; it is never replaced")
    if path.is_symlink():
        if force:
            return
        raise OutputError(f"{what}: {path} is a link; a result never replaces it (--force replaces the link "
                          "itself, never what it points to)")
    if is_weight_file(path):
        raise OutputError(f"{what}: {path} holds model weights (a checkpoint); a result never replaces it")
    if ours is not None and ours(path):
        return
    if not force:
        raise OutputError(f"{what}: {path} exists and is not an earlier result of this command; choose "
                          "another name, or --force to replace it")


def is_weight_file(path) -> bool:
    """A torch file (zip archive with a pickle inside, or a bare pickle), or safetensors."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        if head.startswith(b"PK\x03\x04"):
            with zipfile.ZipFile(path) as archive:
                return any(n.endswith("data.pkl") for n in archive.namelist())
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            return True  # a pickle (torch's legacy format)
        return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**30
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def same_file(a, b) -> bool:
    """``a`` and ``b`` are one file (links resolved); false when either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk
    finally:
        os.close(fd)


__all__ = ["atomic_write", "check_output", "is_weight_file", "open_append", "remove_temporaries", "same_file"]

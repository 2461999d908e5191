"""The measured pages of ``docs/``: blocks that the commands producing their figures rewrite.

A page holds, for each command, a block

    <!-- generated: NAME -->
    ...the command's table...
    <!-- end: NAME -->

and ``write_block(page, NAME, text)`` replaces what lies between the two markers (the rest of the
page, its prose, stays as written), or appends the block at the end of a page that has none.
The page is rewritten atomically (a temporary file, then a rename). Used by ``sepico.demo
--docs``, ``sepico ablate --docs``, ``python -m bench.memory_losses --docs`` and the benchmark
suites' ``--bench-docs``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from sepico.files import atomic_write


def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"block name must be letters, digits, '.', '_' or '-', got {name!r}")
    return f"<!-- generated: {name} -->", f"<!-- end: {name} -->"


def read_block(page: str | os.PathLike, name: str) -> str | None:
    """The text of block ``name`` of ``page``, or None when the page has no such block."""
    begin, end = _markers(name)
    text = Path(page).read_text()
    if begin not in text:
        return None
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(end) < text.index(begin):
        raise ValueError(f"{os.fspath(page)}: block {name!r} must appear once, '{begin}' before '{end}'")
    return text[text.index(begin) + len(begin):text.index(end)].strip("\n")


def write_block(page: str | os.PathLike, name: str, body: str) -> None:
    """Replace block ``name`` of ``page`` with ``body`` (appended when the page has no block)."""
    page = Path(page)
    begin, end = _markers(name)
    block = f"{begin}\n{body.strip(chr(10))}\n{end}"
    if page.exists() and read_block(page, name) is not None:
        text = page.read_text()
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = page.read_text().rstrip("\n") + "\n\n" if page.exists() else ""
        text += block + "\n"
    atomic_write(page, text)

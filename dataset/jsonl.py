"""Append-only JSON Lines files that survive a crash: whole lines, fsynced, a cut-off tail repaired.

Batch pre-annotation, benchmark predictions and the review log are all written this way, so that a
process killed at any moment (``kill -9`` included) leaves a file whose every complete line is a
record and whose only damage, a last line without its newline, is cut off on the next run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def repair_jsonl(path: Path) -> int:
    """Cut a last line that a crash left without its newline; return the bytes dropped."""
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Find the last newline, reading backwards in blocks.
        pos, keep = size, 0
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def jsonl_line(entry: dict) -> str:
    """One JSON line, UTF-8 where possible. A file name that is not valid UTF-8 (say ``caf\\xe9.png``
    from an old archive) reaches Python as lone surrogates, which UTF-8 cannot encode: such an entry
    is written with ``\\udcXX`` escapes instead, still valid JSON and UTF-8, and lossless
    (``os.fsencode(entry["image"])`` gives the original bytes back)."""
    text = json.dumps(entry, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(entry, ensure_ascii=True)
    return text + "\n"


def append_lines(f, entries: list[dict]) -> None:
    """Append whole lines and make them durable before the next batch starts."""
    if not entries:
        return
    f.write("".join(map(jsonl_line, entries)))
    f.flush()
    os.fsync(f.fileno())

"""Reading the merged data set written by process_image.py (qa.json + images.json)."""

from __future__ import annotations

import json
from pathlib import Path


def load_merged(qa_file: str | Path) -> tuple[list[dict], dict[int, Path]]:
    """Return the records and a map image id -> absolute image path.

    ``images.json`` is read from the directory holding ``qa_file``; its paths are relative to
    that directory (absolute paths stay as they are).
    """
    qa_file = Path(qa_file)
    images_file = qa_file.parent / "images.json"
    for path in (qa_file, images_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (run process_image.py first)")
    try:
        records = json.loads(qa_file.read_text(encoding="utf-8"))
        table = json.loads(images_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{qa_file.parent}: unreadable merged data: {exc}") from None
    if not isinstance(records, list):
        raise ValueError(f"{qa_file}: expected a JSON list of records")
    base = qa_file.parent.resolve()  # once: resolving every image path costs seconds on 100k images
    images = {int(k): base / v["path"] for k, v in table.items()}
    return records, images

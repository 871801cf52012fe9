"""The one reader of the merged data set written by process_image.py (``qa.json`` + ``images.json``).

Training, batch inference, evaluation and the demo all read merged data through here, so a
record's image and its question/answer turns are found the same way everywhere. Only the standard
library is used: the scripts read their inputs before they import torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from config import DEFAULT_IMAGE_TOKEN
from errors import UserError

IMAGES_FILE = "images.json"


class MergedDataError(UserError, ValueError):
    """Merged data that is missing or cannot be read; the message names the file."""


def read_image_table(table_file: str | Path) -> dict[str, Path]:
    """``images.json`` -> ``{str(image_id): path}``, each path joined to the table's directory."""
    table_file = Path(table_file)
    if not table_file.is_file():
        raise MergedDataError(f"{table_file}: not found (run process_image.py first)")
    try:
        table = json.loads(table_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MergedDataError(f"{table_file}: unreadable image table: {' '.join(str(exc).split())}") from None
    if not isinstance(table, dict):
        raise MergedDataError(f"{table_file}: expected a JSON object of image id -> {{path, source}}")
    base = str(table_file.parent)
    return {
        str(key): Path(os.path.normpath(os.path.join(base, entry["path"])))
        for key, entry in table.items()
        if isinstance(entry, dict) and isinstance(entry.get("path"), str)
    }


def load_merged(qa_file: str | Path) -> tuple[list[Any], dict[str, Path]]:
    """The records of a merged ``qa.json`` and the image table of the ``images.json`` beside it
    (see :func:`read_image_table`). Raises :class:`MergedDataError` naming what is wrong."""
    qa_file = Path(qa_file)
    table_file = qa_file.parent / IMAGES_FILE
    if not qa_file.is_file():
        raise MergedDataError(f"{qa_file}: not found (run process_image.py first)")
    if not table_file.is_file():
        raise MergedDataError(f"{qa_file}: no {IMAGES_FILE} beside it (expected {table_file}; run process_image.py)")
    try:
        records = json.loads(qa_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MergedDataError(f"{qa_file}: unreadable merged data: {' '.join(str(exc).split())}") from None
    if not isinstance(records, list):
        raise MergedDataError(f"{qa_file}: expected a JSON list of records")
    return records, read_image_table(table_file)


def image_path(record: Mapping, images: Mapping[str, Path]) -> Path | None:
    """The image file of a record, or None when its ``image_id`` is not in the table."""
    return images.get(str(record.get("image_id")))


def first_turn_question(record: Mapping, image_token: str = DEFAULT_IMAGE_TOKEN) -> str:
    """The first user message without the image placeholder ("" when there is none)."""
    for message in record.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", "")).replace(image_token, "").strip()
    return ""


def first_turn_answer(record: Mapping) -> str | None:
    """The first assistant message, stripped, or None."""
    for message in record.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "assistant":
            return str(message.get("content", "")).strip()
    return None

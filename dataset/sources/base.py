"""What every raw-format reader shares: the errors, the candidate record, file reading, field helpers.

A reader turns one raw record into a :class:`Candidate` (chat messages with the image placeholder,
one image file) or raises :class:`BadRecord` with a counted reason; the checks every format shares
(turn order, one placeholder, duplicates, the image file) run afterwards in ``dataset.merge``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from errors import UserError, read_utf8

# Raw LLaVA speaker -> chat role. "user"/"assistant" are accepted too (some converted dumps use them).
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
RAW_IMAGE_TAG = "<image>"
# Keys copied unchanged from a raw record when present (evaluation ground truth).
PASSTHROUGH_KEYS = ("answers", "question_type")


class Source:
    """A raw format: ``read`` the file into (position, raw) pairs, ``parse`` one raw item into a
    :class:`Candidate`, name a position for the report (``where``). The default reads a JSON list."""

    def __init__(self, image_token: str, rng: random.Random, templates: list[str]) -> None:
        self.image_token, self.rng, self.templates = image_token, rng, templates

    def read(self, path: str) -> list[tuple[int, Any]]:
        return list(enumerate(read_json_list(path)))

    def parse(self, position: int, raw: Any) -> "Candidate":
        raise NotImplementedError

    @staticmethod
    def where(position: int) -> str:
        return f"record #{position}"


class MergeError(UserError):
    """A problem that stops the run; the message names the file (and the record, if any)."""


class BadRecord(Exception):
    """One raw record that cannot be used; ``reason`` is the counted skip category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Candidate:
    """A raw record converted to chat messages, before the checks shared by all formats."""

    raw_id: str
    image: str
    messages: list[dict[str, str]]
    extra: dict[str, Any]
    # Counted in the source's stats when the record is accepted (e.g. "accepted" / "edited").
    tally: str | None = None
    # A dispreferred answer to the last assistant turn: the record also becomes a preference pair.
    rejected: str | None = None


def message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def record_id(entry: dict, fallback: str) -> str:
    value = entry.get("id")
    if value is None:
        return fallback
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRecord("missing_field", f"'id' must be a string or an integer, got {value!r}")
    return str(value)


def image_name(value: Any, key: str) -> str:
    """The one image file of a record; a list is accepted when it holds exactly one path."""
    if isinstance(value, list):
        if len(value) != 1:
            raise BadRecord("not_single_image", f"'{key}' lists {len(value)} images, exactly one is supported")
        value = value[0]
    if isinstance(value, dict):  # ms-swift also accepts {"path": ...}
        value = value.get("path")
    if not isinstance(value, str) or not value.strip():
        raise BadRecord("missing_field", f"'{key}' must be an image file name, got {value!r}")
    return value


def read_text(path: str) -> str:
    """Whole file as text; unreadable or non-UTF-8 files are a MergeError naming file and line."""
    try:
        return read_utf8(path, "annotations file")
    except UserError as exc:
        raise MergeError(str(exc)) from None


def read_json_list(path: str) -> list:
    """A JSON file whose top level is the list of records."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MergeError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise MergeError(f"{path}: expected a JSON list of records at the top level, got {type(data).__name__}")
    return data


def read_jsonl_lines(path: str) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines. Split on "\\n" only: JSON strings may
    hold U+2028 and friends, which str.splitlines would treat as line breaks."""
    text = read_text(path)
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]

"""ms-swift JSONL: one ``{"messages": [{role, content}], "images": [path]}`` object per line."""

from __future__ import annotations

import json

from dataset.sources.base import (
    PASSTHROUGH_KEYS,
    RAW_IMAGE_TAG,
    BadRecord,
    Candidate,
    Source,
    image_name,
    message,
    read_jsonl_lines,
    record_id,
)


class SwiftJsonlSource(Source):
    def read(self, path: str) -> list[tuple[int, str]]:
        return read_jsonl_lines(path)

    def parse(self, line_no: int, line: str) -> Candidate:
        return parse_swift(line, line_no, self.image_token)

    @staticmethod
    def where(line_no: int) -> str:
        return f"line {line_no}"


def parse_swift(line: str, line_no: int, image_token: str) -> Candidate:
    """One ms-swift JSONL line ``{"messages": [{role, content}], "images": [path]}`` with exactly
    one image (``image`` accepted too); records with audio or video are not for this model."""
    return swift_entry(json_object(line), line_no, image_token)


def json_object(line: str) -> dict:
    """One JSONL line as a JSON object, or a counted :class:`BadRecord`."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadRecord("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(entry, dict):
        raise BadRecord("missing_field", f"line is not a JSON object: {type(entry).__name__}")
    return entry


def swift_entry(entry: dict, line_no: int, image_token: str, key: str = "messages") -> Candidate:
    """An ms-swift record already parsed; ``key`` names its messages (``rejected_messages`` for
    the rejected side of a preference record)."""
    raw_id = record_id(entry, f"line{line_no}")
    messages = entry.get(key)
    if not isinstance(messages, list) or not messages:
        raise BadRecord("missing_field", f"'{key}' must be a non-empty list")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRecord("missing_field", f"{key}[{k}] needs a string 'role' and 'content'")
    if (
        entry.get("audios")
        or entry.get("videos")
        or any("<audio>" in m["content"] or "<video>" in m["content"] for m in messages)
    ):
        raise BadRecord("audio_or_video", "record uses audio or video")
    image_key = "images" if "images" in entry else "image"
    images = entry.get(image_key)
    if not images:
        raise BadRecord("no_image", "text-only record (no 'images')")
    image = image_name(images, image_key)
    converted = [message(m["role"], m["content"].replace(RAW_IMAGE_TAG, image_token)) for m in messages]
    extra = {k: entry[k] for k in PASSTHROUGH_KEYS if k in entry}
    return Candidate(raw_id, image, converted, extra)

"""LLaVA-format JSON (LLaVA-Instruct ``complex_reasoning_77k.json``, ``detail_23k.json``, mix665k):
``[{id, image, conversations: [{from, value}]}]``, ``<image>`` becoming the image placeholder."""

from __future__ import annotations

from typing import Any

from dataset.sources.base import (
    LLAVA_ROLES,
    PASSTHROUGH_KEYS,
    RAW_IMAGE_TAG,
    BadRecord,
    Candidate,
    Source,
    image_name,
    message,
    record_id,
)


class LlavaSource(Source):
    def parse(self, position: int, raw: Any) -> Candidate:
        return parse_llava(raw, position, self.image_token)


def parse_llava(entry: Any, index: int, image_token: str) -> Candidate:
    """``{id, image, conversations: [{from, value}]}``; ``<image>`` becomes ``image_token``."""
    if not isinstance(entry, dict):
        raise BadRecord("missing_field", f"record is not a JSON object: {type(entry).__name__}")
    raw_id = record_id(entry, f"#{index}")
    if entry.get("image") is None:
        raise BadRecord("no_image", "text-only record (no 'image')")
    image = image_name(entry["image"], "image")
    turns = entry.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRecord("missing_field", "'conversations' must be a non-empty list of turns")
    messages = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not all(isinstance(turn.get(name), str) for name in ("from", "value")):
            raise BadRecord("missing_field", f"conversations[{k}] needs a string 'from' and 'value'")
        role = LLAVA_ROLES.get(turn["from"])
        if role is None:
            raise BadRecord("bad_turn_order", f"conversations[{k}]: unknown speaker {turn['from']!r}")
        messages.append(message(role, turn["value"].replace(RAW_IMAGE_TAG, image_token)))
    extra = {key: entry[key] for key in PASSTHROUGH_KEYS if key in entry}
    return Candidate(raw_id, image, messages, extra)

"""AI Challenger captions: ``{image_id, caption: [five captions]}`` -> one question and one caption.

Per image, one caption and one of ``data.question_templates`` are drawn from the merge's seeded
RNG (caption first), so the choice is reproducible and independent of which images exist.
"""

from __future__ import annotations

import random
from typing import Any

from dataset.sources.base import LLAVA_ROLES, BadRecord, Candidate, Source, image_name, message


class AIChallengerSource(Source):
    def parse(self, position: int, raw: Any) -> Candidate:
        return parse_ai_challenger(raw, self.rng, self.templates)


def _captions(entry: dict) -> list[str]:
    """Candidate captions of an AI Challenger record: ``caption`` (list or string) or
    ``conversations`` (strings, or LLaVA-style turns whose gpt/assistant values are captions).
    Captions are stripped (some raw ones carry newlines); empty ones are dropped."""
    key = "caption" if "caption" in entry else "conversations"
    raw = entry.get(key)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise BadRecord("missing_field", "needs 'caption' (or 'conversations'): a list of captions")
    texts = raw if all(type(item) is str for item in raw) else _caption_texts(raw, key)
    captions = [text for text in map(str.strip, texts) if text]
    if not captions:
        raise BadRecord("empty_caption", f"'{key}' holds no non-empty caption")
    return captions


def _caption_texts(items: list, key: str) -> list[str]:
    """The caption strings of a list mixing strings and LLaVA-style turns."""
    texts = []
    for k, item in enumerate(items):
        if isinstance(item, dict):
            speaker = item.get("from", item.get("role"))
            if not isinstance(speaker, str) or LLAVA_ROLES.get(speaker) != "assistant":
                continue
            item = item.get("value", item.get("content"))
        if not isinstance(item, str):
            raise BadRecord("missing_field", f"'{key}'[{k}] is not a caption string: {item!r}")
        texts.append(item)
    return texts


def parse_ai_challenger(entry: Any, rng: random.Random, templates: list[str]) -> Candidate:
    """One caption and one question template per image, both drawn from ``rng`` (caption first).
    The draws happen before any file-system check, so a missing image never shifts the choices
    made for the other images."""
    if not isinstance(entry, dict):
        raise BadRecord("missing_field", f"record is not a JSON object: {type(entry).__name__}")
    key = "image_id" if "image_id" in entry else "image"
    image = image_name(entry.get(key), key)
    captions = _captions(entry)
    caption = rng.choice(captions)
    template = rng.choice(templates)
    return Candidate(image, image, [message("user", template), message("assistant", caption)], {})

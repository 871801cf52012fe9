"""Preference pairs for ``train.stage: dpo``: two answers to one image and question, one preferred.

JSONL, one pair per line, in any of these layouts:

- ms-swift: ``{"messages": [..., {"role": "assistant", "content": CHOSEN}], "rejected_response":
  REJECTED, "images": [path]}`` (what the review loop writes to ``preferences.jsonl``);
- newer ms-swift: ``rejected_messages`` (the same conversation ending in the rejected answer) and
  optionally ``rejected_images``, which must name the same image;
- RLAIF-V, flat: ``{"image": path, "question": Q, "chosen": A, "rejected": B}``.

The merged record is the chosen conversation plus ``"rejected"``: the rejected answer to its last
user turn. Both answers share the prompt and the image, so training runs the tower once per pair.
"""

from __future__ import annotations

from dataset.sources.base import RAW_IMAGE_TAG, BadRecord, Candidate, Source, image_name, message, read_jsonl_lines, record_id
from dataset.sources.swift_jsonl import json_object, swift_entry


class PreferenceSource(Source):
    def read(self, path: str) -> list[tuple[int, str]]:
        return read_jsonl_lines(path)

    def parse(self, line_no: int, line: str) -> Candidate:
        return parse_preference(json_object(line), line_no, self.image_token)

    @staticmethod
    def where(line_no: int) -> str:
        return f"line {line_no}"


def _text(entry: dict, key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRecord("missing_field", f"'{key}' must be a non-empty string, got {value!r}")
    return value.strip()


def parse_preference(entry: dict, line_no: int, image_token: str) -> Candidate:
    if "messages" not in entry and "chosen" in entry:  # RLAIF-V
        question = _text(entry, "question")
        if RAW_IMAGE_TAG not in question:
            question = f"{RAW_IMAGE_TAG}\n{question}"
        candidate = Candidate(record_id(entry, f"line{line_no}"), image_name(entry.get("image"), "image"),
                              [message("user", question.replace(RAW_IMAGE_TAG, image_token)),
                               message("assistant", _text(entry, "chosen"))], {})
        rejected = _text(entry, "rejected")
    else:
        candidate = swift_entry(entry, line_no, image_token)
        # A pair shares one image, whichever way its rejected answer is written.
        if "rejected_images" in entry and image_name(entry["rejected_images"], "rejected_images") != candidate.image:
            raise BadRecord("images_differ", "'rejected_images' names another image than 'images'; a pair shares one image")
        if "rejected_response" in entry:
            rejected = _text(entry, "rejected_response")
        elif "rejected_messages" in entry:
            other = swift_entry(entry, line_no, image_token, key="rejected_messages")
            if other.messages[:-1] != candidate.messages[:-1]:
                raise BadRecord("prompts_differ", "'rejected_messages' and 'messages' differ before the last answer")
            rejected = other.messages[-1]["content"].strip()
        else:
            raise BadRecord("missing_field", "no rejected answer ('rejected_response' or 'rejected_messages')")
        if not candidate.messages or candidate.messages[-1]["role"] != "assistant":
            raise BadRecord("bad_turn_order", "the chosen conversation does not end with an assistant answer")
    chosen = candidate.messages[-1]["content"].strip()
    if not chosen or not rejected:
        raise BadRecord("missing_field", "an empty chosen or rejected answer")
    if chosen == rejected:
        raise BadRecord("same_answers", f"chosen and rejected are the same answer: {chosen[:60]!r}")
    candidate.extra["rejected"] = rejected
    return candidate

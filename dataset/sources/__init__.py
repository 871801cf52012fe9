"""Raw data formats ``process_image.py`` reads, one module each, found by ``data.sources[].type``.

A source is a :class:`Source` subclass: built with ``(image_token, rng, question_templates)``, it
offers ``read(path)`` (the raw items as ``(position, raw)`` pairs; an unreadable file is a
:class:`MergeError`), ``parse(position, raw)`` (one :class:`Candidate`, or :class:`BadRecord` with a
counted reason) and ``where(position)`` (how a report names the item). Adding a format is one
module plus one line below.
"""

from __future__ import annotations

from dataset.sources.ai_challenger import AIChallengerSource
from dataset.sources.base import BadRecord, Candidate, MergeError, Source
from dataset.sources.llava import LlavaSource
from dataset.sources.preference import PreferenceSource
from dataset.sources.reviewed import ReviewedSource
from dataset.sources.swift_jsonl import SwiftJsonlSource

SOURCES = {
    "ai_challenger": AIChallengerSource,
    "llava": LlavaSource,
    "preference": PreferenceSource,
    "reviewed": ReviewedSource,
    "swift_jsonl": SwiftJsonlSource,
}

__all__ = ["SOURCES", "BadRecord", "Candidate", "MergeError", "Source", "source_class"]


def source_class(kind: str, where: str):
    """The reader registered for ``kind``; an unknown type is a :class:`MergeError` naming ``where``."""
    try:
        return SOURCES[kind]
    except KeyError:
        raise MergeError(f"{where}.type: {kind!r} is not one of {', '.join(map(repr, SOURCES))}") from None

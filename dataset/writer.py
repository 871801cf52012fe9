"""Writing the merged data set: ``images.json``, ``qa.json`` and ``stats.json``, together and atomically.

The layout is exactly ``json.dumps(..., ensure_ascii=False, indent=1)`` (docs/data_format.md), written
about three times faster by formatting the fixed record layout directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from json.encoder import encode_basestring
from typing import Any

from atomic import write_documents
from dataset.sources import MergeError

OUTPUT_FILES = ("images.json", "qa.json", "stats.json")
# Written beside them when a source yields preference pairs (the reviewed source's edits).
PREFERENCES_FILE = "preferences.jsonl"
# Keys every qa.json record has, in this order; anything after them is a passthrough key.
RECORD_KEYS = frozenset({"id", "image_id", "source", "messages"})


def _nested(value: Any, indent: str) -> str:
    """Any JSON value as ``json.dumps(indent=1)`` prints it when nested at ``indent``."""
    if type(value) is str:
        return encode_basestring(value)
    return json.dumps(value, ensure_ascii=False, indent=1).replace("\n", "\n" + indent)


# The layout json.dumps(indent=1) gives a qa.json record (nested one level) and its messages.
RECORD_LAYOUT = ' {\n  "id": %s,\n  "image_id": %d,\n  "source": %s,\n  "messages": [\n%s\n  ]%s\n }'
MESSAGE_LAYOUT = '   {\n    "role": %s,\n    "content": %s\n   }'


def format_record(record: dict[str, Any]) -> str:
    """One qa.json record exactly as ``json.dumps(records, ensure_ascii=False, indent=1)`` prints
    it, about three times faster: with ``indent`` set the stdlib uses its pure-Python encoder, which
    dominated the run. Relies on the fixed key order id, image_id, source, messages, extras."""
    enc = encode_basestring
    messages = ",\n".join([MESSAGE_LAYOUT % (enc(m["role"]), enc(m["content"])) for m in record["messages"]])
    extras = ""
    if len(record) > len(RECORD_KEYS):
        extras = "".join(",\n  " + enc(k) + ": " + _nested(v, "  ") for k, v in record.items() if k not in RECORD_KEYS)
    return RECORD_LAYOUT % (enc(record["id"]), record["image_id"], enc(record["source"]), messages, extras)


def format_image(image_id: int, path: str, source: str) -> str:
    """One images.json entry, formatted like ``json.dumps(indent=1)``."""
    return f' "{image_id}": {{\n  "path": {encode_basestring(path)},\n  "source": {encode_basestring(source)}\n }}'


def join_document(open_: str, pieces: Iterable[str], close: str) -> Iterator[str]:
    """The top-level container around pre-formatted items, streamed piece by piece."""
    yield open_
    for n, piece in enumerate(pieces):
        yield ",\n" + piece if n else "\n" + piece
    yield "\n" + close + "\n"


def output_documents(images: list[tuple[str, str]], records: list[dict[str, Any]], stats: dict[str, Any],
                     preferences: list[dict[str, Any]]) -> dict[str, Iterable[str]]:
    """File name -> text pieces of images.json (``images[i]``: the (path, source) of image id i),
    qa.json, stats.json (and preferences.jsonl when there are preference pairs)."""
    image_pieces = (format_image(i, path, source) for i, (path, source) in enumerate(images))
    documents = {
        "images.json": join_document("{", image_pieces, "}"),
        "qa.json": join_document("[", map(format_record, records), "]"),
        "stats.json": [json.dumps(stats, ensure_ascii=False, indent=1) + "\n"],
    }
    if preferences:
        documents[PREFERENCES_FILE] = (json.dumps(p, ensure_ascii=False) + "\n" for p in preferences)
    return documents


def write_outputs(output_dir: str, documents: dict[str, Iterable[str]]) -> None:
    """Write every document at once (``atomic.write_documents``): on any failure the existing
    outputs are left untouched, so readers never see a half-written or mixed data set."""
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise MergeError(f"{output_dir}: cannot create output directory: {exc.strerror or exc}") from None
    try:
        write_documents(output_dir, documents)
        stale = os.path.join(output_dir, PREFERENCES_FILE)
        if PREFERENCES_FILE not in documents and os.path.exists(stale):
            os.remove(stale)  # from an earlier run: it would pair with records no longer there
    except OSError as exc:
        raise MergeError(f"{output_dir}: cannot write output: {exc}") from None

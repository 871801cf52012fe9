"""Merge raw VQA data sources into one dataset: an image table and conversation records.

    python process_image.py --config config.yaml [--set data.seed=1]

Reads every source in ``data.sources`` (AI Challenger captions, LLaVA-format JSON such as
LLaVA-Instruct ``complex_reasoning_77k.json`` / ``detail_23k.json`` / mix665k, ms-swift JSONL) and
writes ``images.json``, ``qa.json`` and ``stats.json`` into ``data.output_dir``. The schema, the
skip reasons and the error policy are documented in docs/data_format.md.

Bad records are counted per reason and skipped (``data.on_error: skip``) or stop the run with an
error naming the file and the record (``stop``). A file that cannot be read or parsed always stops
the run: dropping a whole source would silently change the dataset. Outputs are written only after
everything succeeded, each atomically, so a failed run leaves the previous output untouched.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring
from typing import Any

from tqdm import tqdm

from config import Config, DataSettings, SourceSettings, add_config_arguments, config_from_args, fail

# Raw LLaVA speaker -> chat role. "user"/"assistant" are accepted too (some converted dumps use them).
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
RAW_IMAGE_TAG = "<image>"
# Keys copied unchanged from a raw record when present (evaluation ground truth).
PASSTHROUGH_KEYS = ("answers", "question_type")
# How many offending entries each skip reason keeps for the report.
EXAMPLES_PER_REASON = 3
OUTPUT_FILES = ("images.json", "qa.json", "stats.json")
# Keys every qa.json record has, in this order; anything after them is a passthrough key.
RECORD_KEYS = frozenset({"id", "image_id", "source", "messages"})


class MergeError(Exception):
    """A problem that stops the run; the message names the file (and the record, if any)."""


class BadRecord(Exception):
    """One raw record that cannot be used; ``reason`` is the counted skip category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


@dataclass
class SourceStats:
    """Counts for one source. ``images`` counts distinct images its records use (shared images
    are counted by every source that uses them); ``new_images`` those it added to the table."""

    name: str
    type: str
    annotations: str
    read: int = 0
    records: int = 0
    images: int = 0
    new_images: int = 0
    turns: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES_PER_REASON:
            kept.append(where)


@dataclass
class MergeStats:
    """Per-source counts plus totals; ``images`` is the size of the merged image table."""

    seed: int
    sources: list[SourceStats] = field(default_factory=list)
    images: int = 0

    @property
    def records(self) -> int:
        return sum(s.records for s in self.sources)

    @property
    def turns(self) -> int:
        return sum(s.turns for s in self.sources)

    @property
    def skipped(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.sources:
            for reason, n in s.skipped.items():
                total[reason] = total.get(reason, 0) + n
        return dict(sorted(total.items()))

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "total": {"records": self.records, "images": self.images, "turns": self.turns, "skipped": self.skipped},
            "sources": [asdict(s) for s in self.sources],
        }


@dataclass
class MergeResult:
    """The merged data: ``images[i]`` is the (relative path, source) of image id ``i``."""

    images: list[tuple[str, str]]
    records: list[dict[str, Any]]
    stats: MergeStats


# --------------------------------------------------------------------------------------------
# Reading raw files
# --------------------------------------------------------------------------------------------


def read_text(path: str) -> str:
    """Whole file as text; unreadable or non-UTF-8 files are a MergeError naming file and line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise MergeError(f"{path}: cannot read annotations file: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise MergeError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}): {exc.reason}") from None


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


# --------------------------------------------------------------------------------------------
# Raw formats -> candidate records
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Candidate:
    """A raw record converted to chat messages, before the checks shared by all formats."""

    raw_id: str
    image: str
    messages: list[dict[str, str]]
    extra: dict[str, Any]


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _record_id(entry: dict, fallback: str) -> str:
    value = entry.get("id")
    if value is None:
        return fallback
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRecord("missing_field", f"'id' must be a string or an integer, got {value!r}")
    return str(value)


def _image_name(value: Any, key: str) -> str:
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
    image = _image_name(entry.get(key), key)
    captions = _captions(entry)
    caption = rng.choice(captions)
    template = rng.choice(templates)
    return Candidate(image, image, [_message("user", template), _message("assistant", caption)], {})


def parse_llava(entry: Any, index: int, image_token: str) -> Candidate:
    """``{id, image, conversations: [{from, value}]}``; ``<image>`` becomes ``image_token``."""
    if not isinstance(entry, dict):
        raise BadRecord("missing_field", f"record is not a JSON object: {type(entry).__name__}")
    raw_id = _record_id(entry, f"#{index}")
    if entry.get("image") is None:
        raise BadRecord("no_image", "text-only record (no 'image')")
    image = _image_name(entry["image"], "image")
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
        messages.append(_message(role, turn["value"].replace(RAW_IMAGE_TAG, image_token)))
    extra = {key: entry[key] for key in PASSTHROUGH_KEYS if key in entry}
    return Candidate(raw_id, image, messages, extra)


def parse_swift(line: str, line_no: int, image_token: str) -> Candidate:
    """One ms-swift JSONL line ``{"messages": [{role, content}], "images": [path]}`` with exactly
    one image (``image`` accepted too); records with audio or video are not for this model."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadRecord("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(entry, dict):
        raise BadRecord("missing_field", f"line is not a JSON object: {type(entry).__name__}")
    raw_id = _record_id(entry, f"line{line_no}")
    messages = entry.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRecord("missing_field", "'messages' must be a non-empty list")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRecord("missing_field", f"messages[{k}] needs a string 'role' and 'content'")
    if (
        entry.get("audios")
        or entry.get("videos")
        or any("<audio>" in m["content"] or "<video>" in m["content"] for m in messages)
    ):
        raise BadRecord("audio_or_video", "record uses audio or video")
    key = "images" if "images" in entry else "image"
    images = entry.get(key)
    if not images:
        raise BadRecord("no_image", "text-only record (no 'images')")
    image = _image_name(images, key)
    converted = [_message(m["role"], m["content"].replace(RAW_IMAGE_TAG, image_token)) for m in messages]
    extra = {k: entry[k] for k in PASSTHROUGH_KEYS if k in entry}
    return Candidate(raw_id, image, converted, extra)


# --------------------------------------------------------------------------------------------
# Checks shared by every format
# --------------------------------------------------------------------------------------------


def check_turns(messages: list[dict[str, str]]) -> int:
    """Optional leading system message, then user/assistant strictly alternating, ending with the
    assistant. Returns the number of assistant turns."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if "assistant" not in body:
        raise BadRecord("bad_turn_order", "no assistant turn")
    rounds = len(body) // 2
    if body != ["user", "assistant"] * rounds:  # also rejects an odd count (a trailing question)
        raise BadRecord("bad_turn_order", f"turns are not user/assistant alternating: {'/'.join(roles)}")
    return rounds


def check_placeholder(messages: list[dict[str, str]], image_token: str) -> None:
    """Exactly one image placeholder, in a user message: the model splices one image per record."""
    counts = [m["content"].count(image_token) for m in messages]
    total = sum(counts)
    if total != 1:
        raise BadRecord("bad_placeholder", f"{total} image placeholders in the record, expected exactly 1")
    if messages[counts.index(1)]["role"] != "user":
        raise BadRecord("bad_placeholder", "the image placeholder is not in a user message")


class ImageIndex:
    """Answers "does this image file exist" from one ``os.scandir`` per directory instead of one
    ``stat`` per record: hundreds of thousands of stats are slow on network file systems."""

    def __init__(self) -> None:
        self._listings: dict[str, frozenset[str]] = {}

    def exists(self, directory: str, name: str) -> bool:
        names = self._listings.get(directory)
        if names is None:
            names = self._listings[directory] = self._scan(directory)
        return name in names

    @staticmethod
    def _scan(directory: str) -> frozenset[str]:
        try:
            with os.scandir(directory) as it:
                return frozenset(e.name for e in it if e.is_file())
        except OSError:
            return frozenset()


def split_image_path(image_dir: str, file: str) -> tuple[str, str]:
    """(directory, file name) of ``image_dir / file``, normalised so that one file spelled two ways
    gets one id. Plain file names (the common case) skip the comparatively slow normpath."""
    if os.sep not in file and (not os.altsep or os.altsep not in file) and file not in (".", ".."):
        return image_dir, file
    return os.path.split(os.path.normpath(os.path.join(image_dir, file)))


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


class Merger:
    """Accumulates the image table and the records over the sources, in config order."""

    def __init__(self, data: DataSettings, image_token: str, output_dir: str):
        self.data = data
        self.image_token = image_token
        self.output_dir = os.path.realpath(output_dir)
        self.rng = random.Random(data.seed)
        self.index = ImageIndex() if data.check_images else None
        self.image_ids: dict[str, int] = {}  # normalised absolute path -> id
        self.images: list[tuple[str, str]] = []  # index = image id
        self.records: list[dict[str, Any]] = []
        self.contents: set[tuple] = set()  # (image path, role, content, role, content, ...)
        self.relative_dirs: dict[str, str] = {}
        self.stats = MergeStats(seed=data.seed)

    def add_source(self, number: int, src: SourceSettings) -> SourceStats:
        name = src.name or src.type
        stats = SourceStats(name=name, type=src.type, annotations=src.annotations)
        image_dir = os.path.realpath(src.image_dir or ".")
        if self.index is not None and not os.path.isdir(image_dir):
            raise MergeError(f"data.sources[{number}] ({name}): image_dir {src.image_dir!r} is not a directory")
        items, total, parse, label = self._reader(src)
        seen_ids: set[str] = set()
        used_images: set[int] = set()
        stats.read = total
        # disable=None: a progress bar on a terminal only, not in logs.
        with tqdm(items, total=total, desc=name, unit="rec", disable=None, mininterval=1.0, leave=False) as progress:
            for position, raw in progress:
                try:
                    self._accept(parse(position, raw), name, image_dir, seen_ids, used_images, stats)
                except BadRecord as bad:
                    where = f"{label(position)}{_id_note(raw)}: {bad.detail}"
                    if self.data.on_error == "stop":
                        raise MergeError(
                            f"{src.annotations}: {where} [{bad.reason}] "
                            "(data.on_error is 'stop'; set it to 'skip' to count and skip such records)"
                        ) from None
                    stats.skip(bad.reason, where)
        stats.images = len(used_images)
        self.stats.sources.append(stats)
        self.stats.images = len(self.images)
        return stats

    def _reader(self, src: SourceSettings) -> tuple[Iterable, int, Callable, Callable[[int], str]]:
        """The raw items as (position, raw), their number, the parser of one, how to name a position."""
        token = self.image_token
        if src.type == "swift_jsonl":
            lines = read_jsonl_lines(src.annotations)
            return lines, len(lines), lambda n, line: parse_swift(line, n, token), lambda n: f"line {n}"
        data = read_json_list(src.annotations)
        if src.type == "ai_challenger":
            templates, rng = self.data.question_templates, self.rng
            parse = lambda i, entry: parse_ai_challenger(entry, rng, templates)  # noqa: E731
        else:
            parse = lambda i, entry: parse_llava(entry, i, token)  # noqa: E731
        return enumerate(data), len(data), parse, lambda i: f"record #{i}"

    def _accept(self, cand: Candidate, source: str, image_dir: str, seen_ids: set, used: set, stats: SourceStats):
        """Run the shared checks in a fixed order and, if all pass, add the record."""
        turns = check_turns(cand.messages)
        check_placeholder(cand.messages, self.image_token)
        if cand.raw_id in seen_ids:
            raise BadRecord("duplicate_id", f"id {cand.raw_id!r} already used in this source")
        directory, name = split_image_path(image_dir, cand.image)
        if self.index is not None and not self.index.exists(directory, name):
            raise BadRecord("missing_image", f"image file {os.path.join(directory, name)} does not exist")
        path = directory + os.sep + name
        key = (path, *[x for m in cand.messages for x in (m["role"], m["content"])])
        if key in self.contents:
            raise BadRecord("duplicate_content", f"same conversation as an earlier record for image {path}")
        image_id = self.image_ids.get(path)
        if image_id is None:
            image_id = self._add_image(path, directory, name, source)
            stats.new_images += 1
        self.contents.add(key)
        seen_ids.add(cand.raw_id)
        used.add(image_id)
        stats.records += 1
        stats.turns += turns
        record = {"id": f"{source}/{cand.raw_id}", "image_id": image_id, "source": source, "messages": cand.messages}
        record.update(cand.extra)
        self.records.append(record)

    def _add_image(self, path: str, directory: str, name: str, source: str) -> int:
        """Give ``path`` the next id; its table path is relative to the output directory."""
        image_id = len(self.image_ids)
        self.image_ids[path] = image_id
        rel_dir = self.relative_dirs.get(directory)
        if rel_dir is None:
            rel_dir = self.relative_dirs[directory] = os.path.relpath(directory, self.output_dir)
        self.images.append((name if rel_dir == "." else rel_dir + os.sep + name, source))
        return image_id


def _id_note(raw: Any) -> str:
    """ " (id X)" for a skipped raw record that has an id, to make it easy to find."""
    if not isinstance(raw, dict):
        return ""
    for key in ("id", "image_id", "image"):
        value = raw.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return f" (id {value})"
    return ""


def check_settings(data: DataSettings, image_token: str) -> None:
    """Configuration mistakes that would otherwise show up as a silently odd dataset."""
    if not data.sources:
        raise MergeError("data.sources is empty: list at least one source to merge")
    seen: dict[str, int] = {}
    for i, src in enumerate(data.sources):
        name = src.name or src.type
        if name in seen:
            raise MergeError(
                f"data.sources[{i}]: source name {name!r} is already used by data.sources[{seen[name]}]; "
                "give each source a distinct 'name' (record ids are '<name>/<raw id>')"
            )
        seen[name] = i
    if not data.question_templates:
        raise MergeError("data.question_templates is empty")
    for i, template in enumerate(data.question_templates):
        if template.count(image_token) != 1:
            raise MergeError(f"data.question_templates[{i}] must contain {image_token} exactly once: {template!r}")


def merge(config: Config) -> MergeResult:
    """Read and merge all sources; raises MergeError on anything that must stop the run."""
    data, token = config.data, config.model.image_token
    check_settings(data, token)
    merger = Merger(data, token, data.output_dir)
    for number, src in enumerate(data.sources):
        merger.add_source(number, src)
    return MergeResult(merger.images, merger.records, merger.stats)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


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


def output_documents(result: MergeResult) -> dict[str, Iterable[str]]:
    """File name -> text pieces of images.json, qa.json and stats.json."""
    images = (format_image(i, path, source) for i, (path, source) in enumerate(result.images))
    return {
        "images.json": join_document("{", images, "}"),
        "qa.json": join_document("[", map(format_record, result.records), "]"),
        "stats.json": [json.dumps(result.stats.to_dict(), ensure_ascii=False, indent=1) + "\n"],
    }


def write_outputs(output_dir: str, documents: dict[str, Iterable[str]]) -> None:
    """Write every document (an iterable of text pieces) to a temporary file in ``output_dir``,
    fsync, then rename them all into place: on any failure the temporaries are removed and the
    existing outputs are left untouched, so readers never see a half-written or mixed dataset."""
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise MergeError(f"{output_dir}: cannot create output directory: {exc.strerror or exc}") from None
    pending: list[tuple[str, str]] = []
    try:
        for filename, document in documents.items():
            final = os.path.join(output_dir, filename)
            tmp = os.path.join(output_dir, f".{filename}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            pending.append((tmp, final))
            with open(tmp, "x", encoding="utf-8") as f:
                buffer: list[str] = []
                for piece in document:
                    buffer.append(piece)
                    if len(buffer) >= 4096:
                        f.write("".join(buffer))
                        buffer.clear()
                f.write("".join(buffer))
                f.flush()
                os.fsync(f.fileno())
        for tmp, final in pending:
            os.replace(tmp, final)
        _fsync_dir(output_dir)
    except OSError as exc:
        raise MergeError(f"{output_dir}: cannot write output: {exc}") from None
    finally:
        for tmp, _ in pending:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _fsync_dir(path: str) -> None:
    """Make the renames durable; not every platform can open a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Report and command line
# --------------------------------------------------------------------------------------------


def format_report(stats: MergeStats) -> str:
    """Per-source and total counts, then each skip reason with its first offending entries."""
    width = max([len("source")] + [len(s.name) for s in stats.sources])
    columns = ("read", "records", "images", "turns", "skipped")

    def row(name: str, kind: str, values: Iterable[int | str]) -> str:
        return f"{name:<{width}}  {kind:<13}" + "".join(f" {v:>9}" for v in values)

    lines = [row("source", "type", columns)]
    lines.append("-" * len(lines[0]))
    for s in stats.sources:
        lines.append(row(s.name, s.type, (s.read, s.records, s.images, s.turns, s.skipped_total)))
    read = sum(s.read for s in stats.sources)
    lines.append(row("total", "", (read, stats.records, stats.images, stats.turns, sum(stats.skipped.values()))))
    for s in stats.sources:
        for reason, count in sorted(s.skipped.items()):
            lines.append(f"skipped in {s.name}: {reason} x{count} ({s.annotations}), first:")
            lines.extend(f"    {example}" for example in s.examples[reason])
    return "\n".join(lines)


def run(config: Config) -> MergeStats:
    """Merge and write; the library entry point used by the tests and the benchmark."""
    with gc_paused():
        result = merge(config)
        if not result.records:
            raise MergeError("no record was accepted from any source; nothing written")
        write_outputs(config.data.output_dir, output_documents(result))
    return result.stats


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing and merging create millions of containers, and
    the collector re-scanning them took about a third of the run. Nothing here builds reference
    cycles, so reference counting still frees everything; the previous state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    try:
        stats = run(config)
    except MergeError as exc:
        fail(str(exc))
    print(format_report(stats))
    for s in stats.sources:
        if s.records == 0:
            print(f"warning: source {s.name} ({s.annotations}) contributed no records", file=sys.stderr)
    print(f"wrote {', '.join(OUTPUT_FILES)} to {config.data.output_dir}")


if __name__ == "__main__":
    main()

"""Batch pre-annotation: answer a folder of images or a merged ``qa.json`` into a resumable JSONL.

The first line records what produced the answers (``dataset.produced_by``); a re-run appends only
when it is the same model with the same settings. One line per item, appended and fsynced batch by
batch. A re-run skips what the file already answers (by record id, or by image path and question),
repairs a last line cut off by a crash, and retries errors only when asked. ``confidence`` is the
answer's mean token log-probability; ``review`` marks the answers a person should check and
``flags`` says which rules fired (``inference.flags``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dataset.jsonl import append_lines, repair_jsonl
from dataset.records import first_turn_question, image_path, load_merged
from errors import UserError, one_line
from inference.flags import ReviewRules
from visual.image_files import IMAGE_EXTENSIONS, is_image_name


@dataclass
class Item:
    """One question to answer in a batch run."""

    image: str  # path as written to the output
    question: str
    record_id: str | None = None
    error: str | None = None  # known before generation (e.g. a record whose image is not in the table)

    def key(self) -> tuple:
        return item_key(self.record_id, self.image, self.question)

    def head(self) -> dict:
        out = {"id": self.record_id} if self.record_id is not None else {}
        out.update(image=self.image, question=self.question)
        return out


def item_key(record_id, image, question) -> tuple:
    if record_id is not None:
        return ("id", str(record_id), question)
    return ("image", os.path.realpath(image) if image else "", question)


# -- collecting the items ------------------------------------------------------------------------


def images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by extension, hidden files skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if is_image_name(name):
                found.append(Path(root) / name)
    return sorted(found)


def collect_items(images_arg: str, question: str | None) -> list[Item]:
    """The batch: every image of a folder (one ``question``), or every record of a merged
    ``qa.json`` (its first user turn, unless ``question`` overrides it)."""
    source = Path(images_arg)
    if source.is_dir():
        if question is None:
            raise UserError("--question is required with --images DIR")
        files = images_in(source)
        if not files:
            raise UserError(f"{images_arg}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this directory")
        return [Item(str(f), question) for f in files]
    if not source.exists():
        raise UserError(f"{images_arg}: no such directory or data file")
    if source.suffix.lower() != ".json":
        raise UserError(f"{images_arg}: --images takes a directory of images or a merged qa.json")
    records, table = load_merged(source)
    items = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            items.append(Item("", question or "", f"#{index}", "not a JSON object"))
            continue
        record_id = str(record.get("id", f"#{index}"))
        q = question if question is not None else first_turn_question(record)
        path = image_path(record, table)
        if path is None:
            items.append(Item("", q, record_id, f"image_id {record.get('image_id')!r} is not in images.json"))
        elif not q:
            items.append(Item(str(path), q, record_id, "the record has no question (user turn)"))
        else:
            items.append(Item(str(path), q, record_id))
    if not items:
        raise UserError(f"{images_arg}: holds no records")
    return items


# -- the resumable output ------------------------------------------------------------------------


def read_done(path: Path, retry_errors: bool) -> tuple[set, int]:
    """Keys already in the output (answers, and errors unless ``retry_errors``), bad line count."""
    done, bad = set(), 0
    if not path.is_file():
        return done, bad
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                # A server's failure ("retry": true) is asked again by every run; an item's own error
                # (an unreadable image) only with --retry-errors.
                if "answer" in entry or ("error" in entry and not retry_errors and not entry.get("retry")):
                    done.add(item_key(entry.get("id"), entry.get("image"), entry.get("question")))
            except (ValueError, AttributeError, TypeError):
                bad += 1
    return done, bad


def answer_entry(item: Item, text: str, confidence: float | None, rules: ReviewRules) -> dict:
    entry = item.head()
    entry["answer"] = text
    finite = confidence is not None and math.isfinite(confidence)
    entry["confidence"] = round(confidence, 6) if finite else None
    flags = rules.flags(text, confidence)
    entry["review"] = bool(flags)
    if flags:
        entry["flags"] = flags
    return entry


def run_batch(predictor, items: list[Item], output: Path, settings, batch_size: int, rules: ReviewRules,
              retry_errors: bool = False, *, produced_by: dict, overwrite: bool = False) -> dict:
    """Answer every item not yet in ``output`` (started by the same ``produced_by``, unless
    ``overwrite``); returns counts."""
    from tqdm import tqdm

    from dataset.produced_by import start_or_resume
    from visual.preprocess import load_image

    output.parent.mkdir(parents=True, exist_ok=True)
    dropped = repair_jsonl(output)
    start_or_resume(output, produced_by, overwrite)
    if dropped:
        print(f"note: {output}: dropped a truncated last line ({dropped} bytes) left by an interrupted run",
              file=sys.stderr)
    done, bad = read_done(output, retry_errors)
    if bad:
        print(f"note: {output}: {bad} unreadable line(s) ignored", file=sys.stderr)
    pending, seen = [], set(done)
    for item in items:
        if item.key() not in seen:
            seen.add(item.key())
            pending.append(item)
    counts = {"total": len(items), "skipped": len(items) - len(pending), "answered": 0, "errors": 0, "review": 0}
    with open(output, "a", encoding="utf-8") as f, tqdm(total=len(pending), unit="img", dynamic_ncols=True,
                                                        desc="answering", file=sys.stderr) as bar:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            entries: list[dict | None] = [None] * len(chunk)  # written in input order
            ready, images = [], []
            for i, item in enumerate(chunk):
                if item.error is not None:
                    entries[i] = {**item.head(), "error": item.error}
                    continue
                try:
                    predictor.check_question(item.question, settings)
                    images.append(load_image(item.image))
                    ready.append(i)
                except ValueError as exc:  # an unreadable image, a question too long for the model
                    entries[i] = {**item.head(), "error": one_line(exc)}
            answered = 0
            if ready:
                answers = predictor.answer(images, [chunk[i].question for i in ready], settings)
                for i, answer in zip(ready, answers):
                    if getattr(answer, "error", None):  # the server failed: an error line, asked again next run
                        entries[i] = {**chunk[i].head(), "error": answer.error, "retry": True}
                        continue
                    entries[i] = answer_entry(chunk[i], answer.text, answer.mean_logprob, rules)
                    counts["review"] += entries[i]["review"]
                    answered += 1
            counts["answered"] += answered
            counts["errors"] += len(chunk) - answered
            append_lines(f, entries)
            bar.update(len(chunk))
    return counts


def merge_shards(files: list[Path], items: list[Item]) -> tuple[list[dict], dict]:
    """The outputs of ``--shard 0/N .. N-1/N`` runs over ``items`` as the lines one whole run writes:
    their common ``produced_by`` line, then one line per item in input order (an item's answer over
    an earlier error line of it: a retry that succeeded). Returns the lines and counts; items no
    shard has are ``missing``."""
    from dataset.produced_by import HEADER_KEY, common_of_shards, is_header, read_header

    produced_by = common_of_shards([(str(f), read_header(f) if f.is_file() else None) for f in files])
    latest: dict[tuple, dict] = {}
    for path in files:
        repair_jsonl(path)
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict) or is_header(entry):
                    continue
                key = item_key(entry.get("id"), entry.get("image"), entry.get("question"))
                if "answer" in entry or "answer" not in latest.get(key, {}):
                    latest[key] = entry
    entries = [latest[item.key()] for item in items if item.key() in latest]
    answered = [e for e in entries if "answer" in e]
    return [{HEADER_KEY: produced_by}, *entries], {
        "answered": len(answered), "errors": len(entries) - len(answered), "missing": len(items) - len(entries),
        "review": sum(bool(e.get("review")) for e in answered)}

"""Batch pre-annotation: answer a folder of images or a merged ``qa.json`` into a resumable JSONL.

One line per item, appended and fsynced batch by batch. A re-run skips what the file already
answers (by record id, or by image path and question), repairs a last line cut off by a crash,
and retries errors only when asked. ``confidence`` is the answer's mean token log-probability and
``review`` flags the ones below a threshold for a person to check.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dataset.records import first_turn_question, image_path, load_merged
from errors import UserError, one_line
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


def repair_jsonl(path: Path) -> int:
    """Cut a last line that a crash left without its newline; return the bytes dropped."""
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Find the last newline, reading backwards in blocks.
        pos, keep = size, 0
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


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
                if "answer" in entry or ("error" in entry and not retry_errors):
                    done.add(item_key(entry.get("id"), entry.get("image"), entry.get("question")))
            except (ValueError, AttributeError, TypeError):
                bad += 1
    return done, bad


def jsonl_line(entry: dict) -> str:
    """One JSON line, UTF-8 where possible. A file name that is not valid UTF-8 (say ``caf\\xe9.png``
    from an old archive) reaches Python as lone surrogates, which UTF-8 cannot encode: such an entry
    is written with ``\\udcXX`` escapes instead, still valid JSON and UTF-8, and lossless
    (``os.fsencode(entry["image"])`` gives the original bytes back)."""
    text = json.dumps(entry, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(entry, ensure_ascii=True)
    return text + "\n"


def append_lines(f, entries: list[dict]) -> None:
    """Append whole lines and make them durable before the next batch starts."""
    if not entries:
        return
    f.write("".join(map(jsonl_line, entries)))
    f.flush()
    os.fsync(f.fileno())


def answer_entry(item: Item, text: str, confidence: float | None, threshold: float) -> dict:
    entry = item.head()
    entry["answer"] = text
    if confidence is None or not math.isfinite(confidence):
        entry["confidence"] = None
        entry["review"] = True
    else:
        entry["confidence"] = round(confidence, 6)
        entry["review"] = confidence < threshold
    return entry


def run_batch(predictor, items: list[Item], output: Path, settings, batch_size: int, threshold: float,
              retry_errors: bool = False) -> dict:
    """Answer every item not yet in ``output``; returns counts."""
    from tqdm import tqdm

    from visual.preprocess import load_image

    output.parent.mkdir(parents=True, exist_ok=True)
    dropped = repair_jsonl(output)
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
            if ready:
                answers = predictor.answer(images, [chunk[i].question for i in ready], settings)
                for i, answer in zip(ready, answers):
                    entries[i] = answer_entry(chunk[i], answer.text, answer.mean_logprob, threshold)
                    counts["review"] += entries[i]["review"]
            counts["answered"] += len(ready)
            counts["errors"] += len(chunk) - len(ready)
            append_lines(f, entries)
            bar.update(len(chunk))
    return counts

"""Reviewing pre-annotations: the answers file, the review log beside it, and replaying that log.

``infer.py --images ... --output answers.jsonl`` writes one answer per line; ``gui.py --review``
lets a person accept, edit, reject or skip them; every decision is appended to
``answers.review.jsonl`` and fsynced before the next item shows; ``process_image.py`` (source type
``reviewed``) turns the accepted and edited answers into training records and the edits into
preference pairs. The log is the only state: it is never rewritten, a later decision on an item
supersedes an earlier one (both stay, as the audit trail), ``undo`` lines take the last decision
back, and replaying the log from the start gives exactly the state the app had when it was killed.

Log lines::

    {"review_log": 1, "answers": "answers.jsonl", "created": "2026-12-02T21:00:00+00:00"}
    {"item": [ID, IMAGE, QUESTION], "decision": "edit", "model_answer": "cat", "final_answer": "kitten",
     "reviewer": "ana", "time": "2026-12-02T21:00:07+00:00"}
    {"item": [ID, IMAGE, QUESTION], "decision": "undo", "reviewer": "ana", "time": "..."}

``item`` names an answers-file entry by its record id (null for a folder of images), image path and
question, as infer.py wrote them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dataset.jsonl import append_lines, repair_jsonl
from dataset.produced_by import is_header
from errors import UserError, one_line

LOG_VERSION = 1
DECISIONS = ("accept", "edit", "reject", "skip")
UNDO = "undo"
# Decisions whose item becomes a training record.
KEPT = ("accept", "edit")

ItemKey = tuple  # (record id or None, image, question)


class ReviewError(UserError):
    """An answers file or review log that cannot be used; the message names the file."""


def log_path(answers: str | Path) -> Path:
    """``answers.jsonl`` -> ``answers.review.jsonl``, in the same directory."""
    answers = Path(answers)
    return answers.with_name(answers.stem + ".review.jsonl")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- the answers file ------------------------------------------------------------------------


@dataclass
class ReviewItem:
    """One answer to review, as infer.py wrote it."""

    key: ItemKey
    line: int
    image: str
    question: str
    answer: str
    confidence: float | None
    flags: list[str]
    flagged: bool
    record_id: str | None = None


@dataclass
class Answers:
    """The reviewable answers of a file and what could not be used (``problems``: line, reason, detail)."""

    path: Path
    items: list[ReviewItem]
    problems: list[tuple[int, str, str]] = field(default_factory=list)

    def by_key(self) -> dict[ItemKey, ReviewItem]:
        return {item.key: item for item in self.items}


def _item(entry: dict, line: int) -> ReviewItem:
    """A line with an answer -> item; ValueError (with the reason) when a field is wrong."""
    record_id = entry.get("id")
    if record_id is not None and (isinstance(record_id, bool) or not isinstance(record_id, (str, int))):
        raise ValueError(f"'id' must be a string or an integer, got {record_id!r}")
    image, question, answer = entry.get("image"), entry.get("question"), entry.get("answer")
    for name, value in (("image", image), ("question", question), ("answer", answer)):
        if not isinstance(value, str):
            raise ValueError(f"'{name}' must be a string, got {value!r}")
    confidence = entry.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not math.isfinite(confidence):
        confidence = None
    flags = entry.get("flags")
    flags = [str(f) for f in flags] if isinstance(flags, list) else []
    flagged = bool(entry.get("review", bool(flags)))
    rid = None if record_id is None else str(record_id)
    return ReviewItem((rid, image, question), line, image, question, answer, confidence, flags, flagged, rid)


def read_answers(path: str | Path) -> Answers:
    """The answers of an ``infer.py --images ... --output`` file.

    A later line for the same item (a re-run with ``--retry-errors``) replaces an earlier one;
    error lines, malformed lines and lines without an answer are listed in ``problems``.
    """
    path = Path(path)
    if not path.is_file():
        raise ReviewError(f"{path}: no such answers file (write one with infer.py --images ... --output FILE.jsonl)")
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ReviewError(f"{path}: cannot read: {exc.strerror or exc}") from None
    items: dict[ItemKey, ReviewItem] = {}
    problems: list[tuple[int, str, str]] = []
    errors: dict[ItemKey, tuple[int, str]] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            problems.append((number, "invalid_json", f"not valid JSON: {one_line(exc)}"))
            continue
        if not isinstance(entry, dict):
            problems.append((number, "invalid_json", f"not a JSON object: {type(entry).__name__}"))
            continue
        if number == 1 and is_header(entry):  # what produced the answers (dataset.produced_by)
            continue
        if "answer" not in entry:
            if "error" in entry:
                key = (None if entry.get("id") is None else str(entry.get("id")), entry.get("image"), entry.get("question"))
                if not all(part is None or isinstance(part, str) for part in key[1:]):
                    problems.append((number, "missing_field", "an error line whose 'image' or 'question' is not a string"))
                    continue
                errors[key] = (number, f"infer.py could not answer it: {entry['error']}")
            else:
                problems.append((number, "no_answer", "the line has no 'answer'"))
            continue
        try:
            item = _item(entry, number)
        except ValueError as exc:
            problems.append((number, "missing_field", str(exc)))
            continue
        items[item.key] = item
    problems += [(number, "no_answer", detail) for key, (number, detail) in errors.items() if key not in items]
    problems.sort()
    if not items:
        raise ReviewError(f"{path}: holds no answers to review ({len(problems)} unusable line(s))")
    return Answers(path, sorted(items.values(), key=lambda i: i.line), problems)


# -- the log ---------------------------------------------------------------------------------


@dataclass
class Decision:
    item: ItemKey
    decision: str  # accept | edit | reject | skip
    model_answer: str
    final_answer: str | None  # None for reject and skip
    reviewer: str
    time: str

    def to_json(self) -> dict:
        return {"item": list(self.item), "decision": self.decision, "model_answer": self.model_answer,
                "final_answer": self.final_answer, "reviewer": self.reviewer, "time": self.time}


class ReviewState:
    """The decisions in effect, rebuilt by applying the log's lines in order.

    Each item keeps a stack of its decisions (the last one counts); ``order`` lists the decisions
    in the order they were made, so ``undo`` takes back the most recent one, across restarts too.
    """

    def __init__(self) -> None:
        self.stacks: dict[ItemKey, list[Decision]] = {}
        self.order: list[ItemKey] = []
        # Malformed lines in the middle of the log, left out of the replay: (line number, why).
        self.ignored: list[tuple[int, str]] = []

    def apply(self, entry: dict) -> None:
        """One log line (already validated by :func:`parse_line`)."""
        key = tuple(entry["item"])
        if entry["decision"] == UNDO:
            if self.order and self.order[-1] == key:
                self.order.pop()
                self.stacks[key].pop()
            return
        decision = Decision(key, entry["decision"], entry["model_answer"], entry.get("final_answer"),
                            entry.get("reviewer", ""), entry.get("time", ""))
        self.stacks.setdefault(key, []).append(decision)
        self.order.append(key)

    def current(self, key: ItemKey) -> Decision | None:
        stack = self.stacks.get(key)
        return stack[-1] if stack else None

    def last(self) -> ItemKey | None:
        """The item of the decision an ``undo`` would take back."""
        return self.order[-1] if self.order else None


def parse_line(line: str) -> dict:
    """A decision or undo line; ValueError saying what is wrong."""
    entry = json.loads(line)
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    item, decision = entry.get("item"), entry.get("decision")
    if not (isinstance(item, list) and len(item) == 3 and all(v is None or isinstance(v, str) for v in item)):
        raise ValueError(f"'item' must be [id, image, question], got {item!r}")
    if decision not in DECISIONS + (UNDO,):
        raise ValueError(f"'decision' must be one of {', '.join(DECISIONS + (UNDO,))}, got {decision!r}")
    if decision != UNDO:
        if not isinstance(entry.get("model_answer"), str):
            raise ValueError("'model_answer' must be a string")
        final = entry.get("final_answer")
        if decision in KEPT and not (isinstance(final, str) and final.strip()):
            raise ValueError(f"an '{decision}' decision needs a non-empty 'final_answer'")
    return entry


def read_log(path: str | Path, answers: Answers) -> tuple[ReviewState, list[str]]:
    """Replay the review log at ``path`` (missing: nothing decided yet) against ``answers``.

    Returns the state and notes about lines that were ignored: a last line cut off by a crash
    (always), a malformed line in the middle (counted). Raises :class:`ReviewError` when the file is
    not a review log, or when its decisions are about items the answers file does not hold: it was
    written for another answers file, and replaying it would attach decisions to the wrong answers.
    """
    path = Path(path)
    state, notes = ReviewState(), []
    if not path.exists():
        return state, notes
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ReviewError(f"{path}: cannot read the review log: {exc.strerror or exc}") from None
    lines = text.split("\n")
    truncated = lines[-1] if lines[-1].strip() else None  # no newline after it: cut off mid-write
    body = [(n, line) for n, line in enumerate(lines[:-1], 1) if line.strip()]
    if not body:
        if truncated is not None:
            notes.append(f"{path}: ignored an incomplete first line (the app was stopped while writing it)")
        return state, notes
    try:
        header = json.loads(body[0][1])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("review_log") != LOG_VERSION:
        raise ReviewError(f"{path}: not a review log (its first line is not a review_log header); "
                          "move it away to start a new review")
    known = {tuple(item.key) for item in answers.items}
    foreign, bad = [], 0
    entries = []
    for number, line in body[1:]:
        try:
            entry = parse_line(line)
        except ValueError as exc:
            bad += 1
            state.ignored.append((number, one_line(exc)))
            notes.append(f"{path}: line {number} ignored: {one_line(exc)}")
            continue
        if tuple(entry["item"]) not in known:
            foreign.append(entry["item"])
            continue
        entries.append(entry)
    if foreign:
        written_for = header.get("answers")
        raise ReviewError(
            f"{path}: {len(foreign)} decision(s) are about items that are not in {answers.path} "
            f"(first: {foreign[0]!r}); this review log was written for "
            f"{written_for or 'another answers file'}. Review that file, or move the log away to start afresh"
        )
    for entry in entries:
        state.apply(entry)
    if truncated is not None:
        notes.append(f"{path}: ignored an incomplete last line (the app was stopped while writing it)")
    return state, notes


class ReviewLog:
    """The review log, open for appending. Opened (and created, with its header) before any
    decision is made, so a directory that cannot hold it is refused at start."""

    def __init__(self, path: str | Path, answers: Path) -> None:
        self.path = Path(path)
        try:
            repair_jsonl(self.path)  # a line cut off by a crash would run into the next one
            self.file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise ReviewError(f"{self.path}: cannot write the review log here ({exc.strerror or exc}); "
                              "decisions would be lost, so the review does not start") from None
        if self.file.tell() == 0:
            self.write({"review_log": LOG_VERSION, "answers": Path(answers).name, "created": now()})

    def write(self, entry: dict) -> None:
        """Append one line and fsync it: when this returns, the decision survives ``kill -9``."""
        append_lines(self.file, [entry])

    def close(self) -> None:
        self.file.close()


def changed_since_decided(answers: Answers, state: ReviewState) -> list[tuple[ReviewItem, Decision]]:
    """The items whose answer in the file is no longer the model answer they were decided on (the
    answers file was rewritten after the review began): their decision is about another answer."""
    changed = []
    for item in answers.items:
        decision = state.current(item.key)
        if decision is not None and decision.model_answer != item.answer:
            changed.append((item, decision))
    return changed


def changed_detail(item: ReviewItem, decision: Decision) -> str:
    return (f"{decision.decision} of {decision.model_answer!r}, but the answers file now says {item.answer!r}; "
            "review it again")


def open_review(answers_file: str | Path, write: bool = True) -> tuple[Answers, ReviewState, ReviewLog | None, list[str]]:
    """Answers, replayed state, the log open for appending (when ``write``), and notes."""
    answers = read_answers(answers_file)
    path = log_path(answers_file)
    state, notes = read_log(path, answers)
    log = ReviewLog(path, Path(answers_file)) if write else None
    changed = changed_since_decided(answers, state)
    if changed:
        item, decision = changed[0]
        notes.insert(0, f"{answers.path}: {len(changed)} answer(s) changed since they were decided (first: line "
                        f"{item.line}: {changed_detail(item, decision)})")
    if answers.problems:
        notes.insert(0, f"{answers.path}: {len(answers.problems)} line(s) cannot be reviewed "
                        f"(first: line {answers.problems[0][0]}: {answers.problems[0][2]})")
    return answers, state, log, notes


def image_exists(item: ReviewItem) -> bool:
    return os.path.isfile(item.image)

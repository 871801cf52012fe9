"""Merging raw sources into one data set: the shared checks, ids, the image table, counts, the report.

``run(config)`` is the library entry point of ``process_image.py``: every source in
``data.sources`` is read by its registered reader (``dataset.sources``), each candidate record goes
through the same checks in a fixed order, and the merged image table and records are written by
``dataset.writer`` only after everything succeeded.
"""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from config import Config, DataSettings, SourceSettings
from dataset.sources import BadRecord, Candidate, MergeError, source_class
from dataset.sources.base import RAW_IMAGE_TAG
from dataset.writer import output_documents, write_outputs

class NothingAccepted(MergeError):
    """Every record of every source was skipped; ``stats`` says why, source by source."""

    def __init__(self, stats: "MergeStats") -> None:
        super().__init__("no record was accepted from any source; nothing written (the counts above say why)")
        self.stats = stats


# How many offending entries each skip reason keeps for the report.
EXAMPLES_PER_REASON = 3


# -- statistics ---------------------------------------------------------------------------------


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
    # Kinds of accepted records a source tells apart (reviewed: accepted / edited).
    tallies: dict[str, int] = field(default_factory=dict)
    preference_pairs: int = 0

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
    def preference_pairs(self) -> int:
        return sum(s.preference_pairs for s in self.sources)

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
            "total": {"records": self.records, "images": self.images, "turns": self.turns, "skipped": self.skipped,
                      "preference_pairs": self.preference_pairs},
            "sources": [asdict(s) for s in self.sources],
        }


@dataclass
class MergeResult:
    """The merged data: ``images[i]`` is the (relative path, source) of image id ``i``;
    ``preferences``: ms-swift preference records (``messages``, ``rejected_response``, ``images``)."""

    images: list[tuple[str, str]]
    records: list[dict[str, Any]]
    stats: MergeStats
    preferences: list[dict[str, Any]] = field(default_factory=list)


# -- checks shared by every format --------------------------------------------------------------


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
    ``stat`` per record: hundreds of thousands of stats are slow on network file systems.

    An entry that cannot be examined (a looping symlink, a file that vanished mid-scan) is left out
    on its own and remembered with its error, so only the records naming it are skipped, with that
    reason; a directory that cannot be listed at all falls back to one ``stat`` per record."""

    def __init__(self) -> None:
        self._listings: dict[str, frozenset[str] | None] = {}
        self._unreadable: dict[str, dict[str, str]] = {}

    def exists(self, directory: str, name: str) -> bool:
        if directory not in self._listings:
            self._listings[directory] = self._scan(directory)
        names = self._listings[directory]
        return os.path.isfile(os.path.join(directory, name)) if names is None else name in names

    def unreadable(self, directory: str, name: str) -> str | None:
        """Why the entry ``name`` of ``directory`` could not be examined, or None."""
        return self._unreadable.get(directory, {}).get(name)

    def _scan(self, directory: str) -> frozenset[str] | None:
        names, bad = set(), {}
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    try:
                        if entry.is_file():
                            names.add(entry.name)
                    except OSError as exc:
                        bad[entry.name] = exc.strerror or str(exc)
        except OSError:
            return None
        if bad:
            self._unreadable[directory] = bad
        return frozenset(names)


def split_image_path(image_dir: str, file: str) -> tuple[str, str]:
    """(directory, file name) of ``image_dir / file``, normalised so that one file spelled two ways
    gets one id. Plain file names (the common case) skip the comparatively slow normpath."""
    if os.sep not in file and (not os.altsep or os.altsep not in file) and file not in (".", ".."):
        return image_dir, file
    return os.path.split(os.path.normpath(os.path.join(image_dir, file)))


# -- merging ------------------------------------------------------------------------------------


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
        self.preferences: list[dict[str, Any]] = []
        self.contents: set[tuple] = set()  # (image path, role, content, role, content, ...)
        self.relative_dirs: dict[str, str] = {}
        self.stats = MergeStats(seed=data.seed)

    def add_source(self, number: int, src: SourceSettings) -> SourceStats:
        name = src.name or src.type
        stats = SourceStats(name=name, type=src.type, annotations=src.annotations)
        image_dir = os.path.realpath(src.image_dir or ".")
        if self.index is not None and not os.path.isdir(image_dir):
            raise MergeError(f"data.sources[{number}] ({name}): image_dir {src.image_dir!r} is not a directory")
        source = source_class(src.type, f"data.sources[{number}]")(
            self.image_token, self.rng, self.data.question_templates
        )
        items = source.read(src.annotations)
        parse = source.parse
        seen_ids: set[str] = set()
        used_images: set[int] = set()
        stats.read = len(items)
        # disable=None: a progress bar on a terminal only, not in logs.
        with tqdm(items, desc=name, unit="rec", disable=None, mininterval=1.0, leave=False) as progress:
            for position, raw in progress:
                try:
                    self._accept(parse(position, raw), name, image_dir, seen_ids, used_images, stats)
                except BadRecord as bad:
                    where = f"{source.where(position)}{_id_note(raw)}: {bad.detail}"
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

    def _accept(self, cand: Candidate, source: str, image_dir: str, seen_ids: set, used: set, stats: SourceStats):
        """Run the shared checks in a fixed order and, if all pass, add the record."""
        turns = check_turns(cand.messages)
        check_placeholder(cand.messages, self.image_token)
        if cand.raw_id in seen_ids:
            raise BadRecord("duplicate_id", f"id {cand.raw_id!r} already used in this source")
        directory, name = split_image_path(image_dir, cand.image)
        if self.index is not None and not self.index.exists(directory, name):
            why = self.index.unreadable(directory, name)
            if why is not None:
                raise BadRecord("unreadable_image", f"image file {os.path.join(directory, name)} cannot be read: {why}")
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
        if cand.tally is not None:
            stats.tallies[cand.tally] = stats.tallies.get(cand.tally, 0) + 1
        if cand.rejected is not None:
            self.preferences.append(self._preference(record, cand.rejected))
            stats.preference_pairs += 1

    def _preference(self, record: dict[str, Any], rejected: str) -> dict[str, Any]:
        """The record as an ms-swift preference line: ``<image>`` in the user text, the image path
        as in images.json (relative to the output directory), the dispreferred answer beside it."""
        messages = [{"role": m["role"], "content": m["content"].replace(self.image_token, RAW_IMAGE_TAG)}
                    for m in record["messages"]]
        return {"id": record["id"], "messages": messages, "rejected_response": rejected,
                "images": [self.images[record["image_id"]][0]]}

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
        source_class(src.type, f"data.sources[{i}]")  # an unknown type stops the run before any reading
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
    return MergeResult(merger.images, merger.records, merger.stats, merger.preferences)


# -- run and report -----------------------------------------------------------------------------


def run(config: Config) -> MergeStats:
    """Merge and write; the library entry point used by the tests and the benchmark."""
    with gc_paused():
        result = merge(config)
        if not result.records:
            raise NothingAccepted(result.stats)
        write_outputs(config.data.output_dir,
                      output_documents(result.images, result.records, result.stats.to_dict(), result.preferences))
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
        if s.tallies or s.preference_pairs:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(s.tallies.items()))
            lines.append(f"{s.name}: {kinds}; {s.preference_pairs} preference pair(s) -> preferences.jsonl")
    for s in stats.sources:
        for reason, count in sorted(s.skipped.items()):
            lines.append(f"skipped in {s.name}: {reason} x{count} ({s.annotations}), first:")
            lines.extend(f"    {example}" for example in s.examples[reason])
    return "\n".join(lines)

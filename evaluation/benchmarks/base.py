"""What every benchmark module provides, and the pieces they share.

A benchmark reads its official files as they are downloaded into :class:`Question` s, turns a
model's reply into the answer its results file holds (``results_answer``: the clean-up LLaVA's
conversion scripts apply when they write that file), scores a results file's ``{question id:
answer}`` exactly as its official evaluation code does (no clean-up the official code does not do),
writes the file its evaluation server accepts (when the split has no public answers), and reads
results files in its official format (``evaluate.py --predictions``). The runner
(``evaluation.benchmarks.runner``) does the rest: asking the model, resuming, coverage, writing
``metrics.json``, ``report.md`` and the plot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errors import UserError, read_utf8

# LLaVA-1.5's evaluation prompt for short-answer benchmarks.
SHORT_ANSWER = "Answer the question using a single word or phrase."


class BenchmarkError(UserError):
    """An official file that cannot be used as given; the message names the file (and record)."""


@dataclass(frozen=True)
class EmbeddedImage:
    """An image held inside a benchmark's own file (MMBench's base64 TSV cells): the bytes, and a
    label naming where they came from (``file#index``), which is what reports and scores.jsonl show."""

    data: bytes
    label: str

    def __str__(self) -> str:
        return self.label


@dataclass
class Files:
    """Where a benchmark's released files are (``Benchmark.locate``): what ``--questions``,
    ``--annotations`` and ``--images`` would be given, and which split they are."""

    questions: list[Path]
    annotations: Path | None = None
    images: Path | None = None
    split: str = ""


@dataclass(frozen=True)
class Layout:
    """One released layout of a benchmark's folder (``evaluate.py --suite``): file and folder names
    relative to ``DATA_ROOT/<benchmark>/``, as they are downloaded."""

    split: str
    questions: tuple[str, ...]
    images: str | None = None
    annotations: str | None = None

    def paths(self, folder: Path) -> list[Path]:
        return [folder / name for name in (*self.questions, self.annotations, self.images) if name]


def find_layout(folder: Path, layouts: Sequence[Layout]) -> Files | str:
    """The first of ``layouts`` (the preferred split first) whose files are all in ``folder``, or
    one line naming what was looked for."""
    for layout in layouts:
        if all(path.exists() for path in layout.paths(folder)):
            return Files([folder / q for q in layout.questions], folder / layout.annotations if layout.annotations else None,
                         folder / layout.images if layout.images else None, layout.split)
    wanted = " or ".join(f"{layout.split}: " + " + ".join(p.name for p in layout.paths(folder)) for layout in layouts)
    return f"{folder}: no released files ({wanted})"


@dataclass(frozen=True)
class JudgeServer:
    """An OpenAI-compatible server whose model scores free-form answers (``--judge-server``,
    ``--judge-model``)."""

    url: str
    model: str | None = None


@dataclass
class Question:
    """One question of a benchmark. ``truth`` is None when the split has no public answers."""

    qid: str
    image: Path | EmbeddedImage | None  # None when scoring a results file (no images needed)
    question: str
    truth: Any = None
    # What the metrics break down by (question_type, answer_type, split, subtask, ...).
    group: dict[str, str] = field(default_factory=dict)


@dataclass
class Submission:
    """A file for an official evaluation server, and where to upload it."""

    filename: str
    content: Any
    upload: str


@dataclass
class Loaded:
    """The questions of a benchmark and what was skipped while reading them (reason -> count)."""

    questions: list[Question]
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    # How many of the skips were questions of the benchmark (not, say, an annotation for no question):
    # a score without them does not cover the benchmark.
    skipped_questions: int = 0
    _ids: set[str] = field(default_factory=set, repr=False)

    def skip(self, reason: str, example: str, question: bool = True, qid: str | None = None) -> None:
        """Count a skipped entry. ``question``: it is one of the benchmark's questions (a score
        without it does not cover the benchmark); ``qid``: its id, so that an answer to it is not
        taken for an answer to an unknown question (e.g. GQA's unbalanced questions)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_questions += question
        if qid is not None:
            self._ids.add(qid)
        if len(self.examples) < 5:
            self.examples.append(f"{reason}: {example}")

    def add_references(self, qid: str, image: Path | None, references: list[str], prompt: str) -> None:
        """A question whose truth is its reference texts (an image's captions): none is a counted skip."""
        if not references:
            self.skip("no_reference_caption", qid)
        elif self.admit(qid, image):
            self.questions.append(Question(qid, image, prompt, references))

    def known_ids(self) -> set[str]:
        """The question ids the benchmark's files hold: usable, skipped, or not scored (GQA's
        unbalanced questions)."""
        return self._ids | {q.qid for q in self.questions}

    def admit(self, qid: str, image: Path | EmbeddedImage | None) -> bool:
        """Whether a question can be used: a repeated id or a missing image file is a counted skip
        (``image`` None: no images are read, as when scoring a results file)."""
        if qid in self._ids:
            self.skip("duplicate_question_id", qid)
            return False
        self._ids.add(qid)
        if isinstance(image, Path) and not image.is_file():
            self.skip("missing_image", str(image))
            return False
        return True


class Benchmark:
    """The interface; see the module docstring. Subclasses set ``name``, ``prompt_suffix``,
    ``needs`` (the command-line inputs it reads) and implement the methods."""

    name: str = ""
    prompt_suffix: str = SHORT_ANSWER
    # Which of --questions / --annotations / --images / --judge-server the benchmark reads.
    needs: tuple[str, ...] = ("questions", "images")
    # The answer length asked for when --max-new-tokens does not say (None: the config's): long
    # enough for what the benchmark scores (a caption, a judged free-form answer).
    max_new_tokens: int | None = None
    # Set by the command before scoring: the judge (benchmarks that need "judge") and the output
    # folder, where a benchmark may keep what scoring produced (a judge's raw replies).
    judge: JudgeServer | None = None
    workdir: Path | None = None

    # Where ``evaluate.py --suite`` finds the released files, the split LLaVA-1.5's table reports first.
    layouts: tuple[Layout, ...] = ()

    def locate(self, root: Path) -> Files | str:
        """The benchmark's released files in ``root`` (``DATA_ROOT/<name>/`` of ``evaluate.py --suite``;
        layouts in docs/benchmarks.md), or one line saying what is missing there."""
        return find_layout(root, self.layouts) if self.layouts else f"{self.name}: no released layout is known"

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        raise NotImplementedError

    def results_answer(self, reply: str) -> str:
        """A model's reply as it is written into the official results file (and so scored)."""
        return reply

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        """The official metrics of a results file's answers (``{qid: answer}``) to ``questions``."""
        raise NotImplementedError

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        """Each answered question's credit in [0, 1] as the official metric counts it (VQA's
        min(#humans/3, 1) averaged as the official code does, or 1/0 for right/wrong): what
        ``evaluate.py --compare`` pairs between two runs. Where the official number is not a mean
        of these (POPE's F1, MME's acc + acc+), this is the per-question accuracy behind it."""
        raise NotImplementedError

    def headline(self, metrics: Mapping) -> str:
        """The numbers printed on stdout, formatted as the official code prints them."""
        return f"overall {metrics['overall']}" if "overall" in metrics else "no public answers"

    def table_value(self, metrics: Mapping) -> float | None:
        """The number LLaVA-1.5's results table reports for this benchmark, in the table's unit
        (``evaluate.py --suite``): e.g. accuracy in percent; None when the split has no public answers."""
        value = metrics.get("overall")
        return float(value) if isinstance(value, (int, float)) else None

    def submission(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Submission | None:
        return None

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        """``[{"question_id": ..., "answer": ...}]``, the VQA results format; others override."""
        return by_key(load_json(path, "results file"), path, "question_id", "answer")


# -- shared helpers ------------------------------------------------------------------------------


def load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(read_utf8(path, what))
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: not valid JSON ({what}): {exc}") from None


def load_jsonl(path: Path, what: str) -> list[Any]:
    rows = []
    for number, line in enumerate(read_utf8(path, what).split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{path}: line {number} is not valid JSON ({what}): {exc}") from None
    return rows


def by_key(rows: Any, path: Path, key: str, value: str) -> dict[str, str]:
    """A results list ``[{key: id, value: answer}]`` as ``{str(id): answer}``; duplicate or
    malformed entries are a one-line error naming the entry."""
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: expected a JSON list of {{{key!r}, {value!r}}} entries")
    answers: dict[str, str] = {}
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or key not in row or not isinstance(row.get(value), str):
            raise BenchmarkError(f"{path}: entry #{n} needs {key!r} and a string {value!r}: {str(row)[:120]}")
        qid = str(row[key])
        if qid in answers:
            raise BenchmarkError(f"{path}: {key} {qid} appears twice")
        answers[qid] = row[value]
    return answers


def is_int(value: Any) -> bool:
    """An integer id as the official formats write it (JSON number, not a bool or a string)."""
    return isinstance(value, int) and not isinstance(value, bool)


def percent(values: Sequence[float]) -> float:
    """``round(100 * sum / n, 2)``: the official VQA evaluation's ``setAccuracy`` (and the VizWiz
    API's), in that order -- ``100 * sum`` first, then the division."""
    return round(100 * float(sum(values)) / len(values), 2) if values else 0.0


def percent_of_mean(values: Sequence[float]) -> float:
    """``100 * (sum / n)`` rounded to 2 decimals: the mean first (GQA's ``eval.py`` prints
    ``avg(l) * 100`` with ``{:.2f}``; LLaVA's TextVQA evaluation ``100. * accuracy`` likewise). The
    order matters: ``100 * s / n`` and ``100 * (s / n)`` can differ in the last bit, which decides
    a rounding tie (23 right of 160: 14.38 one way, 14.37 the other)."""
    return round(100 * (float(sum(values)) / len(values)), 2) if values else 0.0


def breakdown(questions: Sequence[Question], scores: Mapping[str, float], key: str,
              rate=percent) -> dict[str, float]:
    """Per value of ``group[key]``: ``rate`` of the scores of the questions that have it, summed in
    question order."""
    groups: dict[str, list[float]] = {}
    for q in questions:
        if q.qid in scores and key in q.group:
            groups.setdefault(q.group[key], []).append(scores[q.qid])
    return {name: rate(values) for name, values in sorted(groups.items())}

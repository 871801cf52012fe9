"""Running a benchmark: ask every question once (resumably), score, write what people read.

``OUTPUT/predictions.jsonl`` starts with what produced its answers (``dataset.produced_by``: the
benchmark, the model's fingerprint or server, prompt suffix, generation settings) and gets one line
per question as it is answered (``{"qid", "question", "answer"}``, fsynced batch by batch): a re-run
with the same ``produced_by`` skips what it holds and never asks a question twice, a re-run with
anything else refuses to mix its answers in; a line cut off by a crash is dropped and asked again.

Scoring takes a results file's answers (from ``--predictions``, or the model's replies written as
the benchmark's results file holds them, ``Benchmark.results_answer``) and checks they cover the
question set: like the official evaluation code, a partial file or one answering unknown questions
is refused unless ``allow_partial``, and then the coverage is written beside every number. Then
``metrics.json``, ``report.md`` and ``per_type.png`` are written together and atomically; for a
split without public answers the results file its evaluation server accepts is written instead of a
score.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from dataclasses import asdict, dataclass

from atomic import write_bytes, write_documents
from errors import UserError, one_line
from evaluation.benchmarks.base import Benchmark, EmbeddedImage, Loaded, Question
from dataset.produced_by import is_header, start_or_resume

PREDICTIONS = "predictions.jsonl"
SCORES = "scores.jsonl"  # each scored question's credit, for evaluate.py --compare


def ask(question: Question, suffix: str) -> str:
    """The question as asked: the benchmark's prompt suffix on its own line (LLaVA-1.5's layout)."""
    return f"{question.question}\n{suffix}" if suffix else question.question


def question_image(question: Question):
    """What ``load_image`` opens for a question: its file, or the image its benchmark file holds."""
    if isinstance(question.image, EmbeddedImage):
        import io

        from PIL import Image

        try:
            image = Image.open(io.BytesIO(question.image.data))
            image.load()
            return image
        except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
            raise ValueError(f"{question.image}: not a readable image ({exc})") from None
    return question.image


def read_answers(path: Path) -> dict[str, str]:
    """What an earlier run already answered (its replies; unreadable lines are ignored: they are
    asked again)."""
    from dataset.jsonl import repair_jsonl

    answers: dict[str, str] = {}
    if not path.is_file():
        return answers
    repair_jsonl(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
                if not is_header(entry) and isinstance(entry.get("answer"), str):
                    answers[str(entry["qid"])] = entry["answer"]
            except (ValueError, AttributeError, KeyError, TypeError):
                continue
    return answers


def answer_all(predictor, questions: Sequence[Question], output: Path, settings, batch_size: int,
               suffix: str, produced_by: Mapping, overwrite: bool = False,
               progress=None) -> tuple[dict[str, str], list[dict]]:
    """Answer every question not yet in ``output/predictions.jsonl`` (which must have been started
    by the same ``produced_by``, unless ``overwrite``); returns the model's replies to ``questions``
    and the questions that could not be asked (unreadable image, too long for the model).
    ``progress``: a suite's bar over all its benchmarks, moved on with this one's."""
    from tqdm import tqdm

    from dataset.jsonl import append_lines
    from visual.preprocess import load_image

    path = output / PREDICTIONS
    start_or_resume(path, produced_by, overwrite)
    wanted = {q.qid for q in questions}
    answers = {qid: text for qid, text in read_answers(path).items() if qid in wanted}
    pending = [q for q in questions if q.qid not in answers]
    if progress is not None:
        progress.update(len(questions) - len(pending))
    errors: list[dict] = []
    output.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f, tqdm(total=len(questions), initial=len(questions) - len(pending),
                                                      unit="q", desc=produced_by.get("benchmark", "answering"),
                                                      dynamic_ncols=True,
                                                      file=sys.stderr) as bar:
        for start in range(0, len(pending), max(1, batch_size)):
            chunk, images = [], []
            for q in pending[start:start + batch_size]:
                try:
                    predictor.check_question(ask(q, suffix), settings)
                    images.append(load_image(question_image(q)))
                    chunk.append(q)
                except ValueError as exc:
                    errors.append({"qid": q.qid, "error": one_line(exc)})
            if chunk:
                replies = predictor.answer(images, [ask(q, suffix) for q in chunk], settings)
                lines = []
                for q, r in zip(chunk, replies):
                    if getattr(r, "error", None):  # the server failed on it: no answer, asked again on resume
                        errors.append({"qid": q.qid, "error": r.error})
                        lines.append({"qid": q.qid, "question": q.question, "error": r.error})
                    else:
                        lines.append({"qid": q.qid, "question": q.question, "answer": r.text})
                        answers[q.qid] = r.text
                append_lines(f, lines)
            bar.update(len(pending[start:start + batch_size]))
            if progress is not None:
                progress.update(len(pending[start:start + batch_size]))
    return answers, errors


def score_lines(bench: Benchmark, questions: Sequence[Question], answers: Mapping[str, str]):
    """``scores.jsonl``: per scored question, the answer as scored, its credit
    (``Benchmark.question_scores``), what the metrics break it down by, and its image."""
    scores = bench.question_scores(questions, answers)
    for q in questions:
        if q.qid in scores:
            yield json.dumps({"qid": q.qid, "question": q.question, "answer": answers[q.qid], "score": scores[q.qid],
                              "group": q.group, "image": str(q.image) if q.image is not None else None},
                             ensure_ascii=False) + "\n"


def per_type_rows(metrics: Mapping) -> dict[str, dict[str, float]]:
    """The breakdowns of a metrics dict worth a plot: ``{table: {type: value}}``."""
    tables = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            tables[key] = value
        elif key in ("splits", "subtasks"):
            field = "f1" if key == "splits" else "score"
            tables[f"{key} ({field})"] = {name: row[field] for name, row in value.items() if row[field] is not None}
    return tables


def report(bench: Benchmark, metrics: Mapping, loaded: Loaded, errors: list[dict], cover: Coverage) -> str:
    """``report.md``: the headline numbers, the coverage, and one table per breakdown."""
    lines = [f"# {bench.name}", "", f"- **result**: {bench.headline(metrics)}",
             f"- **coverage**: {cover.describe()}" + ("" if cover.complete else " -- **partial** (--allow-partial)")]
    for key in ("overall", "binary", "open", "perception", "cognition", "count"):
        if key in metrics:
            lines.append(f"- **{key}**: {metrics[key]!r}")
    if loaded.skipped:
        lines.append(f"- skipped while reading: {json.dumps(loaded.skipped)}")
    if errors:
        lines.append(f"- not asked: {len(errors)} (first: {errors[0]['error']})")
    for key in ("splits", "subtasks"):
        rows = metrics.get(key)
        if rows:
            columns = [c for c in next(iter(rows.values())) if c not in ("tp", "fp", "tn", "fn")]
            lines += ["", f"## {key}", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            lines += [f"| {name} | " + " | ".join(repr(row[c]) for c in columns) + " |" for name, row in rows.items()]
    breakdowns = {k: v for k, v in metrics.items() if k not in ("splits", "subtasks", "skipped", "coverage")}
    for table, values in per_type_rows(breakdowns).items():
        lines += ["", f"## {table}", "", "| type | accuracy |", "|---|---|"]
        lines += [f"| {name} | {value!r} |" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def plot(tables: Mapping[str, Mapping[str, float]], title: str) -> bytes | None:
    """``per_type.png``: one bar chart per breakdown (PNG bytes), or None when there is none."""
    tables = {k: v for k, v in tables.items() if v}
    if not tables:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = sum(1.0 + 0.28 * len(values) for values in tables.values())
    fig, axes = plt.subplots(len(tables), 1, figsize=(8, height), squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], tables.items()):
        ax.barh(list(values), list(values.values()), color="#4c72b0")
        ax.set_title(name, fontsize=9)
        top = max(values.values())
        ax.set_xlim(0, 1.0 if top <= 1.0 else max(100.0, top))  # fractions (POPE) or percent / MME scores
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


@dataclass
class Coverage:
    """How much of the benchmark's question set a results file answers."""

    questions: int  # the questions scored (the benchmark's, or the first --limit of them)
    answered: int
    in_benchmark: int  # usable questions read from the official files
    skipped: int  # the benchmark's questions skipped while reading (missing image, malformed, ...)
    unknown: int = 0  # answers to question ids the benchmark does not have (dropped)
    unknown_example: str | None = None
    not_asked: int = 0  # questions the model could not be asked (unreadable image, too long)
    limit: int | None = None

    @property
    def complete(self) -> bool:
        """Whether the answers are exactly the question set asked for (the official tools refuse anything else)."""
        return self.answered == self.questions and not self.unknown and (not self.skipped or self.limit is not None)

    def describe(self) -> str:
        text = f"answers {self.answered} of {self.questions} questions"
        if self.limit is not None:
            text += f" (--limit {self.limit}: the first of the benchmark's {self.in_benchmark})"
        parts = [text]
        if self.not_asked:
            parts.append(f"{self.not_asked} could not be asked")
        if self.skipped:
            parts.append(f"{self.skipped} of the benchmark's questions were skipped while reading")
        if self.unknown:
            parts.append(f"{self.unknown} answer(s) to question ids not in the benchmark (e.g. {self.unknown_example})")
        return "; ".join(parts)


def coverage(loaded: Loaded, questions: Sequence[Question], answers: Mapping[str, str], limit: int | None,
             not_asked: int = 0) -> Coverage:
    """The coverage of ``answers`` (a results file's, all of them) over ``questions`` (the set scored:
    ``loaded.questions`` or its first ``limit``)."""
    known = loaded.known_ids()
    unknown = [qid for qid in answers if qid not in known]
    wanted = {q.qid for q in questions}
    return Coverage(questions=len(questions), answered=sum(qid in wanted for qid in answers),
                    in_benchmark=len(loaded.questions), skipped=loaded.skipped_questions, unknown=len(unknown),
                    unknown_example=unknown[0] if unknown else None, not_asked=not_asked, limit=limit)


def finish(bench: Benchmark, loaded: Loaded, questions: Sequence[Question], answers: Mapping[str, str],
           errors: list[dict], output: Path, extra: Mapping, cover: Coverage, allow_partial: bool = False,
           source: str = "") -> dict:
    """Check the coverage (a partial results file is refused unless ``allow_partial``), score (or
    write the server's results file), then ``metrics.json``, ``report.md``, ``per_type.png``
    together and atomically. ``answers``: results-file answers to ``questions``. Returns the metrics."""
    if not cover.complete and not allow_partial:
        raise UserError(f"{source}: {cover.describe()}; the official evaluation refuses a results file that does not "
                        "answer exactly its questions (--allow-partial scores the answered ones and records the coverage)")
    answers = {q.qid: answers[q.qid] for q in questions if q.qid in answers}
    scorable = [q for q in questions if q.truth is not None]
    metrics: dict = dict(bench.score(scorable, answers)) if scorable else {"count": len(answers)}
    metrics.update(benchmark=bench.name, coverage={**asdict(cover), "complete": cover.complete},
                   skipped=loaded.skipped, skipped_examples=loaded.examples, errors=len(errors),
                   error_examples=errors[:5], **extra)
    documents: dict[str, object] = {}
    shard = isinstance(extra.get("produced_by"), Mapping) and extra["produced_by"].get("shard")
    if len(scorable) < len(questions) and not shard:  # a shard's part is merged first (--merge-shards)
        submission = bench.submission(questions, answers)
        if submission is not None:
            binary = isinstance(submission.content, bytes)  # a file the server takes as it is (MMBench's .xlsx)
            if binary:  # written first: metrics.json never names a file that is not there
                output.mkdir(parents=True, exist_ok=True)
                write_bytes(output / submission.filename, submission.content)
            else:
                documents[submission.filename] = [json.dumps(submission.content, ensure_ascii=False) + "\n"]
            metrics["submission"] = {"file": submission.filename, "upload": submission.upload,
                                     "answers": len(answers) if binary else len(submission.content)}
    if scorable:
        documents[SCORES] = score_lines(bench, scorable, answers)
    elif (output / SCORES).exists():
        (output / SCORES).unlink()  # an earlier run's, on a split with answers: never compared as this run's
    documents["metrics.json"] = [json.dumps(metrics, ensure_ascii=False, indent=1) + "\n"]
    documents["report.md"] = [report(bench, metrics, loaded, errors, cover)]
    write_documents(output, documents)
    image = plot(per_type_rows({k: v for k, v in metrics.items() if k not in ("skipped", "coverage")}), bench.name)
    if image is not None:
        write_bytes(output / "per_type.png", image)
    return metrics

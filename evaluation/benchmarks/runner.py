"""Running a benchmark: ask every question once (resumably), score, write what people read.

``OUTPUT/predictions.jsonl`` gets one line per question as it is answered (``{"qid", "question",
"answer"}``, fsynced batch by batch): a re-run skips what it holds and never asks a question twice;
a line cut off by a crash is dropped and asked again. When every question is answered (or from an
existing results file, ``--predictions``) the answers are scored and ``metrics.json``, ``report.md``
and ``per_type.png`` are written together and atomically; for a split without public answers the
results file its evaluation server accepts is written instead of a score.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from atomic import write_documents
from errors import one_line
from evaluation.benchmarks.base import Benchmark, Loaded, Question

PREDICTIONS = "predictions.jsonl"


def ask(question: Question, suffix: str) -> str:
    """The question as asked: the benchmark's prompt suffix on its own line (LLaVA-1.5's layout)."""
    return f"{question.question}\n{suffix}" if suffix else question.question


def read_answers(path: Path) -> dict[str, str]:
    """What an earlier run already answered (unreadable lines are ignored: they are asked again)."""
    from dataset.jsonl import repair_jsonl

    answers: dict[str, str] = {}
    if not path.is_file():
        return answers
    repair_jsonl(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
                if isinstance(entry.get("answer"), str):
                    answers[str(entry["qid"])] = entry["answer"]
            except (ValueError, AttributeError, KeyError, TypeError):
                continue
    return answers


def answer_all(predictor, questions: Sequence[Question], output: Path, settings, batch_size: int,
               suffix: str) -> tuple[dict[str, str], list[dict]]:
    """Answer every question not yet in ``output/predictions.jsonl``; returns all answers and
    the questions that could not be asked (unreadable image, too long for the model)."""
    from tqdm import tqdm

    from dataset.jsonl import append_lines
    from visual.preprocess import load_image

    path = output / PREDICTIONS
    answers = read_answers(path)
    pending = [q for q in questions if q.qid not in answers]
    errors: list[dict] = []
    output.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f, tqdm(total=len(questions), initial=len(questions) - len(pending),
                                                      unit="q", desc="answering", dynamic_ncols=True,
                                                      file=sys.stderr) as bar:
        for start in range(0, len(pending), max(1, batch_size)):
            chunk, images = [], []
            for q in pending[start:start + batch_size]:
                try:
                    predictor.check_question(ask(q, suffix), settings)
                    images.append(load_image(q.image))
                    chunk.append(q)
                except ValueError as exc:
                    errors.append({"qid": q.qid, "error": one_line(exc)})
            if chunk:
                replies = predictor.answer(images, [ask(q, suffix) for q in chunk], settings)
                lines = [{"qid": q.qid, "question": q.question, "answer": r.text} for q, r in zip(chunk, replies)]
                append_lines(f, lines)
                answers.update((q.qid, r.text) for q, r in zip(chunk, replies))
            bar.update(len(pending[start:start + batch_size]))
    return answers, errors


def per_type_rows(metrics: Mapping) -> dict[str, dict[str, float]]:
    """The breakdowns of a metrics dict worth a plot: ``{table: {type: percent}}``."""
    tables = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            tables[key] = value
        elif key in ("splits", "subtasks"):
            field = "f1" if key == "splits" else "acc"
            tables[f"{key} ({field})"] = {name: row[field] for name, row in value.items()}
    return tables


def report(bench: Benchmark, metrics: Mapping, loaded: Loaded, errors: list[dict]) -> str:
    """``report.md``: the headline numbers and one table per breakdown."""
    lines = [f"# {bench.name}", ""]
    for key in ("overall", "perception", "cognition", "count"):
        if key in metrics:
            lines.append(f"- **{key}**: {metrics[key]}")
    if loaded.skipped:
        lines.append(f"- skipped while reading: {json.dumps(loaded.skipped)}")
    if errors:
        lines.append(f"- not asked: {len(errors)} (first: {errors[0]['error']})")
    for key in ("splits", "subtasks"):
        rows = metrics.get(key)
        if rows:
            columns = [c for c in next(iter(rows.values())) if c not in ("tp", "fp", "tn", "fn")]
            lines += ["", f"## {key}", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            lines += [f"| {name} | " + " | ".join(str(row[c]) for c in columns) + " |" for name, row in rows.items()]
    for table, values in per_type_rows({k: v for k, v in metrics.items() if k not in ("splits", "subtasks")}).items():
        lines += ["", f"## {table}", "", "| type | accuracy |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in values.items()]
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
        ax.set_xlim(0, max(100.0, max(values.values())))
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def finish(bench: Benchmark, loaded: Loaded, answers: Mapping[str, str], errors: list[dict], output: Path,
           extra: Mapping) -> dict:
    """Score (or write the server's results file), then ``metrics.json``, ``report.md``,
    ``per_type.png`` together and atomically. Returns the metrics."""
    questions = loaded.questions
    scorable = [q for q in questions if q.truth is not None]
    missing = sum(q.qid not in answers for q in questions)
    metrics: dict = dict(bench.score(scorable, answers)) if scorable else {"count": len(answers)}
    metrics.update(benchmark=bench.name, questions=len(questions), unanswered=missing, skipped=loaded.skipped,
                   skipped_examples=loaded.examples, errors=len(errors), error_examples=errors[:5], **extra)
    documents: dict[str, object] = {}
    if len(scorable) < len(questions):
        submission = bench.submission(questions, answers)
        if submission is not None:
            documents[submission.filename] = [json.dumps(submission.content, ensure_ascii=False) + "\n"]
            metrics["submission"] = {"file": submission.filename, "upload": submission.upload,
                                     "answers": len(submission.content)}
    documents["metrics.json"] = [json.dumps(metrics, ensure_ascii=False, indent=1) + "\n"]
    documents["report.md"] = [report(bench, metrics, loaded, errors)]
    write_documents(output, documents)
    image = plot(per_type_rows({k: v for k, v in metrics.items() if k not in ("skipped",)}), bench.name)
    if image is not None:
        (output / ".per_type.png.tmp").write_bytes(image)
        (output / ".per_type.png.tmp").replace(output / "per_type.png")
    return metrics

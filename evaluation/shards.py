"""One evaluation split over several processes (``evaluate.py --shard I/N``) and merged back (``--merge-shards``).

Shard I of N answers every N-th question (merged record) from the I-th, into its own output folder,
with ``"shard": "I/N"`` in its ``produced_by`` (so each shard resumes only its own answers). The
merge takes the outputs of shards 0/N .. N-1/N -- each exactly once, all by the same model and
settings -- and writes what one whole run writes: a benchmark's ``predictions.jsonl`` in question
order, then the same scoring, coverage check and files (``evaluation.benchmarks.runner.finish``);
merged data's predictions in data-file order (their ``index``) with the same metrics.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from atomic import write_text
from dataset.produced_by import common_of_shards, read_header
from errors import UserError
from evaluation.benchmarks.base import load_jsonl
from evaluation.benchmarks.runner import PREDICTIONS, coverage, read_answers


def select(items: Sequence, shard: tuple[int, int] | None) -> Sequence:
    """The items shard ``(I, N)`` answers: every N-th from the I-th (all of them without a shard)."""
    return items if shard is None else items[shard[0]::shard[1]]


def common_produced_by(directories: Sequence[Path], name: str) -> dict:
    """The ``produced_by`` the shards' outputs share (``name``: the file in each that records it)."""
    labelled = []
    for directory in directories:
        path = Path(directory) / name
        header = None
        if path.is_file():
            header = (json.loads(path.read_text(encoding="utf-8")).get("produced_by") if name == "metrics.json"
                      else read_header(path))
        labelled.append((str(directory), header))
    return common_of_shards(labelled)


def merge_benchmark(directories: Sequence[Path], bench, loaded, questions, output: Path, limit: int | None,
                    overwrite: bool):
    """A benchmark's shards as one run: ``output/predictions.jsonl`` as the whole run writes it, and
    what ``runner.finish`` scores -- ``(answers, errors, coverage, extra, source)``."""
    produced_by = common_produced_by(directories, PREDICTIONS)
    if produced_by.get("benchmark") != bench.name:
        raise UserError(f"{directories[0]}: answers {produced_by.get('benchmark')}, not {bench.name}")
    if (output / PREDICTIONS).exists() and not overwrite:
        raise UserError(f"{output / PREDICTIONS} exists (pass --overwrite to replace it with the merged answers)")
    replies: dict[str, str] = {}
    for directory in directories:
        replies.update(read_answers(Path(directory) / PREDICTIONS))
    answered = [q for q in questions if q.qid in replies]
    write_text(output / PREDICTIONS, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in [
        {"produced_by": produced_by}, *({"qid": q.qid, "question": q.question, "answer": replies[q.qid]} for q in answered)]))
    answers = {q.qid: bench.results_answer(replies[q.qid]) for q in answered}
    errors = [{"qid": q.qid, "error": "not answered by its shard"} for q in questions if q.qid not in replies]
    cover = coverage(loaded, questions, answers, limit, not_asked=len(errors))
    extra = {"produced_by": produced_by, "merged_from": [str(d) for d in directories]}
    return answers, errors, cover, extra, ", ".join(str(d) for d in directories)


def merge_records(directories: Sequence[Path]) -> tuple[list[dict], dict]:
    """Merged-data shards as one run: the predictions in data-file order and their metrics."""
    from evaluation.vqa_metric import score

    produced_by = common_produced_by(directories, "metrics.json")
    if "benchmark" in produced_by:
        raise UserError(f"{directories[0]}: shards of the {produced_by['benchmark']} benchmark: merge them with "
                        "--benchmark and its --questions (and --annotations)")
    predictions, parts = [], []
    for directory in directories:
        parts.append(json.loads((Path(directory) / "metrics.json").read_text(encoding="utf-8")))
        predictions += load_jsonl(Path(directory) / "predictions.jsonl", "shard predictions")
    if len({p.get("data") for p in parts}) != 1:
        raise UserError("--merge-shards: the shards evaluated different data "
                        f"({', '.join(sorted({str(p.get('data')) for p in parts}))})")
    predictions.sort(key=lambda p: p["index"])
    metrics = score(predictions)
    metrics["errors"], metrics["skipped"] = sum(p["errors"] for p in parts), sum(p["skipped"] for p in parts)
    for key in ("error_examples", "skipped_examples"):
        examples = [e for p in parts for e in p.get(key, [])][:5]
        if examples:
            metrics[key] = examples
    metrics.update({k: parts[0][k] for k in ("checkpoint", "gguf", "server", "data", "generation") if k in parts[0]})
    metrics.update(produced_by=produced_by, merged_from=[str(d) for d in directories])
    return predictions, metrics

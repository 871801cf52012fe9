"""Evaluate a predictor on held-out merged records: answer each one, score it, summarise.

``evaluate.py`` writes what :func:`evaluate_records` returns; training's held-out evaluation
(``train.eval_vqa``) and the demo call it in-process. Ground truth is a record's ``answers`` (VQA
style: ten annotators); a record without ``answers`` is scored against its first assistant turn,
counted as ten identical annotators (with a single answer the official leave-one-out accuracy is
always 0).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

from atomic import write_documents
from dataset.records import IMAGES_FILE, first_turn_answer, first_turn_question, image_path, read_image_table
from errors import one_line
from evaluation.vqa_metric import exact_match, score, vqa_accuracy

NUM_ANNOTATORS = 10


def ground_truth(record: Mapping) -> list[str] | None:
    """The record's ``answers``, else its first assistant turn as ten identical answers."""
    answers = record.get("answers")
    if isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers):
        return list(answers)
    answer = first_turn_answer(record)
    return [answer] * NUM_ANNOTATORS if answer else None


def _image_table(images) -> Mapping[str, Path]:
    """``images``: a mapping image id -> path, a directory holding ``images.json``, or that file."""
    if isinstance(images, Mapping):
        return {str(k): Path(v) for k, v in images.items()}
    path = Path(images)
    return read_image_table(path if path.suffix == ".json" else path / IMAGES_FILE)


def evaluate_records(predictor, records, images, settings=None, batch_size: int = 8,
                     progress: bool = False, positions=None) -> tuple[list[dict], dict]:
    """Answer and score held-out ``records`` (merged ``qa.json`` entries).

    ``positions``: each record's position in its data file (default: 0, 1, ...), written as
    ``index`` with its prediction (a shard's records are every N-th; see :func:`merge_shards`).

    ``images``: the image table (see :func:`_image_table`). ``predictor``: anything with
    ``answer(images, questions, settings)`` (a local :class:`inference.predictor.Predictor` or a
    :class:`inference.remote.RemotePredictor`). Returns ``(predictions, metrics)`` as written by
    ``evaluate.py``.
    """
    from visual.preprocess import load_image

    table = _image_table(images)
    jobs, skipped, errors = [], [], []
    for index, record in zip(positions if positions is not None else range(len(records)), records):
        record_id = record.get("id", f"#{index}") if isinstance(record, Mapping) else f"#{index}"
        question = first_turn_question(record) if isinstance(record, Mapping) else ""
        answers = ground_truth(record) if isinstance(record, Mapping) else None
        if not question or not answers:
            skipped.append({"id": record_id, "reason": "no question" if not question else "no ground truth"})
            continue
        path = image_path(record, table)
        if path is None:
            errors.append({"id": record_id, "error": f"image_id {record.get('image_id')!r} is not in the image table"})
            continue
        jobs.append((record, record_id, question, answers, path, index))

    predictions: list[dict] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="q", desc="evaluating", dynamic_ncols=True, file=sys.stderr)
    try:
        for start in range(0, len(jobs), max(1, batch_size)):
            chunk, loaded = [], []
            for job in jobs[start:start + batch_size]:
                try:
                    predictor.check_question(job[2], settings)
                    loaded.append(load_image(job[4]))
                    chunk.append(job)
                except ValueError as exc:  # an unreadable image, a question too long for the model
                    errors.append({"id": job[1], "error": one_line(exc)})
            if chunk:
                answers = predictor.answer(loaded, [job[2] for job in chunk], settings)
                for (record, record_id, question, truth, job_path, index), answer in zip(chunk, answers):
                    if getattr(answer, "error", None):  # the server failed on it: not a (wrong) prediction
                        errors.append({"id": record_id, "error": answer.error})
                        continue
                    predictions.append({
                        "index": index,
                        "id": record_id,
                        "image_id": record.get("image_id"),
                        "image": str(job_path),
                        "question": question,
                        "prediction": answer.text,
                        "answers": truth,
                        "question_type": record.get("question_type"),
                        "answer_type": record.get("answer_type"),
                        "confidence": answer.mean_logprob,
                        "vqa_accuracy": vqa_accuracy(answer.text, truth),
                        "exact_match": exact_match(answer.text, truth),
                    })
            if bar is not None:
                bar.update(len(jobs[start:start + batch_size]))
    finally:
        if bar is not None:
            bar.close()
    for p in predictions:
        if p["answer_type"] is None:
            del p["answer_type"]
        if p["confidence"] is not None and not math.isfinite(p["confidence"]):
            p["confidence"] = None  # JSON has no infinities
    return predictions, summarise(predictions, errors, skipped)


def summarise(predictions: list[dict], errors: list[dict], skipped: list[dict]) -> dict:
    """The metrics of scored predictions, with what could not be scored (counted, first examples)."""
    metrics = score(predictions)
    metrics["errors"] = len(errors)
    metrics["skipped"] = len(skipped)
    if errors:
        metrics["error_examples"] = errors[:5]
    if skipped:
        metrics["skipped_examples"] = skipped[:5]
    return metrics


def summary(metrics: Mapping, output: Path) -> str:
    """What ``evaluate.py`` prints for merged data: the overall numbers, then each question type's."""
    lines = [f"VQA accuracy {100 * metrics['vqa_accuracy']:.2f}  exact match {100 * metrics['exact_match']:.2f}  "
             f"on {metrics['count']} questions ({metrics['errors']} errors, {metrics['skipped']} skipped) -> {output}"]
    for qtype, m in sorted(metrics["per_question_type"].items(), key=lambda kv: str(kv[0])):
        lines.append(f"  {qtype}: VQA accuracy {100 * m['vqa_accuracy']:.2f}  exact match {100 * m['exact_match']:.2f}  "
                     f"({m['count']})")
    return "\n".join(lines)


def write_results(output: Path, predictions: list[dict], metrics: dict) -> None:
    """``predictions.jsonl`` and ``metrics.json`` into ``output``, together and atomically."""
    write_documents(output, {
        "predictions.jsonl": (json.dumps(p, ensure_ascii=False) + "\n" for p in predictions),
        "metrics.json": [json.dumps(metrics, ensure_ascii=False, indent=1) + "\n"],
    })

#!/usr/bin/env python
"""Evaluate a checkpoint on a held-out merged data set: VQA accuracy, exact match, per type.

    python evaluate.py --checkpoint checkpoints/run --data data/merged_eval/qa.json --output eval/

Every record is answered once (its first user turn, greedy unless the config/flags say otherwise,
batched by ``generation.batch_size``) and scored with :mod:`vqa_metric`, which has exactly the
semantics of the official VQA evaluation (``vqaEval.py``). Ground truth is the record's
``answers`` (VQA style: ten annotators); a record without ``answers`` is scored against its first
assistant turn, counted as ten identical annotators (with a single answer the official
leave-one-out accuracy is always 0). Writes, atomically:

- ``OUTPUT/predictions.jsonl``: one line per scored record (``id``, ``image_id``, ``question``,
  ``prediction``, ``answers``, ``question_type``, ``confidence``, ``vqa_accuracy``, ``exact_match``);
  ``vqa_metric.score`` over these lines reproduces ``metrics.json``.
- ``OUTPUT/metrics.json``: ``vqa_accuracy``, ``exact_match``, ``count``, ``per_question_type``,
  ``per_answer_type``, ``errors`` (records whose image could not be read, with the first reasons),
  ``skipped`` (records without question or ground truth), plus the checkpoint, data and settings.

``evaluate_records`` does the same in-process (train.py and the demo call it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from config import config_to_dict, fail, run_cli
from infer import (
    add_generation_arguments,
    add_model_arguments,
    check_model_arguments,
    first_turn_answer,
    first_turn_question,
    image_paths,
    load_config,
    load_predictor,
    one_line,
    read_merged,
    sampling_settings,
)
from vqa_metric import exact_match, score, vqa_accuracy

__all__ = ["evaluate_records", "ground_truth", "vqa_accuracy", "exact_match", "main"]

NUM_ANNOTATORS = 10


def ground_truth(record: Mapping) -> list[str] | None:
    """The record's ``answers``, else its first assistant turn as ten identical answers."""
    answers = record.get("answers")
    if isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers):
        return list(answers)
    answer = first_turn_answer(record)
    return [answer] * NUM_ANNOTATORS if answer else None


def _image_table(images) -> dict[str, Path]:
    """``images``: a directory holding ``images.json``, the ``images.json`` file, or a mapping."""
    if isinstance(images, Mapping):
        return {str(k): Path(v) for k, v in images.items()}
    path = Path(images)
    table_file = path if path.suffix == ".json" else path / "images.json"
    return image_paths(json.loads(table_file.read_text(encoding="utf-8")), table_file.parent)


def evaluate_records(predictor, records, image_table_dir, settings=None, batch_size: int = 8,
                     progress: bool = False) -> tuple[list[dict], dict]:
    """Answer and score held-out ``records`` (merged ``qa.json`` entries).

    ``image_table_dir``: the directory holding ``images.json`` (or that file, or a mapping
    image id -> path). ``predictor``: a :class:`model.predictor.Predictor` (or anything with the
    same ``answer``). Returns ``(predictions, metrics)`` as written by ``evaluate.py``.
    """
    from visual.preprocess import load_image

    table = _image_table(image_table_dir)
    jobs, skipped, errors = [], [], []
    for index, record in enumerate(records):
        record_id = record.get("id", f"#{index}") if isinstance(record, Mapping) else f"#{index}"
        question = first_turn_question(record) if isinstance(record, Mapping) else ""
        answers = ground_truth(record) if isinstance(record, Mapping) else None
        if not question or not answers:
            skipped.append({"id": record_id, "reason": "no question" if not question else "no ground truth"})
            continue
        path = table.get(str(record.get("image_id")))
        if path is None:
            errors.append({"id": record_id, "error": f"image_id {record.get('image_id')!r} is not in the image table"})
            continue
        jobs.append((record, record_id, question, answers, path))

    predictions: list[dict] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="q", desc="evaluating", dynamic_ncols=True, file=sys.stderr)
    try:
        for start in range(0, len(jobs), max(1, batch_size)):
            chunk, images = [], []
            for job in jobs[start:start + batch_size]:
                try:
                    images.append(load_image(job[4]))
                    chunk.append(job)
                except ValueError as exc:
                    errors.append({"id": job[1], "error": one_line(exc)})
            if chunk:
                answers = predictor.answer(images, [job[2] for job in chunk], settings)
                for (record, record_id, question, truth, _), answer in zip(chunk, answers):
                    predictions.append({
                        "id": record_id,
                        "image_id": record.get("image_id"),
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
    metrics = score(predictions)
    metrics["errors"] = len(errors)
    metrics["skipped"] = len(skipped)
    if errors:
        metrics["error_examples"] = errors[:5]
    if skipped:
        metrics["skipped_examples"] = skipped[:5]
    return predictions, metrics


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results(output: Path, predictions: list[dict], metrics: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    _write_atomic(output / "predictions.jsonl",
                  "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    _write_atomic(output / "metrics.json", json.dumps(metrics, ensure_ascii=False, indent=1) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="VQA accuracy / exact match of a checkpoint on a merged qa.json.")
    add_model_arguments(parser)
    parser.add_argument("--data", metavar="QA_JSON", help="held-out merged qa.json (images.json beside it); "
                        "default: the config's data.eval_file")
    parser.add_argument("--output", metavar="DIR", required=True, help="where predictions.jsonl and metrics.json go")
    parser.add_argument("--limit", type=int, help="evaluate only the first N records")
    add_generation_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_model_arguments(args)
    config = load_config(args)
    data = args.data or config.data.eval_file
    if not data:
        fail("--data QA_JSON is required (or set data.eval_file in the config)")
    if not Path(data).is_file():
        fail(f"{data}: no such data file")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        fail(f"{output}: exists and is not a directory")
    records, table = read_merged(data)
    if args.limit is not None:
        records = records[: max(0, args.limit)]
    if not records:
        fail(f"{data}: holds no records")
    settings = sampling_settings(config, args)
    predictor = load_predictor(args, concurrency=config.generation.batch_size)
    remote_errors: tuple = ()
    if args.server:
        from model.remote import RemoteError

        remote_errors = (RemoteError,)
    try:
        predictions, metrics = evaluate_records(
            predictor, records, table, settings, config.generation.batch_size, progress=True
        )
    except remote_errors as exc:
        fail(str(exc))
    if not predictions:
        fail(f"{data}: no record could be evaluated ({metrics['errors']} errors, {metrics['skipped']} skipped)")
    metrics["checkpoint"] = args.checkpoint
    metrics["server"] = args.server
    metrics["data"] = str(data)
    metrics["generation"] = {k: v for k, v in config_to_dict(settings).items()}
    try:
        write_results(output, predictions, metrics)
    except OSError as exc:
        fail(f"{output}: {one_line(exc)}")
    print(
        f"VQA accuracy {100 * metrics['vqa_accuracy']:.2f}  exact match {100 * metrics['exact_match']:.2f}  "
        f"on {metrics['count']} questions ({metrics['errors']} errors, {metrics['skipped']} skipped) -> {output}"
    )
    for qtype, m in sorted(metrics["per_question_type"].items(), key=lambda kv: str(kv[0])):
        print(f"  {qtype}: VQA accuracy {100 * m['vqa_accuracy']:.2f}  exact match {100 * m['exact_match']:.2f}  "
              f"({m['count']})")
    return 0


if __name__ == "__main__":
    run_cli(main)

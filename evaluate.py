#!/usr/bin/env python
"""Evaluate a checkpoint (or a served model) on held-out merged data: VQA accuracy, exact match, per type.

examples:
  python evaluate.py --checkpoint checkpoints/run --data data/merged_eval/qa.json --output eval/
  python evaluate.py --server http://localhost:8000 --data data/merged_eval/qa.json --output eval/

Every record is answered once (its first user turn, greedy unless the config/flags say otherwise,
batched by generation.batch_size) and scored with evaluation/vqa_metric.py, which has exactly the
semantics of the official VQA evaluation (vqaEval.py). Ground truth is the record's "answers"
(VQA style: ten annotators); a record without "answers" is scored against its first assistant
turn, counted as ten identical annotators (with a single answer the official leave-one-out
accuracy is always 0).

files written (atomically, together):
  OUTPUT/predictions.jsonl  one line per scored record: id, image_id, question, prediction,
                            answers, question_type, confidence, vqa_accuracy, exact_match;
                            vqa_metric.score over these lines reproduces metrics.json
  OUTPUT/metrics.json       vqa_accuracy, exact_match, count, per_question_type, per_answer_type,
                            errors (records whose image could not be read, with the first
                            reasons), skipped (records without question or ground truth), plus
                            the checkpoint, data and generation settings

exit status: 0 done; 2 bad input (one line on stderr); 130 interrupted.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import cli
from atomic import check_writable


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser_from_doc(__doc__)
    cli.add_model_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="QA_JSON", help="held-out merged qa.json (images.json beside it); "
                      "default: the config's data.eval_file")
    data.add_argument("--output", metavar="DIR", required=True, help="where predictions.jsonl and metrics.json go")
    data.add_argument("--limit", type=int, help="evaluate only the first N records")
    cli.add_generation_arguments(parser)
    return parser


def print_summary(metrics: dict, output: Path) -> None:
    print(
        f"VQA accuracy {100 * metrics['vqa_accuracy']:.2f}  exact match {100 * metrics['exact_match']:.2f}  "
        f"on {metrics['count']} questions ({metrics['errors']} errors, {metrics['skipped']} skipped) -> {output}"
    )
    for qtype, m in sorted(metrics["per_question_type"].items(), key=lambda kv: str(kv[0])):
        print(f"  {qtype}: VQA accuracy {100 * m['vqa_accuracy']:.2f}  exact match {100 * m['exact_match']:.2f}  "
              f"({m['count']})")


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
    from dataset.records import load_merged

    args = build_parser().parse_args(argv)
    cli.check_model_arguments(args)
    config = cli.generation_config(args)
    data = args.data or config.data.eval_file
    if not data:
        cli.fail("--data QA_JSON is required (or set data.eval_file in the config)")
    if not Path(data).is_file():
        cli.fail(f"{data}: no such data file")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        cli.fail(f"{output}: exists and is not a directory")
    check_writable(output)
    records, images = load_merged(data)
    if args.limit is not None:
        records = records[: max(0, args.limit)]
    if not records:
        cli.fail(f"{data}: holds no records")
    settings = cli.sampling_settings(config, args)
    predictor = cli.load_predictor(args, concurrency=config.generation.batch_size)

    from evaluation.records import evaluate_records, write_results

    with cli.on_interrupt(f"nothing was written to {output}; run the same command again"):
        predictions, metrics = evaluate_records(
            predictor, records, images, settings, config.generation.batch_size, progress=True
        )
    if not predictions:
        cli.fail(f"{data}: no record could be evaluated ({metrics['errors']} errors, {metrics['skipped']} skipped)")
    metrics.update(checkpoint=args.checkpoint, server=args.server, data=str(data), generation=asdict(settings))
    try:
        write_results(output, predictions, metrics)
    except OSError as exc:
        cli.fail(f"{output}: {exc}")
    print_summary(metrics, output)
    return 0


if __name__ == "__main__":
    cli.run_cli(main)

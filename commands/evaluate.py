"""Evaluate a checkpoint (or a served model) on a benchmark in its official format, or on held-out merged data.

examples:
  # a benchmark, with the files as they are downloaded (one command per benchmark in the README)
  python evaluate.py --checkpoint checkpoints/run --benchmark vqav2 --questions v2_OpenEnded_mscoco_val2014_questions.json \
      --annotations v2_mscoco_val2014_annotations.json --images coco/val2014 --output eval/vqav2
  python evaluate.py --server http://localhost:8000 --benchmark pope --questions coco_pope_random.json \
      --questions coco_pope_popular.json --questions coco_pope_adversarial.json --images coco/val2014 --output eval/pope
  # score an existing results file in the benchmark's official results format: no model, no images
  python evaluate.py --benchmark vqav2 --questions Q.json --annotations A.json --predictions results.json --output eval/v
  # held-out merged data (process_image.py's qa.json); --gguf: a GGUF export, through llama.cpp
  python evaluate.py --checkpoint checkpoints/run --data data/merged_eval/qa.json --output eval/
  python evaluate.py --gguf exports/vqa-gguf --data data/merged_eval/qa.json --output eval-gguf/
  # one shard per GPU (or server; likewise 1/2 into eval/s1), then merged into one whole run's result
  CUDA_VISIBLE_DEVICES=0 python evaluate.py --checkpoint ckpt --data qa.json --shard 0/2 --output eval/s0
  python evaluate.py --data qa.json --merge-shards eval/s0 eval/s1 --output eval/all
  # LLaVA-1.5's whole table (+ captioning): every benchmark found under --data-root/<name>/, then table.md/png
  python evaluate.py --checkpoint checkpoints/run --suite llava-1.5 --data-root eval-data --output eval/table
  # A/B: two runs over the same questions (a benchmark's or merged data's output folders)
  python evaluate.py --compare eval/sft eval/dpo --output eval/sft-vs-dpo
  # online A/B: the request log of serve.py --route ... --log-dir logs, judged via POST /v1/feedback
  python evaluate.py --compare-log logs/ --baseline old --output eval/online-ab

benchmarks: vqav2, okvqa (VQA questions + annotations JSON, COCO images), vizwiz (val/test JSON),
textvqa (TextVQA JSON), gqa (balanced questions JSON), pope (one JSONL per split), mme (the
released folder as --questions), scienceqa (problems.json + pid_splits.json), seedbench
(SEED-Bench.json), mmbench, mmbench_cn (the TSV; images inside), llava_bench, mmvet (scored by
--judge-server), coco_caption (Karpathy test), aic_caption (AI Challenger validation). Each uses LLaVA-1.5's prompt suffix for it (--prompt-suffix
replaces it) and is scored exactly as its official evaluation code scores the same results file;
docs/benchmarks.md names that code and its quirks. A results file (or a run) must answer exactly the
benchmark's questions, as the official tools insist; --allow-partial scores what is answered and
records the coverage.

files written into --output (a benchmark):
  predictions.jsonl  first line: what produced the answers (benchmark, the model's fingerprint or
                     server + model name, prompt suffix, generation settings); then one line per
                     question as it is answered. A re-run with the same of all that resumes and
                     never asks a question twice; with anything else it stops and says what differs
                     (--overwrite starts again)
  metrics.json       the official numbers (e.g. VQAv2: overall, perQuestionType, perAnswerType),
                     the coverage, what was skipped and why, what produced the answers
  report.md, per_type.png   tables and a bar chart per question/answer type
  scores.jsonl       each scored question's answer and credit (what --compare pairs)
  <name>_results.json       for a split without public answers: the file its evaluation server
                            accepts (metrics.json says where to upload it)

files written into --output (merged data), atomically, together:
  predictions.jsonl  id, image_id, question, prediction, answers, question_type, confidence,
                     vqa_accuracy, exact_match per record
  metrics.json       vqa_accuracy, exact_match, count, per_question_type, per_answer_type,
                     errors, skipped, the checkpoint, data and generation settings, and
                     produced_by (the model's fingerprint or server + model name)
A merged record is answered on its first user turn and scored with the official VQA accuracy
against its "answers" (ten annotators), else its first assistant turn counted ten times.

files written into --output (--compare A B; runs of other benchmarks or questions are refused):
  compare.md, compare.png, compare.json  per type and overall: both runs' scores, B - A with a
                     paired-bootstrap 95% interval and McNemar's exact p-value; the questions whose
                     score changed, both ways, with their images (all of them: flips.jsonl)

files written into --output (--compare-log LOG ...: log directories or requests.jsonl files):
  compare_log.md, compare_log.png, compare_log.json  per variant: requests, errors, cache hits,
                     latency p50/p99, judged accuracy and mean score with bootstrap 95% intervals;
                     each variant against the baseline (--baseline, default: the most requests):
                     B - A with an interval, Fisher's exact / Mann-Whitney p, and the verdict

exit status: 0 done; 2 bad input (one line on stderr); 130 interrupted (a benchmark run resumes).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import cli
from atomic import check_writable
from dataset.produced_by import shard_label
from evaluation.benchmarks import BENCHMARKS
from evaluation.suite import SUITES
from evaluation.shards import select


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser_from_doc(__doc__)
    cli.add_model_arguments(parser)
    parser.add_argument("--output", metavar="DIR", required=True, help="where the results go")
    parser.add_argument("--limit", type=cli.positive_int, metavar="N", help="evaluate only the first N questions (records)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="benchmark: score a results file (or a run) that does not answer every question, "
                             "and record its coverage (default: refuse, as the official evaluation does)")
    parser.add_argument("--overwrite", action="store_true",
                        help="benchmark: start predictions.jsonl again instead of resuming (needed when it was "
                             "written by another model or other settings)")
    bench = parser.add_argument_group("benchmark (official formats)")
    bench.add_argument("--benchmark", choices=sorted(BENCHMARKS), help="which benchmark the files are")
    bench.add_argument("--questions", metavar="FILE", action="append", type=Path, default=[],
                       help="the official questions file (pope: one per split, repeatable; mme: the released folder)")
    bench.add_argument("--annotations", metavar="FILE", type=Path, help="vqav2/okvqa: the official annotations file")
    bench.add_argument("--images", metavar="DIR", type=Path, help="the folder of the benchmark's images")
    bench.add_argument("--predictions", metavar="FILE", type=Path,
                       help="score this results file (the benchmark's official results format) instead of asking a model")
    bench.add_argument("--prompt-suffix", metavar="TEXT", help="replaces the benchmark's prompt suffix ('' for none)")
    bench.add_argument("--concurrency", type=int, help="--server: parallel requests (default: generation.batch_size)")
    bench.add_argument("--judge-server", metavar="URL", help="llava_bench, mmvet: the OpenAI-compatible server whose "
                       "model scores the answers (e.g. a vLLM)")
    bench.add_argument("--judge-model", metavar="NAME", help="the judge server's model (default: the one it serves)")
    suite = parser.add_argument_group("a whole results table")
    suite.add_argument("--suite", choices=sorted(SUITES), help="run every benchmark of LLaVA-1.5's table (and captioning) "
                       "whose released files are under --data-root; writes table.md and table.png into --output")
    suite.add_argument("--data-root", metavar="DIR", type=Path,
                       help="--suite: one folder per benchmark (DIR/vqav2, DIR/gqa, ...) holding its released files")
    parser.add_argument("--shard", type=cli.shard_argument, metavar="I/N",
                        help="answer only shard I of N (I from 0 to N-1: every N-th question or record from the I-th), "
                             "e.g. one per GPU or server; each into its own --output, combined by --merge-shards")
    parser.add_argument("--merge-shards", nargs="+", type=Path, metavar="DIR",
                        help="combine the outputs of the --shard 0/N .. N-1/N runs into --output, scored as one run "
                             "(no model is loaded; with --benchmark and its files, or --data)")
    parser.add_argument("--compare", nargs=2, metavar=("OUT_A", "OUT_B"), type=Path,
                        help="compare two evaluation output folders over the same questions (no model is loaded)")
    parser.add_argument("--compare-log", nargs="+", type=Path, metavar="LOG",
                        help="online A/B: the gateway's request logs (directories or files), per variant and "
                             "against the baseline (no model is loaded)")
    parser.add_argument("--baseline", metavar="VARIANT", help="--compare-log: the variant the others are compared "
                        "with (A; default: the one with the most requests)")
    data = parser.add_argument_group("merged data")
    data.add_argument("--data", metavar="QA_JSON", help="held-out merged qa.json (images.json beside it); "
                      "default: the config's data.eval_file")
    cli.add_generation_arguments(parser)
    return parser


def run_compare(args: argparse.Namespace, output: Path) -> int:
    """--compare or --compare-log: they read outputs or logs and ask no model."""
    flag = "--compare" if args.compare else "--compare-log"
    given = [name for name, value in (("--benchmark", args.benchmark), ("--data", args.data),
                                      ("--predictions", args.predictions), ("--checkpoint", args.checkpoint),
                                      ("--gguf", args.gguf), ("--server", args.server),
                                      ("--compare-log", args.compare and args.compare_log)) if value]
    if given:
        cli.fail(f"{flag} reads {'two evaluation outputs' if args.compare else 'request logs'} and asks no model; "
                 f"drop {', '.join(given)}")
    if args.compare:
        from evaluation.compare import run

        print(run(*args.compare, output))
    else:
        from evaluation.compare_log import run as run_log

        print(run_log(args.compare_log, output, args.baseline))
    return 0


def write_merged_results(output: Path, predictions: list[dict], metrics: dict) -> int:
    """A merged-data run's files (one line if they cannot be written), and its summary."""
    from evaluation.records import summary, write_results

    try:
        write_results(output, predictions, metrics)
    except OSError as exc:
        cli.fail(f"{output}: {exc}")
    print(summary(metrics, output))
    return 0


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        cli.fail(f"{output}: exists and is not a directory")
    check_writable(output)
    if args.baseline and not args.compare_log:
        cli.fail("--baseline goes with --compare-log")
    if args.compare or args.compare_log:
        return run_compare(args, output)
    if args.suite:
        from commands.benchmarks import run_suite

        return run_suite(args, output)
    if args.benchmark:
        from commands.benchmarks import run_one

        return run_one(args, output)
    if args.merge_shards:
        from evaluation.shards import merge_records

        return write_merged_results(output, *merge_records(args.merge_shards))
    return run_merged(args, output)


def run_merged(args: argparse.Namespace, output: Path) -> int:
    from dataset.records import load_merged

    cli.check_model_arguments(args)
    config = cli.generation_config(args)
    data = args.data or config.data.eval_file
    if not data:
        cli.fail("--data QA_JSON is required (or set data.eval_file in the config)")
    if not Path(data).is_file():
        cli.fail(f"{data}: no such data file")
    records, images = load_merged(data)
    if args.limit is not None:
        records = records[: args.limit]
    positions, records = select(range(len(records)), args.shard), select(records, args.shard)
    if not records:
        cli.fail(f"{data}: holds no records")
    settings = cli.sampling_settings(config, args)
    identity = cli.model_identity(args)
    predictor = cli.load_predictor(args, concurrency=config.generation.batch_size)

    from evaluation.records import evaluate_records

    with cli.on_interrupt(f"nothing was written to {output}; run the same command again"):
        predictions, metrics = evaluate_records(
            predictor, records, images, settings, config.generation.batch_size, progress=True, positions=positions
        )
    if not predictions:
        cli.fail(f"{data}: no record could be evaluated ({metrics['errors']} errors, {metrics['skipped']} skipped)")
    metrics.update(checkpoint=args.checkpoint, gguf=args.gguf, server=args.server, data=str(data), generation=asdict(settings),
                   produced_by={"model": identity, "generation": asdict(settings), **shard_label(args.shard)})
    return write_merged_results(output, predictions, metrics)


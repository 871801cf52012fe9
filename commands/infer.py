"""Ask the VQA model about images: one question, an interactive session, or a batch.

examples:
  # one question, the answer streams to the terminal
  python infer.py --checkpoint checkpoints/run --image cat.jpg --question "What is on the sofa?"
  # interactive: one question per line about the same image (empty line, "exit" or EOF ends)
  python infer.py --checkpoint checkpoints/run --image cat.jpg
  # batch pre-annotation: one JSON line per image, resumable, low-confidence answers flagged
  python infer.py --checkpoint checkpoints/run --images photos/ --question "What is this?" --output out.jsonl
  python infer.py --checkpoint checkpoints/run --images data/merged/qa.json --output out.jsonl
  # the same batch on two GPUs (--shard I/N: every N-th item from the I-th), then merged
  CUDA_VISIBLE_DEVICES=0 python infer.py --checkpoint ckpt --images photos/ --question "..." --shard 0/2 --output s0.jsonl
  python infer.py --images photos/ --question "..." --merge-shards s0.jsonl s1.jsonl --output out.jsonl
  # the same questions asked of an OpenAI-compatible server (vLLM, transformers serve)
  python infer.py --server http://localhost:8000 --image cat.jpg --question "What is on the sofa?"
  # ... or of a GGUF export through llama.cpp (export.py --format gguf; needs llama-cpp-python)
  python infer.py --gguf exports/run-gguf --image cat.jpg --question "What is on the sofa?"

--checkpoint takes a training checkpoint (checkpoint-N), a run directory (its newest complete
checkpoint) or an export directory written by export.py. Generation settings come from the
generation section of the config (--config, default ./config.yaml when it exists) and the flags
above, which win over the config.

batch output (--output FILE.jsonl), one line per image (or per record of a merged qa.json):
  {"image": "photos/a.jpg", "question": "...", "answer": "...", "confidence": -0.21, "review": false}
  {"image": "photos/b.jpg", "question": "...", "answer": "maybe a cat", "confidence": -0.9, "review": true,
   "flags": ["low_confidence", "hedge:maybe"]}
  {"image": "photos/broken.jpg", "question": "...", "error": "photos/broken.jpg: not a readable image (...)"}
  {"image": "photos/c.jpg", "question": "...", "error": "http://...: HTTP 500: ...", "retry": true}

confidence is the mean log-probability of the answer's tokens; review is true (and flags says why)
when it is below generation.review_threshold (low_confidence), when the answer holds one of
generation.review_words (hedge:WORD), is empty, or is longer than generation.review_max_chars
(too_long). Review the flagged answers with: python gui.py --review out.jsonl

The file's first line records what produced its answers ({"produced_by": {"model": ...,
"generation": ...}}: a checkpoint's or GGUF export's fingerprint, or the server and model name).
Lines are appended and fsynced batch by batch; re-running the same command skips what the file
already answers (and repairs a last line cut off by a crash), so an interrupted run is resumed by
running it again. A re-run with another model or other generation settings stops with one line
saying what differs (--overwrite starts the file again). A question the server failed on (an HTTP
error, an error inside the stream, a reply without an answer, a connection cut mid-answer) is an
error line with "retry": true, asked again by every run; other errors with --retry-errors.

exit status: 0 done; 2 bad input (a missing or unreadable image, a folder without images, an empty
question, a directory that is not a checkpoint), with one line on stderr; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import cli

EXIT_WORDS = {"exit", "quit", ":q"}


def print_streamed(predictor, image, question: str, settings) -> str:
    pieces = []
    for piece in predictor.stream(image, question, settings):
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces)


def interactive(predictor, image, settings) -> None:
    from errors import UserError

    tty = sys.stdin.isatty()
    if tty:
        print("Ask about the image; an empty line, 'exit' or Ctrl-D ends.", file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # bad bytes reach the check below, not a traceback
    while True:
        if tty:
            sys.stdout.write("question> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        question = line.strip()
        if not line or not question or question.lower() in EXIT_WORDS:
            return
        try:
            question.encode("utf-8")
            print_streamed(predictor, image, question, settings)
        except (UnicodeEncodeError, UserError) as exc:  # say why, then ask for the next question
            reason = "not valid UTF-8 text" if isinstance(exc, UnicodeEncodeError) else str(exc)
            print(f"error: {reason}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser_from_doc(__doc__)
    cli.add_model_arguments(parser)
    inputs = parser.add_argument_group("input")
    which = inputs.add_mutually_exclusive_group()
    which.add_argument("--image", metavar="PATH", help="one image: answer --question, or ask interactively")
    which.add_argument("--images", metavar="DIR_OR_QA_JSON",
                       help="batch: a folder of images (with --question) or a merged qa.json (its questions)")
    inputs.add_argument("--question", metavar="TEXT",
                        help="the question (with --images DIR: asked of every image; with qa.json: replaces the records')")
    inputs.add_argument("--output", metavar="FILE.jsonl", help="batch output, appended to and resumed from")
    inputs.add_argument("--retry-errors", action="store_true", help="batch: ask again where the output holds an error")
    inputs.add_argument("--shard", type=cli.shard_argument, metavar="I/N",
                        help="batch: answer only every N-th item from the I-th (I from 0 to N-1), e.g. one per GPU")
    inputs.add_argument("--merge-shards", nargs="+", metavar="FILE.jsonl",
                        help="batch: combine the --output files of the --shard 0/N .. N-1/N runs over the same "
                             "--images into --output, as one whole run writes it (no model is loaded)")
    inputs.add_argument("--overwrite", action="store_true",
                        help="batch: start --output again instead of resuming (needed when it was written by "
                             "another model or other generation settings)")
    inputs.add_argument("--review-threshold", type=cli.finite_float,
                        help="generation.review_threshold: flag answers whose confidence is below it")
    cli.add_generation_arguments(parser)
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    if args.image is None and args.images is None:
        cli.fail("give --image PATH (one image) or --images DIR_OR_QA_JSON (a batch)")
    if args.question is not None:
        cli.text_argument(args.question, "--question")
        if not args.question.strip():
            cli.fail("the question is empty")
    if args.images is not None and not args.output:
        cli.fail("--images needs --output FILE.jsonl")
    if args.output and args.images is None:
        cli.fail("--output is only used with --images (a batch)")
    if (args.shard or args.merge_shards) and args.images is None:
        cli.fail("--shard and --merge-shards are for a batch (--images)")
    if not args.merge_shards:
        cli.check_model_arguments(args)


def ask_one_image(args: argparse.Namespace, config) -> int:
    cli.check_image(args.image)
    settings = cli.sampling_settings(config, args)
    predictor = cli.load_predictor(args)
    with cli.on_interrupt("stopped; nothing was written"):
        if args.question is not None:
            print_streamed(predictor, args.image, args.question.strip(), settings)
        else:
            interactive(predictor, args.image, settings)
    return 0


def answer_batch(args: argparse.Namespace, config) -> int:
    from atomic import check_writable, write_text
    from dataset.produced_by import shard_label, start_or_resume
    from inference.batch import collect_items, merge_shards, run_batch

    from inference.flags import ReviewRules

    rules = ReviewRules.from_config(config.generation, args.review_threshold)
    items = collect_items(args.images, args.question.strip() if args.question else None)
    output = Path(args.output)
    if output.is_dir():
        cli.fail(f"{output}: is a directory; --output takes a .jsonl file")
    check_writable(output)
    if args.merge_shards:
        lines, counts = merge_shards([Path(f) for f in args.merge_shards], items)
        if output.exists() and not args.overwrite:
            cli.fail(f"{output}: exists (pass --overwrite to replace it with the merged answers)")
        write_text(output, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        print(f"{counts['answered']} answered, {counts['errors']} errors, {counts['review']} flagged for review, "
              f"{counts['missing']} in no shard -> {output}", file=sys.stderr)
        return 0
    if args.shard:
        items = items[args.shard[0]::args.shard[1]]
    settings = cli.sampling_settings(config, args)
    produced_by = {"model": cli.model_identity(args), "generation": asdict(settings), **shard_label(args.shard)}
    # Refuse to mix answers of another model or settings before the model loads.
    start_or_resume(output, produced_by, overwrite=args.overwrite)
    predictor = cli.load_predictor(args, concurrency=config.generation.batch_size, confidence=True)
    try:
        with cli.on_interrupt(f"what was answered is in {output}; run the same command again to resume"):
            counts = run_batch(predictor, items, output, settings, config.generation.batch_size, rules,
                               args.retry_errors, produced_by=produced_by)
    except OSError as exc:
        cli.fail(f"{output}: {exc}")
    print(
        f"{counts['answered']} answered, {counts['errors']} errors, {counts['review']} flagged for review "
        f"({rules.describe()}), {counts['skipped']} already in {output}",
        file=sys.stderr,
    )
    return 0


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    config = cli.generation_config(args)
    if args.image is not None:
        return ask_one_image(args, config)
    return answer_batch(args, config)


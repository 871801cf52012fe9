#!/usr/bin/env python
"""Ask the VQA model about images: one question, an interactive session, or a batch.

    # one question, the answer streams to the terminal
    python infer.py --checkpoint checkpoints/run --image cat.jpg --question "What is on the sofa?"
    # interactive: one question per line about the same image (empty line, "exit" or EOF ends)
    python infer.py --checkpoint checkpoints/run --image cat.jpg
    # batch pre-annotation: one JSON line per image, resumable, low-confidence answers flagged
    python infer.py --checkpoint checkpoints/run --images photos/ --question "What is this?" --output out.jsonl
    python infer.py --checkpoint checkpoints/run --images data/merged/qa.json --output out.jsonl
    # the same questions asked of an OpenAI-compatible server (vLLM, transformers serve)
    python infer.py --server http://localhost:8000 --image cat.jpg --question "What is on the sofa?"

``--checkpoint`` takes a training checkpoint (``checkpoint-N``), a run directory (its newest
checkpoint) or an export directory written by ``export.py``. Generation settings come from the
``generation`` section of the config (``--config``, default ``config.yaml`` when it exists) and
the flags below, which win over the config.

Batch output (``--output FILE.jsonl``), one line per image (or per record of a merged
``qa.json``)::

    {"image": "photos/a.jpg", "question": "...", "answer": "...", "confidence": -0.21, "review": false}
    {"image": "photos/broken.jpg", "question": "...", "error": "photos/broken.jpg: not a readable image (...)"}

``confidence`` is the mean log-probability of the answer's tokens; ``review`` is true when it is
below ``generation.review_threshold``. Lines are appended and fsynced batch by batch; re-running
the same command skips what the file already answers (and repairs a last line cut off by a crash),
so an interrupted run is resumed by running it again. Errors are retried with ``--retry-errors``.

Bad input (a missing or unreadable image, a folder without images, an empty question, a directory
that is not a checkpoint) ends the script with exit status 2 and one line on stderr.

Heavy imports (torch, transformers) happen only after the arguments and inputs were checked, so a
mistake on the command line is reported at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from config import add_config_arguments, config_from_args, fail, run_cli

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_TOKEN = "<|extra_0|>"
EXIT_WORDS = {"exit", "quit", ":q"}


# --------------------------------------------------------------------------------------------
# Arguments shared with evaluate.py
# --------------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser, server: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", metavar="DIR",
                       help="training checkpoint (checkpoint-N), run directory (newest checkpoint) or export directory")
    if server:
        group.add_argument("--server", metavar="URL",
                           help="ask an OpenAI-compatible server (POST URL/v1/chat/completions) instead of a checkpoint")
        group.add_argument("--model", metavar="NAME",
                           help="model name sent to --server (default: the first one GET /v1/models lists)")
    group.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda when available, else cpu)")
    group.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                       help="weights dtype (default: as the checkpoint was trained/exported)")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default=None)
    for action in parser._actions:
        if action.dest == "config":
            action.help = "YAML configuration file (default: ./config.yaml when it exists, else built-in defaults)"
    group = parser.add_argument_group("generation (override the config's generation section)")
    group.add_argument("--max-new-tokens", type=int, help="generation.max_new_tokens")
    group.add_argument("--temperature", type=float, help="generation.temperature (sampling only)")
    group.add_argument("--top-p", type=float, help="generation.top_p (sampling only)")
    group.add_argument("--top-k", type=int, help="generation.top_k (sampling only; 0: off)")
    sampling = group.add_mutually_exclusive_group()
    sampling.add_argument("--sample", dest="do_sample", action="store_true", default=None,
                          help="sample instead of greedy decoding")
    sampling.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding")
    group.add_argument("--seed", type=int, help="generation.seed (sampling only)")
    group.add_argument("--batch-size", type=int, help="generation.batch_size: questions per batched generation")


def load_config(args: argparse.Namespace):
    """The config named by --config, else ./config.yaml when present, else the built-in defaults."""
    if args.config is None and Path("config.yaml").is_file():
        args.config = "config.yaml"
    config = config_from_args(args)
    if args.batch_size is not None:
        config.generation.batch_size = args.batch_size
    if config.generation.batch_size < 1:
        fail(f"generation.batch_size must be at least 1, got {config.generation.batch_size}")
    return config


def sampling_settings(config, args: argparse.Namespace):
    """``SamplingSettings`` from the config's generation section with the flags on top."""
    from model.generation import SamplingSettings

    try:
        settings = SamplingSettings.from_config(
            config.generation, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_p=args.top_p, top_k=args.top_k, do_sample=args.do_sample, seed=args.seed,
        )
    except ValueError as exc:
        fail(str(exc))
    if not settings.do_sample and any(v is not None for v in (args.temperature, args.top_p, args.top_k)):
        print("note: --temperature/--top-p/--top-k only apply with --sample; decoding greedily", file=sys.stderr)
    return settings


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def precheck_checkpoint(path: str) -> None:
    """Fail fast (before importing torch) on a path that cannot be a checkpoint at all."""
    p = Path(path)
    if not p.is_dir():
        fail(f"{path}: no such checkpoint directory")
    if (p / "config.json").is_file():
        return
    if any(c.name.startswith("checkpoint-") and (c / "config.json").is_file() for c in p.iterdir() if c.is_dir()):
        return
    fail(f"{path}: not a checkpoint (no config.json) and holds no checkpoint-N directory")


def load_predictor(args: argparse.Namespace, concurrency: int = 8):
    """A local :class:`Predictor` for ``--checkpoint`` or a :class:`RemotePredictor` for ``--server``."""
    if getattr(args, "server", None):
        from model.remote import RemoteError, RemotePredictor

        try:
            return RemotePredictor(args.server, args.model, concurrency=concurrency)
        except RemoteError as exc:
            fail(str(exc))
    import torch

    from model.predictor import Predictor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        fail(f"--device {device}: not usable here ({one_line(exc)})")
    try:
        return Predictor.from_checkpoint(args.checkpoint, dtype=args.dtype, device=device)
    except (FileNotFoundError, ValueError, OSError, KeyError) as exc:
        message = one_line(exc)
        fail(message if str(Path(args.checkpoint)) in message else f"{args.checkpoint}: cannot load: {message}")


def check_model_arguments(args: argparse.Namespace) -> None:
    if getattr(args, "server", None):
        if args.checkpoint:
            fail("give either --checkpoint or --server, not both")
        if not args.server.startswith(("http://", "https://")):
            fail(f"{args.server}: the server URL must start with http:// or https://")
    elif not args.checkpoint:
        fail("--checkpoint DIR is required" + (" (or --server URL)" if hasattr(args, "server") else ""))
    else:
        precheck_checkpoint(args.checkpoint)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def check_image(path: str | Path) -> None:
    """Fail (exit 2) unless ``path`` is a readable image; PIL only, so it runs before torch loads."""
    from PIL import Image

    p = Path(path)
    if not p.exists():
        fail(f"{path}: no such image file")
    if p.is_dir():
        fail(f"{path}: is a directory, not an image (use --images DIR for a folder)")
    try:
        with Image.open(p) as image:
            image.load()
    except Exception as exc:  # PIL raises many types for damaged files
        fail(f"{path}: not a readable image ({one_line(exc) or type(exc).__name__})")


@dataclass
class Item:
    """One question to answer in a batch run."""

    image: str  # path as written to the output
    question: str
    record_id: str | None = None
    error: str | None = None  # known before generation (e.g. a record whose image is not in the table)

    def key(self) -> tuple:
        return item_key(self.record_id, self.image, self.question)

    def head(self) -> dict:
        out = {"id": self.record_id} if self.record_id is not None else {}
        out.update(image=self.image, question=self.question)
        return out


def item_key(record_id, image, question) -> tuple:
    if record_id is not None:
        return ("id", str(record_id), question)
    return ("image", os.path.realpath(image) if image else "", question)


def first_turn_question(record: dict, image_token: str = IMAGE_TOKEN) -> str:
    for message in record.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", "")).replace(image_token, "").strip()
    return ""


def first_turn_answer(record: dict) -> str | None:
    for message in record.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "assistant":
            return str(message.get("content", "")).strip()
    return None


def read_merged(qa_file: str | Path) -> tuple[list[dict], dict[str, Path]]:
    """Records of a merged ``qa.json`` and the image table of the ``images.json`` beside it
    (key: ``str(image_id)``; paths resolved against the table's directory). Fails with one line."""
    qa_file = Path(qa_file)
    table_file = qa_file.parent / "images.json"
    if not table_file.is_file():
        fail(f"{qa_file}: no images.json beside it (expected {table_file}; run process_image.py)")
    try:
        records = json.loads(qa_file.read_text(encoding="utf-8"))
        table = json.loads(table_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        fail(f"{qa_file.parent}: unreadable merged data: {one_line(exc)}")
    if not isinstance(records, list) or not isinstance(table, dict):
        fail(f"{qa_file}: expected a JSON list of records and {table_file} a JSON object")
    return records, image_paths(table, table_file.parent)


def image_paths(table: dict, base: Path) -> dict[str, Path]:
    """``images.json`` contents -> ``{str(image_id): path}``, paths joined to the table's folder."""
    images = {}
    for key, entry in table.items():
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            images[str(key)] = Path(os.path.normpath(base / entry["path"]))
    return images


def images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by extension, hidden files skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(root) / name)
    return sorted(found)


def collect_items(images_arg: str, question: str | None) -> list[Item]:
    """The batch: every image of a folder (one ``question``), or every record of a merged
    ``qa.json`` (its first user turn, unless ``question`` overrides it)."""
    source = Path(images_arg)
    if source.is_dir():
        if question is None:
            fail("--question is required with --images DIR")
        files = images_in(source)
        if not files:
            fail(f"{images_arg}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this directory")
        return [Item(str(f), question) for f in files]
    if not source.exists():
        fail(f"{images_arg}: no such directory or data file")
    if source.suffix.lower() != ".json":
        fail(f"{images_arg}: --images takes a directory of images or a merged qa.json")
    records, table = read_merged(source)
    items = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            items.append(Item("", question or "", f"#{index}", "not a JSON object"))
            continue
        record_id = str(record.get("id", f"#{index}"))
        q = question if question is not None else first_turn_question(record)
        path = table.get(str(record.get("image_id")))
        if path is None:
            items.append(Item("", q, record_id, f"image_id {record.get('image_id')!r} is not in images.json"))
        elif not q:
            items.append(Item(str(path), q, record_id, "the record has no question (user turn)"))
        else:
            items.append(Item(str(path), q, record_id))
    if not items:
        fail(f"{images_arg}: holds no records")
    return items


# --------------------------------------------------------------------------------------------
# Resumable JSONL output
# --------------------------------------------------------------------------------------------


def repair_jsonl(path: Path) -> int:
    """Cut a last line that a crash left without its newline; return the bytes dropped."""
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Find the last newline, reading backwards in blocks.
        pos, keep = size, 0
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def read_done(path: Path, retry_errors: bool) -> tuple[set, int]:
    """Keys already in the output (answers, and errors unless ``retry_errors``), bad line count."""
    done, bad = set(), 0
    if not path.is_file():
        return done, bad
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if "answer" in entry or ("error" in entry and not retry_errors):
                    done.add(item_key(entry.get("id"), entry.get("image"), entry.get("question")))
            except (ValueError, AttributeError, TypeError):
                bad += 1
    return done, bad


def append_lines(f, entries: list[dict]) -> None:
    """Append whole lines and make them durable before the next batch starts."""
    if not entries:
        return
    f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    f.flush()
    os.fsync(f.fileno())


def answer_entry(item: Item, text: str, confidence: float | None, threshold: float) -> dict:
    entry = item.head()
    entry["answer"] = text
    if confidence is None or not math.isfinite(confidence):
        entry["confidence"] = None
        entry["review"] = True
    else:
        entry["confidence"] = round(confidence, 6)
        entry["review"] = confidence < threshold
    return entry


def run_batch(predictor, items: list[Item], output: Path, settings, batch_size: int, threshold: float,
              retry_errors: bool = False) -> dict:
    """Answer every item not yet in ``output``; returns counts."""
    from tqdm import tqdm

    from visual.preprocess import load_image

    output.parent.mkdir(parents=True, exist_ok=True)
    dropped = repair_jsonl(output)
    if dropped:
        print(f"note: {output}: dropped a truncated last line ({dropped} bytes) left by an interrupted run",
              file=sys.stderr)
    done, bad = read_done(output, retry_errors)
    if bad:
        print(f"note: {output}: {bad} unreadable line(s) ignored", file=sys.stderr)
    pending, seen = [], set(done)
    for item in items:
        if item.key() not in seen:
            seen.add(item.key())
            pending.append(item)
    counts = {"total": len(items), "skipped": len(items) - len(pending), "answered": 0, "errors": 0, "review": 0}
    with open(output, "a", encoding="utf-8") as f, tqdm(total=len(pending), unit="img", dynamic_ncols=True,
                                                        desc="answering", file=sys.stderr) as bar:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            entries: list[dict | None] = [None] * len(chunk)  # written in input order
            ready, images = [], []
            for i, item in enumerate(chunk):
                if item.error is not None:
                    entries[i] = {**item.head(), "error": item.error}
                    continue
                try:
                    images.append(load_image(item.image))
                    ready.append(i)
                except ValueError as exc:
                    entries[i] = {**item.head(), "error": one_line(exc)}
            if ready:
                answers = predictor.answer(images, [chunk[i].question for i in ready], settings)
                for i, answer in zip(ready, answers):
                    entries[i] = answer_entry(chunk[i], answer.text, answer.mean_logprob, threshold)
                    counts["review"] += entries[i]["review"]
            counts["answered"] += len(ready)
            counts["errors"] += len(chunk) - len(ready)
            append_lines(f, entries)
            bar.update(len(chunk))
    return counts


# --------------------------------------------------------------------------------------------
# Single question and interactive session
# --------------------------------------------------------------------------------------------


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
    tty = sys.stdin.isatty()
    if tty:
        print("Ask about the image; an empty line, 'exit' or Ctrl-D ends.", file=sys.stderr)
    while True:
        if tty:
            sys.stdout.write("question> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        question = line.strip()
        if not line or not question or question.lower() in EXIT_WORDS:
            return
        print_streamed(predictor, image, question, settings)


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Ask the VQA model about images (one question, interactive, or a batch to JSONL).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    inputs = parser.add_argument_group("input")
    which = inputs.add_mutually_exclusive_group()
    which.add_argument("--image", metavar="PATH", help="one image: answer --question, or ask interactively")
    which.add_argument("--images", metavar="DIR_OR_QA_JSON",
                       help="batch: a folder of images (with --question) or a merged qa.json (its questions)")
    inputs.add_argument("--question", metavar="TEXT",
                        help="the question (with --images DIR: asked of every image; with qa.json: replaces the records')")
    inputs.add_argument("--output", metavar="FILE.jsonl", help="batch output, appended to and resumed from")
    inputs.add_argument("--retry-errors", action="store_true", help="batch: ask again where the output holds an error")
    inputs.add_argument("--review-threshold", type=float,
                        help="generation.review_threshold: flag answers whose confidence is below it")
    add_generation_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image is None and args.images is None:
        fail("give --image PATH (one image) or --images DIR_OR_QA_JSON (a batch)")
    if args.question is not None and not args.question.strip():
        fail("the question is empty")
    if args.images is not None and not args.output:
        fail("--images needs --output FILE.jsonl")
    if args.output and args.images is None:
        fail("--output is only used with --images (a batch)")
    check_model_arguments(args)
    config = load_config(args)
    remote_errors: tuple = ()
    if args.server:
        from model.remote import RemoteError

        remote_errors = (RemoteError,)
    threshold = args.review_threshold if args.review_threshold is not None else config.generation.review_threshold

    if args.image is not None:
        check_image(args.image)
        settings = sampling_settings(config, args)
        predictor = load_predictor(args)
        try:
            if args.question is not None:
                print_streamed(predictor, args.image, args.question.strip(), settings)
            else:
                interactive(predictor, args.image, settings)
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        except remote_errors as exc:
            fail(str(exc))
        return 0

    items = collect_items(args.images, args.question.strip() if args.question else None)
    output = Path(args.output)
    if output.is_dir():
        fail(f"{output}: is a directory; --output takes a .jsonl file")
    settings = sampling_settings(config, args)
    predictor = load_predictor(args, concurrency=config.generation.batch_size)
    try:
        counts = run_batch(predictor, items, output, settings, config.generation.batch_size, threshold,
                           args.retry_errors)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was answered is in {output}; run the same command again to resume",
              file=sys.stderr)
        return 130
    except remote_errors as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{output}: {one_line(exc)}")
    print(
        f"{counts['answered']} answered, {counts['errors']} errors, {counts['review']} flagged for review "
        f"(confidence < {threshold}), {counts['skipped']} already in {output}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    run_cli(main)

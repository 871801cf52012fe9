#!/usr/bin/env python
"""The GGUF export in llama.cpp vs our own model: answers, log-probs, accuracy and speed on the CPU.

    .venv/bin/python bench/gguf_parity.py --checkpoint checkpoints/demo-dpo --limit 200 --threads 1

Exports ``--checkpoint`` as f32, q8_0 and q4_k_m (``exporters.gguf``; q4_k_m by llama.cpp's own
quantizer), answers the first ``--limit`` held-out demo questions greedily through each
(``inference.gguf.GGUFPredictor``: llama-cpp-python, the export's template) and through our model
(``inference.predictor.Predictor``, float32), one question at a time with the same thread count:

- agreement: llama.cpp's answer == ours;
- VQA accuracy of both against the ground truth (``evaluation.vqa_metric``);
- the first answer token's log-probability, llama.cpp's vs ours from a plain forward pass (where
  the first tokens agree): the largest difference;
- median milliseconds per answer (image encoding, prompt, answer tokens);
- decoding speed: ``--decode-tokens`` answer tokens with the end of turn banned, tokens per second
  (median of 5, prompt and image included).

``--stretch F`` asks about non-square copies of the images, F times as wide (the effect of
``model.image_aspect``: our squash restores the square the model saw, llama.cpp letterboxes).

A fixed workload: the demo's held-out file and checkpoint are fixed once ``make demo-dpo`` has run.
Needs llama-cpp-python and gguf (``make gguf``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

TYPES = ("f32", "q8_0", "q4_k_m")


def held_out(qa_file: Path, limit: int) -> list[dict]:
    from dataset.records import first_turn_question, image_path, load_merged
    from evaluation.records import ground_truth

    records, images = load_merged(qa_file)
    items = []
    for record in records:
        question, answers, image = first_turn_question(record), ground_truth(record), image_path(record, images)
        if question and answers and image is not None and image.is_file():
            items.append({"question": question, "answers": answers, "image": image})
        if len(items) == limit:
            break
    return items


def stretched(items: list[dict], factor: float, directory: Path) -> list[dict]:
    """The items with their images resized to ``factor`` times their width (PNG copies)."""
    from PIL import Image

    out = []
    for n, item in enumerate(items):
        image = Image.open(item["image"]).convert("RGB")
        path = directory / f"stretched-{n}.png"
        image.resize((round(image.width * factor), image.height), Image.BICUBIC).save(path)
        out.append({**item, "image": path})
    return out


def ours(checkpoint: str, items: list[dict]) -> list[dict]:
    """Greedy answers, seconds per answer and the first answer token's log-probability (a plain
    forward pass: our decoding loop also masks the image placeholder, llama.cpp does not)."""
    from inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, dtype="float32", device="cpu")
    rows = []
    for item in items:
        start = time.perf_counter()
        answer = predictor.answer([item["image"]], [item["question"]])[0]
        seconds = time.perf_counter() - start
        ids, _, pixels = predictor.prepare([item["image"]], [item["question"]])
        with torch.inference_mode():
            hidden = predictor.model.decoder(inputs_embeds=predictor.model.embed(ids, pixels)).last_hidden_state
            logprobs = predictor.model.lm_head(hidden[:, -1]).float().log_softmax(-1)[0]
        first = answer.token_ids[0] if answer.token_ids else None
        rows.append({"answer": answer.text, "seconds": seconds, "first_token": predictor.tokenizer.decode([first]) if first is not None else "",
                     "first_logprob": float(logprobs[first]) if first is not None else None})
    return rows


def llama(directory: Path, items: list[dict], threads: int) -> list[dict]:
    from inference.gguf import GGUFPredictor

    predictor = GGUFPredictor(directory, logprobs=True, threads=threads)
    rows = []
    try:
        for item in items:
            start = time.perf_counter()
            reply = predictor.complete(predictor.payload(item["image"], item["question"]))
            seconds = time.perf_counter() - start
            choice = reply["choices"][0]
            content = (choice.get("logprobs") or {}).get("content") or [{}]
            rows.append({"answer": (choice["message"]["content"] or "").strip(), "seconds": seconds,
                         "first_token": content[0].get("token", ""), "first_logprob": content[0].get("logprob")})
    finally:
        predictor.close()
    return rows


def ours_decode(checkpoint: str, item: dict, tokens: int) -> float:
    from bench.fixed_length import ours as fixed
    from inference.predictor import Predictor

    answer = fixed(Predictor.from_checkpoint(checkpoint, dtype="float32", device="cpu"), item["image"], item["question"])
    times = []
    for _ in range(5):
        start = time.perf_counter()
        answer(tokens)
        times.append(time.perf_counter() - start)
    return tokens / statistics.median(times)


def llama_decode(directory: Path, item: dict, tokens: int, threads: int) -> float:
    from bench.fixed_length import llama as fixed
    from inference.gguf import GGUFPredictor

    predictor = GGUFPredictor(directory, threads=threads)
    answer = fixed(predictor, item["image"], item["question"])
    times = []
    try:
        for _ in range(6):  # the first call also sets llama.cpp's multimodal context up: not timed
            start = time.perf_counter()
            answer(tokens)
            times.append(time.perf_counter() - start)
    finally:
        predictor.close()
    return tokens / statistics.median(times[1:])


def summary(kind: str, items, mine, theirs) -> dict:
    from evaluation.vqa_metric import vqa_accuracy

    n = len(items)
    diffs = [abs(t["first_logprob"] - m["first_logprob"]) for m, t in zip(mine, theirs)
             if t["first_logprob"] is not None and m["first_logprob"] is not None and t["first_token"] == m["first_token"]]
    return {
        "type": kind,
        "agree": 100 * sum(m["answer"] == t["answer"] for m, t in zip(mine, theirs)) / n,
        "vqa_llama": 100 * sum(vqa_accuracy(t["answer"], i["answers"]) for i, t in zip(items, theirs)) / n,
        "vqa_ours": 100 * sum(vqa_accuracy(m["answer"], i["answers"]) for i, m in zip(items, mine)) / n,
        "max_first_logprob_diff": max(diffs) if diffs else float("nan"),
        "ms_llama": 1000 * statistics.median(t["seconds"] for t in theirs),
        "ms_ours": 1000 * statistics.median(m["seconds"] for m in mine),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/demo-dpo")
    parser.add_argument("--qa", type=Path, default=ROOT / "data/demo/heldout/qa.json")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="for llama.cpp and torch alike (default: %(default)s)")
    parser.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES)
    parser.add_argument("--decode-tokens", type=int, default=64, help="fixed-length decoding speed (0: skip)")
    parser.add_argument("--stretch", type=float, default=1.0, help="ask about images this many times as wide")
    args = parser.parse_args()

    from exporters.gguf import export

    torch.set_num_threads(args.threads)
    items = held_out(args.qa, args.limit)
    results = []
    with tempfile.TemporaryDirectory(prefix="gguf-parity-") as tmp:
        if args.stretch != 1.0:
            items = stretched(items, args.stretch, Path(tmp))
        mine = ours(args.checkpoint, items)
        for kind in args.types:
            directory = Path(tmp) / kind
            export(args.checkpoint, directory, quantize=kind, warn=lambda message: print(f"warning: {message}"))
            results.append(summary(kind, items, mine, llama(directory, items, args.threads)))
            if args.decode_tokens:
                results[-1]["tok_s_llama"] = llama_decode(directory, items[0], args.decode_tokens, args.threads)
    speed = ours_decode(args.checkpoint, items[0], args.decode_tokens) if args.decode_tokens else float("nan")
    shape = f", images {args.stretch:g}x as wide" if args.stretch != 1.0 else ""
    print(f"{args.checkpoint}, {len(items)} held-out questions{shape}, {args.threads} thread(s), greedy")
    decode = f" {args.decode_tokens}-token answers, tok/s llama.cpp / ours |" if args.decode_tokens else ""
    print(f"| type | answers equal to ours | VQA acc. llama.cpp / ours | max first-token log-prob diff "
          f"| ms per answer llama.cpp / ours |{decode}")
    print("|---|---|---|---|---|" + ("---|" if decode else ""))
    for r in results:
        print(f"| {r['type']} | {r['agree']:.1f}% | {r['vqa_llama']:.1f} / {r['vqa_ours']:.1f} | "
              f"{r['max_first_logprob_diff']:.1e} | {r['ms_llama']:.1f} / {r['ms_ours']:.1f} |"
              + (f" {r['tok_s_llama']:.0f} / {speed:.0f} |" if decode else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Is the confidence worth reviewing by? Wrong answers caught by flagging the least confident.

    make demo    # once: trains checkpoints/demo-run and writes data/demo/heldout
    .venv/bin/python bench/review_calibration.py [--checkpoint checkpoints/demo-run]

The review loop (gui.py --review) shows a person the lowest-confidence answers first. That only
saves work if the wrong answers gather there. On the demo checkpoint's held-out split (500
questions, greedy, what ``infer.py --images qa.json`` does) this script reports, for several
confidence signals, the share of all wrong answers found among the lowest 10 / 20 / 30 % (against
flagging at random, which finds 10 / 20 / 30 %) and the AUROC of the signal for "the answer is
wrong" (0.5: no better than chance). Signals, all from the generated tokens' log-probabilities:

- ``mean``: mean token log-probability (what ``infer.py`` writes as ``confidence``);
- ``min``: the least likely generated token;
- ``first``: the first token's log-probability;
- ``margin``: the smallest gap between the two most likely tokens over the answer's steps.

An answer is wrong when its VQA accuracy against the record's answers is below 1.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARES = (0.10, 0.20, 0.30)


def auroc(scores: list[float], positive: list[bool]) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney U)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = sum(positive)
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    rank_sum = sum(r for r, p in zip(ranks, positive) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def caught(confidence: list[float], wrong: list[bool], share: float, rng: random.Random) -> float:
    """Share of the wrong answers among the ``share`` least confident (ties broken at random)."""
    n = round(len(confidence) * share)
    keys = [(c, rng.random()) for c in confidence]
    flagged = sorted(range(len(confidence)), key=lambda i: keys[i])[:n]
    return sum(wrong[i] for i in flagged) / max(1, sum(wrong))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo-run")
    parser.add_argument("--heldout", default="data/demo/heldout/qa.json")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threshold", type=float, default=-0.5, help="generation.review_threshold to report")
    args = parser.parse_args()

    import torch

    from dataset.records import first_turn_question, image_path, load_merged
    from evaluation.records import ground_truth
    from evaluation.vqa_metric import vqa_accuracy
    from inference.generation import SamplingSettings, stream_generate
    from inference.predictor import Predictor
    from visual.preprocess import load_image

    if not Path(args.checkpoint).exists() or not Path(args.heldout).exists():
        raise SystemExit(f"{args.checkpoint} or {args.heldout} is missing: run `make demo` first")
    torch.manual_seed(0)
    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    records, table = load_merged(args.heldout)
    settings = SamplingSettings(max_new_tokens=16)
    signals: dict[str, list[float]] = {"mean": [], "min": [], "first": [], "margin": []}
    wrong: list[bool] = []
    head = predictor.model.lm_head
    margins: list[torch.Tensor] = []

    def record_margin(module, inputs, output):  # the decoding loop's logits pass through lm_head
        top = output.float().log_softmax(-1).topk(2, dim=-1).values
        margins.append(top[..., 0] - top[..., 1])

    # The CPU decoding loop multiplies by a transposed copy of the head; use the module instead so
    # the hook sees every step's logits (same numbers, slower).
    handle = head.register_forward_hook(record_margin)
    import inference.generation as generation

    generation._MAX_TRANSPOSED_HEAD_BYTES = -1
    try:
        for start in range(0, len(records), args.batch_size):
            chunk = records[start:start + args.batch_size]
            ids, mask, pixels = predictor.prepare([load_image(image_path(r, table)) for r in chunk],
                                                  [first_turn_question(r) for r in chunk])
            margins.clear()
            tokens, logprobs, alive = [], [], []
            for step, lp, active in stream_generate(predictor.model, ids, pixels, mask, settings,
                                                    predictor.eos_token_ids, predictor.tokenizer.pad_token_id):
                tokens.append(step)
                logprobs.append(lp)
                alive.append(active)
            step_margins = torch.stack(margins)  # [steps, batch]: lm_head runs once per decoding step
            for row, record in enumerate(chunk):
                steps = [t for t in range(len(tokens)) if bool(alive[t][row])]
                seq = [int(tokens[t][row]) for t in steps]
                lps = [float(logprobs[t][row]) for t in steps]
                text = predictor.decode(seq)
                wrong.append(vqa_accuracy(text, ground_truth(record)) < 1.0)
                signals["mean"].append(sum(lps) / len(lps))
                signals["min"].append(min(lps))
                signals["first"].append(lps[0])
                signals["margin"].append(min(float(step_margins[t][row]) for t in steps))
    finally:
        handle.remove()

    rng = random.Random(0)
    n_wrong = sum(wrong)
    print(f"{args.checkpoint} on {args.heldout}: {len(wrong)} answers, {n_wrong} wrong "
          f"({100 * n_wrong / len(wrong):.1f}%)")
    print(f"{'signal':8s} " + " ".join(f"lowest {int(s * 100)}%" for s in SHARES) + "   AUROC")
    print(f"{'random':8s} " + " ".join(f"{100 * s:9.0f}%" for s in SHARES) + "    0.500")
    for name, values in signals.items():
        shares = [caught(values, wrong, s, rng) for s in SHARES]
        # Low confidence should mean wrong: score "wrong" by minus the signal.
        area = auroc([-v for v in values], wrong)
        print(f"{name:8s} " + " ".join(f"{100 * s:9.1f}%" for s in shares) + f"    {area:.3f}")
    wrong_conf = sorted(m for m, w in zip(signals["mean"], wrong) if w)
    print("mean log-prob of the wrong answers: " + ", ".join(f"{m:.3f}" for m in wrong_conf))
    flagged = [m < args.threshold for m in signals["mean"]]
    print(f"review_threshold {args.threshold}: {sum(flagged)} flagged ({100 * sum(flagged) / len(flagged):.1f}%), "
          f"holding {sum(f and w for f, w in zip(flagged, wrong))} of the {n_wrong} wrong answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())

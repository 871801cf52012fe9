#!/usr/bin/env python
"""Questions/s of a benchmark run: local batch 1 vs batch 8 vs a served export with 8 in flight.

    .venv/bin/python bench/benchmark_speed.py [--questions 32] [--repeats 3]

What ``evaluate.py --benchmark`` spends its time on once the model is loaded: the runner's
``answer_all`` (image loading, prompts, generation, the resumable predictions.jsonl) over
VQAv2-style questions about 640x480 photos, 8 new tokens at most. The fixed workload of
bench/workload.py (728 image tokens, the real Qwen2.5 vocabulary and tokenizer, small widths)
as a LoRA checkpoint, and its LLaVA export served by ``transformers serve`` on this machine's CPU
(vLLM needs a GPU). Alternating, medians of the repeats, each run into a fresh output directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tools.servers import free_port, start, stop, transformers_serve_command

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from bench.first_answer import build_workload
    from bench.workload import write_photo
    from evaluation.benchmarks.base import SHORT_ANSWER, Question
    from evaluation.benchmarks.runner import answer_all
    from inference.generation import SamplingSettings
    from inference.predictor import Predictor
    from inference.remote import RemotePredictor

    work = Path(tempfile.mkdtemp(prefix="benchmark-speed-"))
    server = None
    try:
        checkpoint, export, _ = build_workload(work)
        photos = [write_photo(work / f"photo{i}.jpg", seed=i) for i in range(8)]
        asks = ["What colour is the car?", "How many people are there?", "Is there a dog?", "What is on the table?"]
        questions = [Question(str(i), photos[i % len(photos)], asks[i % len(asks)]) for i in range(args.questions)]
        settings = SamplingSettings(max_new_tokens=8)
        local = Predictor.from_checkpoint(checkpoint, device="cpu")
        port = free_port()
        server, url, _ = start(transformers_serve_command(export, port), port, work / "serve.log", timeout=300)
        remote = RemotePredictor(url, str(export), concurrency=8)
        runs = {"local, batch 1": (local, 1), "local, batch 8": (local, 8), "server, 8 in flight": (remote, 8)}
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name, (predictor, batch) in runs.items():
                out = work / f"out-{repeat}-{name.replace(' ', '').replace(',', '')}"
                begun = time.perf_counter()
                produced_by = {"bench": name, "generation": {"max_new_tokens": settings.max_new_tokens}}
                answers, _ = answer_all(predictor, questions, out, settings, batch, SHORT_ANSWER, produced_by)
                elapsed = time.perf_counter() - begun
                assert len(answers) == len(questions)
                if repeat:
                    rates[name].append(len(questions) / elapsed)
        print(f"{args.questions} questions, 8 new tokens at most, {args.repeats} repeats, {os.cpu_count()} CPUs")
        base = statistics.median(rates["local, batch 1"])
        for name, values in rates.items():
            rate = statistics.median(values)
            print(f"{name:22s} {rate:6.2f} questions/s ({rate / base:.2f}x batch 1)")
    finally:
        stop(server)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

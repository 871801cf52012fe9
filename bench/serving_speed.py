#!/usr/bin/env python
"""Serving speed on this CPU: vLLM vs ``transformers serve`` vs local batched generation.

    .venv/bin/python bench/serving_speed.py [--questions 24] [--repeats 2]

The fixed workload of bench/workload.py (so400m-384's 729 image positions, the real Qwen2.5
vocabulary and tokenizer, small widths: 4 heads of 32, which vLLM's CPU attention serves) as a LoRA
checkpoint and its LLaVA export; the same questions about 640x480 photos, 8 new tokens, greedy.
Measured: each server's start-up (process start to ``/health``), the first answer's latency (one
question, nothing else in flight), and answers/s with 1, 4 and 8 questions in flight -- for vLLM
and ``transformers serve`` through the project's client (``RemotePredictor``, the one infer.py and
evaluate.py use), locally as batches of 1, 4 and 8 (``Predictor.answer``). Every measurement is
repeated (``--repeats``, both shown); the servers run one at a time. Needs ``.venv-vllm``
(``make serve-check`` builds it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.first_answer import build_workload  # noqa: E402
from bench.workload import write_photo  # noqa: E402
from tools.servers import free_port, start, stop, transformers_serve_command, vllm_command  # noqa: E402

CONCURRENCY = (1, 4, 8)
ASKS = ["What colour is the car?", "How many people are there?", "Is there a dog?", "What is on the table?"]


def rates(answer, images, questions, repeats: int) -> tuple[list[float], dict[int, list[float]]]:
    """(first-answer seconds per repeat, {in flight: answers/s per repeat}); ``answer(images,
    questions, n)`` answers with ``n`` at a time. One unmeasured round first (warm-up)."""
    answer(images[:1], questions[:1], 1)
    first, per = [], {n: [] for n in CONCURRENCY}
    for _ in range(repeats):
        begun = time.perf_counter()
        answer(images[:1], questions[:1], 1)
        first.append(time.perf_counter() - begun)
        for n in CONCURRENCY:
            begun = time.perf_counter()
            answer(images, questions, n)
            per[n].append(len(questions) / (time.perf_counter() - begun))
    return first, per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from inference.generation import SamplingSettings
    from inference.predictor import Predictor
    from inference.remote import RemotePredictor

    work = Path(tempfile.mkdtemp(prefix="serving-speed-"))
    results = {}
    try:
        checkpoint, export, _ = build_workload(work)
        photos = [write_photo(work / f"photo{i}.jpg", seed=i) for i in range(8)]
        images = [photos[i % len(photos)] for i in range(args.questions)]
        questions = [ASKS[i % len(ASKS)] for i in range(args.questions)]
        settings = SamplingSettings(max_new_tokens=8)

        begun = time.perf_counter()
        local = Predictor.from_checkpoint(checkpoint, device="cpu")
        load = time.perf_counter() - begun

        def local_answer(imgs, qs, n):
            for s in range(0, len(qs), n):
                local.answer(imgs[s:s + n], qs[s:s + n], settings)

        results["local (batches)"] = (load, *rates(local_answer, images, questions, args.repeats))
        local = None  # its memory back before the servers start
        for name, command in (("vLLM", lambda port: vllm_command(export, port, "bench")),
                              ("transformers serve", lambda port: transformers_serve_command(export, port))):
            port = free_port()
            proc = None
            try:
                proc, url, started = start(command(port), port, work / f"{name}.log")
                remote = RemotePredictor(url, "bench" if name == "vLLM" else str(export), timeout=600)

                def remote_answer(imgs, qs, n, remote=remote):
                    remote.concurrency = n
                    for reply in remote.answer(imgs, qs, settings):
                        if reply.error:
                            raise RuntimeError(f"{name}: {reply.error}")

                results[name] = (started, *rates(remote_answer, images, questions, args.repeats))
            finally:
                stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.questions} questions, 8 new tokens, greedy; {os.cpu_count()} CPUs; {args.repeats} repeats each")
    print("| | start-up (s) | first answer (s) | " + " | ".join(f"{n} in flight (answers/s)" for n in CONCURRENCY) + " |")
    print("|---" * (3 + len(CONCURRENCY)) + "|")
    for name, (startup, first, per) in results.items():
        cells = [" / ".join(f"{v:.2f}" for v in per[n]) for n in CONCURRENCY]
        print(f"| {name} | {startup:.0f} | {' / '.join(f'{v:.2f}' for v in first)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

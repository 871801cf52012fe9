"""A demo training step on the CPU with glibc's default malloc vs ``training.memory.keep_freed_memory``.

The demo model and settings of ``configs/demo.yaml`` (full fine-tune of the LM with its embeddings
and head frozen, tower frozen), batch 32 of demo-style one-word answers. Both settings run in one
process, alternating every step (``mallopt`` switches them back and forth), and the medians are
compared. glibc only.

    python bench/cpu_malloc.py [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.train_step import make_batch, step_fn  # noqa: E402
from training.memory import M_MMAP_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory  # noqa: E402


def glibc_defaults(libc) -> None:
    """glibc's documented defaults (128 KiB thresholds, 65,536 mmapped blocks)."""
    libc.mallopt(M_MMAP_MAX, 65536)
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from config import ModelSettings, TrainSettings
    from model import VQAModel
    from qwen import load_tokenizer
    from tools.build_tiny_checkpoints import build_all

    libc = ctypes.CDLL("libc.so.6")
    paths = build_all()
    torch.manual_seed(0)
    model = VQAModel.from_settings(ModelSettings(vision_model=str(paths["demo-siglip"]), language_model=str(paths["demo-qwen3"]),
                                                 vision_feature_select="full", system_prompt="", dtype="float32"))
    model.configure_training("full", train_embeddings=False)
    model.train()
    batch = make_batch(model, load_tokenizer(str(paths["demo-qwen3"])), args.batch)
    step = step_fn(model, [p for p in model.parameters() if p.requires_grad], batch)
    settings = {"glibc default": lambda: glibc_defaults(libc),
                "keep_freed_memory": lambda: keep_freed_memory(TrainSettings(use_cpu=True))}
    times = {k: [] for k in settings}
    for _ in range(2):
        step()
    for _ in range(args.repeats):
        for name, apply in settings.items():
            apply()
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    print(f"batch {args.batch}, {supervised} supervised tokens, {args.threads} threads, {args.repeats} repeats")
    for name, ms in med.items():
        print(f"{name:18s} median {ms:.1f} ms/step")
    print(f"speed-up = {med['glibc default'] / med['keep_freed_memory']:.2f}x")


if __name__ == "__main__":
    main()

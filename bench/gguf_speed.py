#!/usr/bin/env python
"""Answer speed at the real checkpoints' shapes on the CPU: a GGUF export in llama.cpp vs our model.

    .venv/bin/python bench/gguf_speed.py --threads 2

Random weights in the shapes of ``google/siglip-so400m-patch14-384`` (27 layers, width 1152, 729
patches of a 384-px image) and ``Qwen/Qwen2.5-0.5B-Instruct`` (24 layers, width 896, the 151,936-row
vocabulary), wired as ``config.yaml`` does (``drop_first``: 728 image tokens), saved as a checkpoint,
exported with ``exporters.gguf`` (f16, q8_0, q4_k_m) and asked one question about one 384-px image:

- time to the first answer token (image encoding, prompt prefill, one step), median of ``--repeats``;
- decoding speed: ``--tokens`` answer tokens with the end of turn banned, tokens per second after
  the first (from the difference of the two timings).

Ours: ``inference.predictor.Predictor`` in float32 (what ``infer.py`` runs on a CPU) and bfloat16;
llama.cpp: ``inference.gguf.GGUFPredictor``. Same thread count for both. Needs ``make gguf``; about
12 GB of memory and 10 minutes on 2 cores.
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

SO400M = dict(image_size=384, patch_size=14, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
              num_attention_heads=16, layer_norm_eps=1e-6, vision_use_head=False)
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
                  pad_token_id=151643)
QUESTION = "What is in the picture?"


def build_checkpoint(root: Path) -> Path:
    """Random bases in the real shapes and a VQA checkpoint wired from them (LoRA, as trained)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from config import LoraSettings, ModelSettings
    from model import VQAModel
    from tools.build_tiny_checkpoints import _copy_tokenizer

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(**SO400M)).save_pretrained(root / "tower")
    Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)).save_pretrained(root / "lm")
    _copy_tokenizer(root / "lm")
    model = VQAModel.from_settings(ModelSettings(vision_model=str(root / "tower"), language_model=str(root / "lm"),
                                                 dtype="float32", system_prompt=""))
    lora = LoraSettings()
    model.configure_training("lora", {"r": lora.r, "alpha": lora.alpha, "dropout": 0.0,
                                      "target_modules": lora.target_modules})
    model.save_pretrained(root / "checkpoint")
    from qwen import load_tokenizer

    load_tokenizer(str(root / "lm")).save_pretrained(root / "checkpoint")
    return root / "checkpoint"


def timed(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours(checkpoint: Path, image: Path, dtype: str, tokens: int, repeats: int) -> tuple[float, float]:
    from bench.fixed_length import ours as fixed
    from inference.predictor import Predictor

    answer = fixed(Predictor.from_checkpoint(checkpoint, dtype=dtype, device="cpu"), image, QUESTION)
    answer(1)  # warm-up
    first = timed(lambda: answer(1), repeats)
    whole = timed(lambda: answer(tokens), repeats)
    return first, (tokens - 1) / (whole - first)


def llama(directory: Path, image: Path, tokens: int, repeats: int, threads: int) -> tuple[float, float]:
    from bench.fixed_length import llama as fixed
    from inference.gguf import GGUFPredictor

    predictor = GGUFPredictor(directory, threads=threads)
    answer = fixed(predictor, image, QUESTION)
    try:
        answer(1)  # warm-up: also sets llama.cpp's multimodal context up
        first = timed(lambda: answer(1), repeats)
        whole = timed(lambda: answer(tokens), repeats)
    finally:
        predictor.close()
    return first, (tokens - 1) / (whole - first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=33, help="answer length for the decoding speed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m"], choices=["f32", "f16", "q8_0", "q4_k_m"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from PIL import Image

    from exporters.gguf import export

    rows = []
    with tempfile.TemporaryDirectory(prefix="gguf-speed-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        checkpoint = build_checkpoint(root)
        print(f"built the real-shape checkpoint in {time.perf_counter() - start:.0f} s", flush=True)
        image = root / "image.png"
        Image.effect_noise((384, 384), 64).convert("RGB").save(image)
        for dtype in ("float32", "bfloat16"):
            rows.append((f"ours, {dtype}", *ours(checkpoint, image, dtype, args.tokens, args.repeats)))
            print(rows[-1], flush=True)
        for kind in args.types:
            directory = root / kind
            export(checkpoint, directory, quantize=kind, warn=lambda message: print(f"warning: {message}"))
            rows.append((f"llama.cpp, {kind}", *llama(directory, image, args.tokens, args.repeats, args.threads)))
            print(rows[-1], flush=True)
    print(f"\nso400m-384 + Qwen2.5-0.5B shapes (random weights), 728 image tokens, {args.threads} threads, "
          f"median of {args.repeats}")
    print("| model | first answer token, s | decoding, tokens/s |")
    print("|---|---|---|")
    for name, first, speed in rows:
        print(f"| {name} | {first:.2f} | {speed:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""One question end to end, process start to exit: ``infer.py`` vs a stock transformers script.

    .venv/bin/python bench/first_answer.py              # 5 alternating rounds
    .venv/bin/python bench/first_answer.py --rounds 9 --keep

What a user waits for when they ask one question from the shell: interpreter start, imports,
loading the tokenizer, the tower and the language model, one image, a few greedy tokens, exit.
The workload is fixed (bench/workload.py), not taken from the demo: a SigLIP tower with
so400m-384's token count (728 image tokens with ``drop_first``) but a small width, a 2-layer Qwen2
with the real 151,936-token vocabulary and the real Qwen2.5 tokenizer, random weights, a LoRA
checkpoint of them and its LLaVA export (``export.py``), a 640x480 JPEG photo. Three commands are timed in turn, each round in a new process:

- ``ours/checkpoint``: ``python infer.py --checkpoint CHECKPOINT --image IMG --question Q``
- ``ours/export``:     the same with ``--checkpoint EXPORT``
- ``stock/export``:    15 lines of transformers (``AutoProcessor`` + ``LlavaForConditionalGeneration``
  + ``generate``) on the export, the reference

Medians over the rounds and the ratios against the stock script are printed (results:
bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

QUESTION = "What colour is the square?"
NEW_TOKENS = 8
STOCK = """
import sys
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

path, image, question, new_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
processor = AutoProcessor.from_pretrained(path)
model = LlavaForConditionalGeneration.from_pretrained(path).eval()
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=text, images=[Image.open(image).convert("RGB")], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
"""


def build_workload(work: Path) -> tuple[Path, Path, Path]:
    """A LoRA checkpoint of the fixed bases (bench/workload.py), its export, and a photo."""
    from bench.workload import build_bases, write_photo
    from config import ModelSettings
    from exporters.llava import export
    from model import VQAModel

    vision, text = build_bases(work)
    model = VQAModel.from_settings(ModelSettings(vision_model=str(vision), language_model=str(text), dtype="float32"))
    model.configure_training("lora", {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    checkpoint = work / "checkpoint"
    model.save_pretrained(checkpoint)
    model.tokenizer.save_pretrained(checkpoint)
    export(checkpoint, work / "export", dtype="float32")
    return checkpoint, work / "export", write_photo(work / "photo.jpg", seed=0)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{done.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the temporary workload directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="first-answer-"))
    try:
        checkpoint, export_dir, image = build_workload(work)
        stock = work / "stock.py"
        stock.write_text(STOCK)
        ask = ["--image", str(image), "--question", QUESTION, "--max-new-tokens", str(NEW_TOKENS), "--config", os.devnull]
        commands = {
            "ours/checkpoint": [sys.executable, "infer.py", "--checkpoint", str(checkpoint), *ask],
            "ours/export": [sys.executable, "infer.py", "--checkpoint", str(export_dir), *ask],
            "stock/export": [sys.executable, str(stock), str(export_dir), str(image), QUESTION, str(NEW_TOKENS)],
        }
        for cmd in commands.values():  # warm the page cache once
            timed(cmd)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                times[name].append(timed(cmd))
        med = {name: statistics.median(values) for name, values in times.items()}
        print(f"{args.rounds} rounds, medians (process start to exit):")
        for name, seconds in med.items():
            print(f"  {name:16s} {seconds:6.2f} s   {seconds / med['stock/export']:.2f}x stock")
    finally:
        if args.keep:
            print(f"workload kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

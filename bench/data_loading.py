"""Samples/s through our dataset + collate vs a per-sample transformers loop, on photo-sized data.

    .venv/bin/python bench/data_loading.py [--records 256] [--repeats 3]

Fixed workload (bench/workload.py): 640x480 JPEG photos (one per 4 records, as LLaVA-Instruct
reuses COCO images), resized to SigLIP-so400m's 384 px; 728 image tokens per sample; the real
Qwen2.5 tokenizer; LLaVA-Instruct-like conversations, half with a ~60-word answer (detail /
complex reasoning), half with a 1-3 word answer (VQA). The raw LLaVA file is merged by the real
merge (dataset.merge.run).

Reference, per sample: PIL decode + transformers' ``SiglipImageProcessor`` (384 px), the
tokenizer's ``apply_chat_template(tokenize=True)`` on the conversation with the placeholder
expanded to the 728 image tokens, then the same padding (``Collator``). Ours: ``VQADataset`` +
``Collator`` through a ``DataLoader`` with 0 and 2 persistent workers (as the Trainer runs it), one
epoch each after a warm-up epoch. Alternating, medians of the repeats;
rates per core put next to what one H100 trains at (bench/RESULTS.md, bench/gpu_train.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.workload import IMAGE_SIZE, PATCH_SIZE, write_photo  # noqa: E402

IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 - 1  # drop_first: 728
H100_SAMPLES_PER_S = (45, 115)  # bench/RESULTS.md: Qwen2.5-0.5B/1.5B + so400m, LoRA/full, one H100
WORDS = ("the a man woman dog cat red blue green small large left right table street car two three "
         "standing sitting holding near behind front of with on in and is are picture image shows").split()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def write_data(work: Path, records: int, seed: int = 0) -> Path:
    """Photos, a raw LLaVA-format file, and its merge; returns the merged qa.json."""
    from config import Config, DataSettings, SourceSettings
    from dataset.merge import run

    rng = random.Random(seed)
    images = work / "images"
    images.mkdir()
    photos = [write_photo(images / f"{i:06d}.jpg", seed + i).name for i in range((records + 3) // 4)]
    raw = []
    for i in range(records):
        answer = sentence(rng, 60) if i % 2 else rng.choice(["yes", "two", "red", "on the left"])
        raw.append({"id": str(i), "image": photos[i // 4], "conversations": [
            {"from": "human", "value": "<image>\n" + sentence(rng, rng.randint(8, 20))[:-1] + "?"},
            {"from": "gpt", "value": answer}]})
    (work / "raw.json").write_text(json.dumps(raw))
    config = Config(data=DataSettings(sources=[SourceSettings(type="llava", annotations=str(work / "raw.json"),
                                                              image_dir=str(images))],
                                      output_dir=str(work / "merged")))
    run(config)
    return work / "merged" / "qa.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from PIL import Image
    from transformers import SiglipImageProcessor

    from dataset import Collator, VQADataset
    from dataset.records import image_path, load_merged
    from qwen import PromptRenderer, load_tokenizer
    from tools.build_tiny_checkpoints import build_tokenizer
    from visual.preprocess import ImagePreprocessor

    work = Path(tempfile.mkdtemp(prefix="data-loading-"))
    try:
        qa = write_data(work, args.records)
        tok = load_tokenizer(str(build_tokenizer()))
        renderer = PromptRenderer(tok, IMAGE_TOKENS)
        preprocess = ImagePreprocessor(size=IMAGE_SIZE)
        records, images = load_merged(qa)
        collate = Collator(tok.pad_token_id)
        processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        expanded = "<|extra_0|>" * IMAGE_TOKENS

        def reference() -> int:
            n = 0
            for start in range(0, len(records), args.batch):
                items = []
                for r in records[start:start + args.batch]:
                    image = Image.open(image_path(r, images)).convert("RGB")
                    pixels = processor(image, return_tensors="pt")["pixel_values"][0]
                    msgs = [{"role": m["role"], "content": m["content"].replace("<|extra_0|>", expanded)}
                            for m in r["messages"]]
                    ids = torch.tensor(tok.apply_chat_template([{"role": "system", "content": ""}] + msgs,
                                                               tokenize=True)["input_ids"])
                    items.append({"input_ids": ids, "labels": ids.clone(), "pixel_values": pixels})
                collate(items)
                n += len(items)
            return n

        dataset = VQADataset(qa, renderer, preprocess, 2048, system_prompt="", show_progress=False)

        def ours(workers: int):
            # As the Trainer builds it: persistent workers (dataloader_persistent_workers), so an
            # epoch does not pay for starting them; the warm-up epoch below starts them.
            loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, collate_fn=collate,
                                                 num_workers=workers, persistent_workers=workers > 0)

            def run() -> int:
                return sum(len(b["input_ids"]) for b in loader)
            return run

        runs = {"transformers per-sample": reference, "ours, 0 workers": ours(0), "ours, 2 workers": ours(2)}
        rates: dict[str, list[float]] = {k: [] for k in runs}
        for f in runs.values():  # warm-up: page cache, started workers
            f()
        for _ in range(args.repeats):
            for name, f in runs.items():
                start = time.perf_counter()
                n = f()
                rates[name].append(n / (time.perf_counter() - start))
        med = {name: statistics.median(r) for name, r in rates.items()}
        base = med["transformers per-sample"]
        print(f"{len(records)} records ({len(records) // 4} 640x480 JPEGs -> {IMAGE_SIZE} px, {IMAGE_TOKENS} image "
              f"tokens), batch {args.batch}, {args.repeats} repeats, {os.cpu_count()} CPUs, "
              f"torch {torch.get_num_threads()} threads")
        for name, rate in med.items():
            cores = 2 if "2 workers" in name else 1
            print(f"{name:26s} {rate:7.1f} samples/s ({base and rate / base:.2f}x)  {rate / cores:6.1f} per core  "
                  f"cores to feed one H100 at {H100_SAMPLES_PER_S[0]}-{H100_SAMPLES_PER_S[1]} samples/s: "
                  f"{H100_SAMPLES_PER_S[0] * cores / rate:.1f}-{H100_SAMPLES_PER_S[1] * cores / rate:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

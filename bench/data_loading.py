"""Samples/s through our dataset + collate vs a per-sample transformers loop.

Reference: for every record, transformers' ``SiglipImageProcessor`` on the image and the
tokenizer's ``apply_chat_template(tokenize=True)`` on the conversation (placeholder expanded to
the image tokens), then the same padding. Ours: ``VQADataset`` + ``Collator`` through a
``DataLoader`` with 0 and 2 workers. Both read the same merged synthetic data; medians of repeats.

    python bench/data_loading.py [--records 512] [--repeats 3]
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
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import subprocess

    from PIL import Image

    from transformers import SiglipImageProcessor

    from config import ModelSettings
    from dataset import Collator, VQADataset
    from dataset.records import load_merged
    from model import VQAModel
    from qwen import PromptRenderer, load_tokenizer
    from tools.build_tiny_checkpoints import build_all
    from tools.make_demo_data import build_demo_data

    paths = build_all()
    work = Path(tempfile.mkdtemp())
    build_demo_data(work / "demo", num_train=args.records, num_eval=10, image_size=64, seed=0)
    sources = "[{type: llava, annotations: %s, image_dir: %s}]" % (work / "demo/raw/llava_train.json", work / "demo/images")
    subprocess.run([sys.executable, "process_image.py", "--config", "configs/demo.yaml", "--set", f"data.sources={sources}",
                    "--set", f"data.output_dir={work / 'merged'}"], cwd=ROOT, check=True, capture_output=True)
    qa = work / "merged" / "qa.json"
    model = VQAModel.from_settings(ModelSettings(vision_model=str(paths["demo-siglip"]), language_model=str(paths["demo-qwen2"]),
                                                 dtype="float32"))
    tok = load_tokenizer(str(paths["demo-qwen2"]))
    n_img = model.config.num_image_tokens
    renderer = PromptRenderer(tok, n_img)
    preprocess = model.vision_tower.preprocessor
    records, images = load_merged(qa)
    collate = Collator(tok.pad_token_id)
    processor = SiglipImageProcessor(size={"height": preprocess.size, "width": preprocess.size})

    def reference() -> int:
        n = 0
        for start in range(0, len(records), args.batch):
            items = []
            for r in records[start:start + args.batch]:
                pixels = processor(Image.open(images[str(r["image_id"])]).convert("RGB"), return_tensors="pt")["pixel_values"][0]
                msgs = [{"role": m["role"], "content": m["content"].replace("<|extra_0|>", "<|extra_0|>" * n_img)} for m in r["messages"]]
                ids = tok.apply_chat_template([{"role": "system", "content": ""}] + msgs, tokenize=True)["input_ids"]
                ids = torch.tensor(ids)
                items.append({"input_ids": ids, "labels": ids.clone(), "pixel_values": pixels})
            collate(items)
            n += len(items)
        return n

    built = VQADataset(qa, renderer, preprocess, 512, system_prompt="", show_progress=False)

    def ours(workers: int, rebuild: bool = False):
        def run() -> int:
            ds = VQADataset(qa, renderer, preprocess, 512, system_prompt="", show_progress=False) if rebuild else built
            loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, collate_fn=collate, num_workers=workers)
            return sum(len(b["input_ids"]) for b in loader)
        return run

    runs = {"transformers per-sample": reference, "ours, 0 workers": ours(0), "ours, 2 workers": ours(2),
            "ours, 0 workers + build": ours(0, rebuild=True)}
    rates = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, f in runs.items():
            start = time.perf_counter()
            n = f()
            rates[name].append(n / (time.perf_counter() - start))
    base = statistics.median(rates["transformers per-sample"])
    print(f"{len(records)} records, batch {args.batch}, {args.repeats} repeats (an epoch; '+ build' also tokenizes the whole data set first)")
    for name, r in rates.items():
        print(f"{name:26s} {statistics.median(r):8.1f} samples/s  ({statistics.median(r) / base:.2f}x)")


if __name__ == "__main__":
    main()

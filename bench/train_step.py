"""One training step of our model vs transformers' LlavaForConditionalGeneration.

    .venv/bin/python bench/train_step.py [--repeats 20] [--threads 2]

Identical weights and batch on the fixed workload of bench/workload.py: so400m-384's 728 image
tokens per sample, the real 151,936-row Qwen vocabulary, small hidden sizes; batch 8, ~760 tokens
per sample of which a short answer (answer word + <|im_end|>) is supervised; the pretrain stage
(projector trains, gradients flow through the whole LM). A step is forward + backward + AdamW.
Both models run side by side in one process, alternating, and the medians are compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def llava_with_weights(model):
    """transformers' Llava holding exactly our weights (the mapping export.py uses)."""
    from exporters.llava import to_llava

    return to_llava(model)


def make_batch(model, tokenizer, batch_size: int, seed: int = 0):
    from dataset import Collator
    from qwen import PromptRenderer, record_messages

    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens)
    g = torch.Generator().manual_seed(seed)
    questions = ["What color is the triangle?", "How many shapes are there?", "Is there a red square?",
                 "Where is the green circle?"]
    answers = ["red", "3", "no", "left"]
    items = []
    for i in range(batch_size):
        r = renderer.render(record_messages(
            [{"role": "user", "content": "<|extra_0|>\n" + questions[i % 4] + " Answer with one word, please."},
             {"role": "assistant", "content": answers[i % 4]}], system_prompt=""))
        size = model.vision_tower.preprocessor.size
        items.append({"input_ids": torch.tensor(r.input_ids), "labels": torch.tensor(r.labels),
                      "pixel_values": torch.randn(3, size, size, generator=g)})
    return Collator(tokenizer.pad_token_id)(items)


def step_fn(model, params, batch):
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench.workload import workload_model

    ours = workload_model()
    ours.configure_training("projector")
    ours.train()
    reference = llava_with_weights(ours).train()
    reference.requires_grad_(False)
    reference.model.multi_modal_projector.requires_grad_(True)
    batch = make_batch(ours, ours.tokenizer, args.batch)
    tokens = int(batch["attention_mask"].sum()) / args.batch
    supervised = int((batch["labels"][:, 1:] != -100).sum())

    with torch.no_grad():  # same loss from both: the comparison is of one computation
        a = ours(**batch).loss.item()
        b = reference(**batch).loss.item()
    assert abs(a - b) < 1e-4, (a, b)

    steps = {
        "ours": step_fn(ours, [p for p in ours.parameters() if p.requires_grad], batch),
        "llava": step_fn(reference, [p for p in reference.parameters() if p.requires_grad], batch),
    }
    times = {k: [] for k in steps}
    for _ in range(3):
        for f in steps.values():
            f()
    for _ in range(args.repeats):
        for name, f in steps.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"batch {args.batch}, {tokens:.0f} tokens/sample, {supervised} supervised tokens, vocab "
          f"{ours.config.text_vocab_size}, {args.threads} threads, {args.repeats} repeats")
    print(f"ours  median {med['ours']:.1f} ms/step")
    print(f"llava median {med['llava']:.1f} ms/step")
    print(f"ratio ours/llava = {med['ours'] / med['llava']:.3f}")


if __name__ == "__main__":
    main()

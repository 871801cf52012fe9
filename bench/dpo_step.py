"""One DPO training step vs one SFT step on the same batch.

    .venv/bin/python bench/dpo_step.py [--repeats 20] [--batch 8] [--threads 2]

The fixed workload of bench/workload.py (728 image tokens, the real 151,936-row vocabulary, small
hidden sizes). The model is set up as a dpo run sets it up: LoRA (r 16) on the language model,
projector and tower frozen. The SFT step trains on B (image, question, chosen answer) rows; the
DPO step on the same B pairs plus a rejected answer each: 2B rows, the tower once per image, and
the reference pass with the adapter off (no gradient), through the real ``DPOTrainer.compute_loss``.
Both are forward + backward + AdamW, alternating in one process; medians are compared.
Goal (issue 19): DPO <= 2.2x SFT (twice the rows, one image pass, plus a forward-only reference).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

QUESTIONS = ["What color is the triangle?", "How many shapes are there?", "Is there a red square?",
             "Where is the green circle?"]
CHOSEN = ["red", "3", "no", "left"]
REJECTED = ["blue", "5", "yes", "right"]


def make_items(model, batch_size: int, seed: int = 0) -> list[dict]:
    """Preference items as dataset/preference.py makes them (chosen and rejected rendered with
    the same prompt, one image each)."""
    from qwen import PromptRenderer, record_messages

    renderer = PromptRenderer(model.tokenizer, model.config.num_image_tokens)
    g = torch.Generator().manual_seed(seed)
    size = model.vision_tower.preprocessor.size
    items = []
    for i in range(batch_size):
        item = {"pixel_values": torch.randn(3, size, size, generator=g)}
        for side, answer in (("chosen", CHOSEN[i % 4]), ("rejected", REJECTED[i % 4])):
            r = renderer.render(record_messages(
                [{"role": "user", "content": "<|extra_0|>\n" + QUESTIONS[i % 4] + " Answer with one word, please."},
                 {"role": "assistant", "content": answer}], system_prompt=""))
            item[f"{side}_input_ids"], item[f"{side}_labels"] = torch.tensor(r.input_ids), torch.tensor(r.labels)
        items.append(item)
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import TrainingArguments

    from bench.workload import workload_model
    from config import DPOSettings, TrainSettings
    from dataset import Collator
    from dataset.collate import PreferenceCollator
    from training.dpo import DPOTrainer

    model = workload_model()
    model.configure_training("lora", {"r": 16, "alpha": 32, "dropout": 0.0,
                                      "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]})
    model.multi_modal_projector.requires_grad_(False)
    model.train()
    with tempfile.TemporaryDirectory(prefix="dpo-step-") as out:
        trainer = DPOTrainer(model=model, args=TrainingArguments(output_dir=out, report_to=[], use_cpu=True),
                             settings=TrainSettings(), group_by_length=False, dpo=DPOSettings())

    items = make_items(model, args.batch)
    pad = model.tokenizer.pad_token_id
    pairs = PreferenceCollator(pad)(items)
    sft = Collator(pad)([{"input_ids": it["chosen_input_ids"], "labels": it["chosen_labels"],
                          "pixel_values": it["pixel_values"]} for it in items])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    calls = {"tower": 0}
    model.vision_tower.register_forward_hook(lambda *_: calls.__setitem__("tower", calls["tower"] + 1))

    def step(loss_fn):
        def run():
            loss_fn().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    # train.dpo.precompute_reference: the reference log-probs come with the batch (values do not matter here)
    stored = {**pairs, "reference_logps": torch.zeros(args.batch, 2)}
    steps = {"sft": step(lambda: model(**sft).loss),
             "dpo": step(lambda: trainer.compute_loss(model, pairs)),
             "dpo_precomputed": step(lambda: trainer.compute_loss(model, stored))}
    for _ in range(3):
        for f in steps.values():
            f()
    calls["tower"] = 0
    steps["dpo"]()
    assert calls["tower"] == 1, calls  # one tower pass for the B images of B pairs (policy and reference)
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, f in steps.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    tokens = int(sft["attention_mask"].sum()) / args.batch
    print(f"batch {args.batch} pairs, {tokens:.0f} tokens/row, vocab {model.config.text_vocab_size}, "
          f"{args.threads} threads, {args.repeats} repeats, LoRA r16, projector frozen")
    print(f"sft median {med['sft']:.1f} ms/step ({args.batch} rows)")
    print(f"dpo median {med['dpo']:.1f} ms/step ({2 * args.batch} rows + adapter-off reference)")
    print(f"dpo with precomputed reference median {med['dpo_precomputed']:.1f} ms/step")
    print(f"ratio dpo/sft = {med['dpo'] / med['sft']:.2f} (goal <= 2.2); precomputed reference "
          f"{med['dpo_precomputed'] / med['sft']:.2f}")


if __name__ == "__main__":
    main()

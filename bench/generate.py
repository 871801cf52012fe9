#!/usr/bin/env python
"""Greedy generation throughput: our KV-cache loop vs ``LlavaForConditionalGeneration.generate``.

    python bench/generate.py                       # batch 1 and 8, 64 new tokens, 7 repeats
    python bench/generate.py --new-tokens 32 --repeats 5 --batch-sizes 1 4 8

Both run in this process on identical weights: our ``VQAModel`` built from the fixed workload of
bench/workload.py (so400m-384's 728 image tokens, so the prefill is what a real one costs at this
width; small hidden sizes; the real 151,936-row Qwen vocabulary, so the vocabulary projection
costs what it costs in a real model of that width; or ``--vision``/``--language`` checkpoints) and
an HF LLaVA holding the same tensors (mapped by name, as in tests/test_model.py). Every call
generates exactly ``--new-tokens`` tokens per row (no early stop: no end-of-turn ids for ours,
``eos_token_id=None`` + ``min_new_tokens`` for HF), from real left-padded prompts and random
pixels. The two are timed alternately (so background load hits both alike); medians over the
repeats are reported as tokens/s and ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

QUESTIONS = [
    "What colour is the square?",
    "How many shapes are there?",
    "Is there a red circle on the left?",
    "Where is the green triangle?",
    "What shape is the blue object in the middle of the picture?",
    "Describe the image.",
    "Is there a yellow square?",
    "What is the colour of the shape on the right side of the image?",
]


def llava_from(model):
    """An HF Llava holding our model's weights (the mapping of tests/test_model.py)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    vision_cfg = model.vision_tower.model.config.to_dict()
    vision_cfg["vision_use_head"] = False
    cfg = LlavaConfig(
        vision_config=vision_cfg, text_config=model.text_config.to_dict(),
        image_token_index=model.config.image_token_id, image_seq_length=model.config.num_image_tokens,
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy="default" if model.config.vision_feature_select == "drop_first" else "full",
        projector_hidden_act="gelu", multimodal_projector_bias=True,
    )
    llava = LlavaForConditionalGeneration(cfg).eval()
    state = {f"model.vision_tower.{k}": v for k, v in model.vision_tower.model.state_dict().items()}
    state.update({f"model.multi_modal_projector.{k}": v for k, v in model.multi_modal_projector.state_dict().items()})
    state.update({f"model.language_model.{k}": v for k, v in model.decoder.state_dict().items()})
    state["lm_head.weight"] = model.lm_head.weight
    missing, unexpected = llava.load_state_dict(state, strict=False)
    assert not unexpected and all(m.startswith("model.vision_tower.post_layernorm") for m in missing), (missing, unexpected)
    return llava


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", help="a SigLIP checkpoint (default: the fixed workload's)")
    parser.add_argument("--language", help="a Qwen checkpoint with its tokenizer (default: the fixed workload's)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--module-head", action="store_true",
                        help="ours without the cached transposed lm_head weight (the module's own h @ W.T)")
    args = parser.parse_args()
    work = None
    if not (args.vision and args.language):
        import tempfile

        from bench.workload import build_bases

        work = Path(tempfile.mkdtemp(prefix="generate-"))
        args.vision, args.language = map(str, build_bases(work))
    if args.threads:
        torch.set_num_threads(args.threads)

    from model import VQAModel
    from config import ModelSettings
    from inference import generation
    from inference.generation import SamplingSettings, generate
    from inference.predictor import Predictor

    if args.module_head:
        generation._MAX_TRANSPOSED_HEAD_BYTES = 0
    torch.manual_seed(0)
    model = VQAModel.from_settings(ModelSettings(vision_model=args.vision, language_model=args.language, dtype="float32")).eval()
    with torch.no_grad():  # a projector that matters (the fresh one is ~0)
        for p in model.multi_modal_projector.parameters():
            p.normal_(0, 0.2)
    tokenizer = model.tokenizer
    if work is not None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    predictor = Predictor(model, tokenizer, system_prompt="")
    llava = llava_from(model)
    settings = SamplingSettings(max_new_tokens=args.new_tokens)
    n = args.new_tokens
    size = model.vision_tower.preprocessor.size

    def ours(ids, mask, pixels):
        result = generate(model, ids, pixels, mask, settings, eos_token_ids=(), pad_token_id=tokenizer.pad_token_id)
        return result.sequences

    def theirs(ids, mask, pixels):
        with torch.inference_mode():
            out = llava.generate(input_ids=ids, pixel_values=pixels, attention_mask=mask, do_sample=False,
                                 max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                 pad_token_id=tokenizer.pad_token_id)
        return out[:, ids.shape[1]:].tolist()

    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"text hidden {model.text_config.hidden_size}, {model.text_config.num_hidden_layers} layers, "
          f"vocab {model.lm_head.weight.shape[0]}, {model.config.num_image_tokens} image tokens; "
          f"{n} new tokens, {args.repeats} repeats; load average {load_before[0]:.2f}"
          + ("; ours with the module's lm_head" if args.module_head else ""))
    rows = {}
    for batch in args.batch_sizes:
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]
        ids, mask = predictor.prompt_batch(questions)
        pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        a, b = ours(ids, mask, pixels), theirs(ids, mask, pixels)  # warm-up, and the same tokens?
        assert all(len(seq) == n for seq in a) and all(len(seq) == n for seq in b)
        same = a == b
        times = {"ours": [], "hf": []}
        for _ in range(args.repeats):
            for name, fn in (("ours", ours), ("hf", theirs)):
                start = time.perf_counter()
                fn(ids, mask, pixels)
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows[batch] = {k: batch * n / v for k, v in med.items()}
        print(f"batch {batch}: ours {rows[batch]['ours']:8.1f} tok/s ({1000 * med['ours'] / n:6.2f} ms/step)  "
              f"HF {rows[batch]['hf']:8.1f} tok/s ({1000 * med['hf'] / n:6.2f} ms/step)  "
              f"ours/HF {rows[batch]['ours'] / rows[batch]['hf']:.2f}x  same tokens: {same}")
    if 1 in rows:
        for batch in rows:
            if batch != 1:
                print(f"batch {batch} vs batch 1 throughput: ours {rows[batch]['ours'] / rows[1]['ours']:.2f}x, "
                      f"HF {rows[batch]['hf'] / rows[1]['hf']:.2f}x")
    load_after = os.getloadavg()
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

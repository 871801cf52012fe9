#!/usr/bin/env python
"""Weight memory of QLoRA (NF4) against bf16 LoRA, for Qwen2.5-0.5B / 1.5B / 7B shapes.

    .venv/bin/python bench/qlora_memory.py                  # 0.5B and 1.5B measured, 7B computed
    .venv/bin/python bench/qlora_memory.py --measure 0.5b

On the CPU (no GPU here): each measured language model is built with the real config and random
weights, saved in bf16, and loaded three ways through the same code the project uses
(``model.quantization``): bf16 (the LoRA base), NF4 with peft's ``prepare_model_for_kbit_training``
alone (every non-quantized parameter upcast to fp32), and NF4 as ``prepare_for_training`` leaves it
(the frozen embedding and head back in bf16). Memory is the bytes of every parameter and buffer.
The SigLIP so400m tower (frozen, bf16) and what trains (LoRA r=16 on all projections + the
projector, fp32 weights, gradients and two Adam moments) are counted from their shapes. For 7B,
loading 15 GB of random weights does not fit a 2-core CPU session: its NF4 weight memory is
computed from the bytes per parameter measured on 0.5B and 1.5B (quantized linear layers vs the
rest). Activations are not measured without a GPU; the estimate for one 921-token sample with
activation checkpointing is printed with its formula.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

GB = 1024 ** 3
# Public configs of the Qwen2.5 instruct models (config.json on the hub), and SigLIP so400m-384.
QWEN = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
              image_size=384, patch_size=14)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENS, SUPERVISED = 921, 128  # bench/gpu_train.py's sample: 728 image + 65 text + 128 answer tokens


def module_bytes(module: torch.nn.Module) -> int:
    """Parameters and buffers, plus the 4-bit layers' quantization states (block scales, the
    double-quantized scales' scales, the code book), which bitsandbytes keeps outside both."""
    tensors = list(module.parameters()) + list(module.buffers())
    for m in module.modules():
        state = getattr(getattr(m, "weight", None), "quant_state", None)
        if state is not None:
            tensors += [t for t in state.as_dict(packed=True).values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def meta_lm(name: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        return Qwen2ForCausalLM(Qwen2Config(**QWEN[name]))


def split_params(lm) -> tuple[int, int]:
    """(parameters of the decoder's linear layers: what 4-bit quantizes, all the others)."""
    linear = sum(m.weight.numel() for n, m in lm.named_modules()
                 if isinstance(m, torch.nn.Linear) and n != "lm_head")
    total = sum(p.numel() for p in lm.parameters())
    return linear, total - linear


def trained_bytes(name: str) -> int:
    """LoRA r=16 on every projection + the projector, fp32: weights, gradients, two Adam moments."""
    cfg, r = QWEN[name], 16
    h, i, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"]
    head_dim = h // cfg["num_attention_heads"]
    shapes = {"q_proj": (h, h), "k_proj": (h, kv * head_dim), "v_proj": (h, kv * head_dim), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    lora = cfg["num_hidden_layers"] * sum(r * (a + b) for a, b in shapes.values())
    projector = SO400M["hidden_size"] * h + h + h * h + h
    return (lora + projector) * 4 * 4


def tower_bytes() -> int:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with torch.device("meta"):
        tower = SiglipVisionModel(SiglipVisionConfig(**SO400M))
    return sum(p.numel() for p in tower.parameters()) * 2  # bf16, frozen


def measure(name: str, work: Path) -> dict[str, float]:
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from model.quantization import bnb_config, prepare_for_training

    torch.manual_seed(0)
    path = work / name
    Qwen2ForCausalLM(Qwen2Config(**QWEN[name])).to(torch.bfloat16).save_pretrained(path)
    out = {}
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    out["bf16"] = module_bytes(lm)
    del lm
    spec = type("Spec", (), dict(quantize="nf4", quantize_double=True, quantize_compute_dtype="bfloat16"))
    for variant in ("nf4 + peft prepare (fp32 embedding/head)", "nf4 + prepare_for_training"):
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, quantization_config=bnb_config(spec))
        if variant.endswith("prepare_for_training"):
            lm = prepare_for_training(lm, torch.bfloat16)
        else:
            lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
        out[variant] = module_bytes(lm)
        del lm
    shutil.rmtree(path)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", nargs="+", default=["0.5b", "1.5b"], choices=["0.5b", "1.5b"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qlora-memory-"))
    tower = tower_bytes()
    per_param: list[tuple[float, float]] = []  # (bytes per quantized param, bytes per other param)
    try:
        print(f"so400m tower (frozen, bf16): {tower / GB:.2f} GiB")
        for name in args.measure:
            measured = measure(name, work)
            linear, other = split_params(meta_lm(name))
            nf4 = measured["nf4 + prepare_for_training"]
            per_param.append(((nf4 - other * 2) / linear, 2.0))
            print(f"\nQwen2.5-{name}: {linear / 1e9:.2f}B quantizable + {other / 1e9:.2f}B other parameters")
            for variant, size in measured.items():
                print(f"  LM weights, {variant:42s} {size / GB:6.2f} GiB")
            print(f"  trained (LoRA r=16 + projector, fp32 with grads and Adam)   {trained_bytes(name) / GB:6.2f} GiB")
        linear, other = split_params(meta_lm("7b"))
        quantized = sum(q for q, _ in per_param) / len(per_param)
        nf4_7b = linear * quantized + other * 2
        cfg = QWEN["7b"]
        # Activation checkpointing keeps each layer's input (seq x hidden, bf16) and recomputes one
        # layer at a time; the recomputed layer's MLP intermediates dominate that layer's memory.
        acts = cfg["num_hidden_layers"] * TOKENS * cfg["hidden_size"] * 2 + 6 * TOKENS * cfg["intermediate_size"] * 2
        logits = SUPERVISED * cfg["vocab_size"] * 4 * 3  # supervised positions only: logits, softmax, grad
        print(f"\nQwen2.5-7b (computed: {quantized:.3f} bytes per quantized parameter as measured above, "
              f"bf16 for the other {other / 1e9:.2f}B):")
        print(f"  LM weights, bf16 {(linear + other) * 2 / GB:6.2f} GiB   nf4 + prepare_for_training {nf4_7b / GB:6.2f} GiB")
        total = nf4_7b + tower + trained_bytes("7b") + acts + logits
        print(f"  + tower {tower / GB:.2f} + trained {trained_bytes('7b') / GB:.2f} + activations (estimate, batch 1, "
              f"{TOKENS} tokens, checkpointing) {acts / GB:.2f} + supervised logits {logits / GB:.2f} "
              f"= {total / GB:.1f} GiB (goal: < 24 GB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

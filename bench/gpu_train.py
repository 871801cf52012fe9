"""Training throughput on one GPU with the real model shapes (random weights: there is no hub).

SigLIP so400m-patch14-384 (728 image tokens: config.yaml's drop_first) + Qwen2.5-0.5B or -1.5B,
built from their published configurations with random weights, saved to a work directory and
loaded through the same ``VQAModel.from_settings`` path training uses. A step is what ``train.py`` runs: bf16 autocast over
fp32 master weights of what trains, activation checkpointing (optional), forward + backward +
AdamW. Reports samples/s, tokens/s, peak memory and model FLOPs utilisation (MFU): model FLOPs
(no recomputation counted) per second over the GPU's dense bf16 peak.

FLOPs per step, T = tokens in the batch, S = sequence length, N = decoder parameters without
the embedding: LM forward 2NT + causal attention 2 L T S d; backward twice the forward for a
full fine-tune, once for LoRA (activation gradients only; adapter weights are negligible); the
LM head only at supervised positions (2 n d V forward); the frozen tower forward only.

    python bench/gpu_train.py --lm 1.5b --finetune full --batch 8
    python bench/gpu_train.py --lm 1.5b --finetune full --batch 12 --compile --no-checkpointing
    python bench/gpu_train.py --lm 0.5b --finetune lora --batch 16
    python bench/gpu_train.py --smoke --batch 2 --answer-tokens 8 --steps 1   # CPU, ~20 s: the script runs

bf16 autocast on a CPU without bf16 units is slow: ``--smoke`` with the default batch takes minutes.

The tokenizer comes from ``checkpoints/qwen2.5-tokenizer`` (``tools/build_tiny_checkpoints.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# Published configurations (config.json of the hub checkpoints), random weights here.
VISION = {
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                   image_size=384, patch_size=14),
    "smoke": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8),
}
TEXT = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True),
}
VOCAB = 151936
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def write_bases(work: Path, vision: str, text: str) -> tuple[Path, Path]:
    """Random-weight base checkpoints in bf16, written once per shape."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    vdir, tdir = work / f"siglip-{vision}", work / f"qwen2.5-{text}"
    if not (vdir / "config.json").is_file():
        cfg = SiglipVisionConfig(vision_use_head=False, **VISION[vision])
        with torch.device(device):
            SiglipVisionModel(cfg).to(torch.bfloat16).save_pretrained(vdir)
        size = cfg.image_size
        SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(vdir)
    if not (tdir / "config.json").is_file():
        cfg = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=32768, rope_theta=1e6, **TEXT[text])
        with torch.device(device):
            Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tdir)
        tokenizer = ROOT / "checkpoints" / "qwen2.5-tokenizer"
        if not tokenizer.is_dir():
            sys.exit(f"error: {tokenizer} missing; run python tools/build_tiny_checkpoints.py first")
        for f in tokenizer.iterdir():
            if f.is_file():
                shutil.copy2(f, tdir / f.name)
    return vdir, tdir


def make_batch(model, batch: int, text_tokens: int, answer_tokens: int, device: str) -> dict[str, torch.Tensor]:
    """``batch`` rows of [image tokens, question text, answer]; the answer (and nothing else) supervised."""
    g = torch.Generator().manual_seed(0)
    n_img, image_id = model.config.num_image_tokens, model.config.image_token_id
    text = torch.randint(0, 151643, (batch, text_tokens + answer_tokens), generator=g)
    ids = torch.cat([torch.full((batch, 1), 151644), torch.full((batch, n_img), image_id), text], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -answer_tokens:] = ids[:, -answer_tokens:]
    size = model.vision_tower.preprocessor.size
    return {
        "input_ids": ids.to(device), "labels": labels.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(batch, 3, size, size, generator=g).to(device),
    }


def model_flops(model, batch: int, seq: int, answer_tokens: int, finetune: str) -> float:
    lm = model.causal_lm.config
    d, L, V = lm.hidden_size, lm.num_hidden_layers, lm.vocab_size
    decoder = sum(p.numel() for n, p in model.decoder.named_parameters() if "embed_tokens" not in n and "lora_" not in n)
    tokens = batch * seq
    forward = 2 * decoder * tokens + 2 * L * tokens * seq * d + 2 * batch * answer_tokens * d * V
    backward = (2.0 if finetune == "full" else 1.0) * forward
    vc = model.vision_tower.model.config
    patches = model.vision_tower.num_positions
    layers = model.vision_tower.layers_to_run
    per_layer = 2 * (4 * vc.hidden_size ** 2 + 2 * vc.hidden_size * vc.intermediate_size)
    vision = batch * (patches * layers * per_layer + layers * 4 * patches ** 2 * vc.hidden_size)
    return forward + backward + vision


KERNEL_KINDS = (  # substrings of CUDA kernel names -> what they do
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "wgmma")),
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("optimizer", ("adam", "multi_tensor")),
    ("cross-entropy", ("softmax", "nll", "log_softmax", "cross_entropy")),
    ("copy/cast", ("copy", "cast", "convert", "to_copy")),
)


def profile(step, sync, steps: int = 3) -> None:
    """Self GPU time of every kernel over ``steps`` steps, grouped by kind, and how much of the
    wall time the GPU was busy (the rest is the host launching work, or waiting)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = time.perf_counter() - start
    # Kernels only: ranges such as "Optimizer.step#AdamW.step" also carry device time (of the
    # kernels inside them), and counting them would count those kernels twice.
    kernels = [e for e in prof.key_averages()
               if e.device_type.name == "CUDA" and not getattr(e, "is_user_annotation", False) and "#" not in e.key]
    total = sum(e.self_device_time_total for e in kernels) / 1e6
    kinds: dict[str, float] = {}
    for e in kernels:
        name = e.key.lower()
        kind = next((k for k, subs in KERNEL_KINDS if any(s in name for s in subs)), "elementwise/other")
        kinds[kind] = kinds.get(kind, 0.0) + e.self_device_time_total / 1e6
    print(f"profile: {steps} steps, wall {wall:.3f} s, GPU kernels {total:.3f} s ({100 * total / wall:.0f}% busy)")
    for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:18s} {seconds / steps * 1e3:8.1f} ms/step  {100 * seconds / total:5.1f}%")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:25]:
        print(f"  {e.self_device_time_total / steps / 1e3:8.2f} ms/step  x{e.count // steps:<5d} {e.key[:110]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", choices=["0.5b", "1.5b"], default="1.5b")
    parser.add_argument("--finetune", choices=["lora", "full"], default="full")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64, help="question tokens after the image")
    parser.add_argument("--answer-tokens", type=int, default=128, help="supervised answer tokens")
    parser.add_argument("--no-checkpointing", action="store_true", help="keep activations (no recomputation)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches of --batch per optimizer step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by GPU name)")
    parser.add_argument("--work", default="/tmp/siglip-qwen-vqa-gpu-bench", help="random base checkpoints go here")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, runs anywhere (checks the script)")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder and tower layer")
    parser.add_argument("--profile", action="store_true", help="print where the GPU time of 3 steps goes")
    args = parser.parse_args()

    from config import ModelSettings
    from model import VQAModel

    cuda = torch.cuda.is_available()
    if args.profile and not cuda:
        parser.error("--profile measures CUDA kernels; it needs a GPU")
    if not cuda and not args.smoke:
        sys.exit("error: no CUDA device (use --smoke to check the script on the CPU)")
    device = "cuda" if cuda else "cpu"
    vision, text = ("smoke", "smoke") if args.smoke else ("so400m", args.lm)
    vdir, tdir = write_bases(Path(args.work), vision, text)
    # config.yaml's layout: last layer, drop_first (728 image tokens for so400m).
    model = VQAModel.from_settings(ModelSettings(vision_model=str(vdir), language_model=str(tdir), dtype="bfloat16"))
    lora = {"r": 16, "alpha": 32, "dropout": 0.05,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    model.configure_training(args.finetune, lora if args.finetune == "lora" else None)
    for param in model.parameters():  # fp32 master weights of what trains, as train.py keeps them
        if param.requires_grad:
            param.data = param.data.float()
    model.to(device).train()
    if not args.no_checkpointing:
        model.activation_checkpointing_enable()
    if args.compile:
        model.compile_layers()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    batch = make_batch(model, args.batch, args.text_tokens, args.answer_tokens, device)
    seq = batch["input_ids"].shape[1]

    def step() -> None:
        for _ in range(args.accum):
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model(**batch).loss
            (loss / args.accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    if args.profile:
        profile(step, sync)
    flops = args.accum * model_flops(model, args.batch, seq, args.answer_tokens, args.finetune)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    result = {
        "device": name, "vision": vision, "lm": text, "finetune": args.finetune, "batch": args.batch, "accum": args.accum,
        "compiled": args.compile,
        "seq_len": seq, "activation_checkpointing": not args.no_checkpointing,
        "trainable_params": sum(p.numel() for p in params), "step_s": round(t, 4),
        "samples_per_s": round(args.accum * args.batch / t, 2),
        "tokens_per_s": round(args.accum * args.batch * seq / t, 1),
        "model_tflops_per_s": round(flops / t / 1e12, 2),
        "mfu": round(flops / t / 1e12 / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

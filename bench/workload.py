"""The benches' fixed workload: base checkpoints and photos whose shapes are written here.

Benches must not move when the demo changes, so they do not use the demo's checkpoints. What
matters for speed is kept at the real checkpoints' sizes: SigLIP-so400m-384's token count (384-px
images, 14-px patches: 729 positions, 728 image tokens with ``drop_first``), Qwen's
151,936-token vocabulary with the real Qwen2.5 tokenizer (built offline by
tools/build_tiny_checkpoints.py), COCO-sized photos (640x480 JPEGs, resized to 384 by the
preprocessing). What only scales the work is small (hidden sizes, layers), so a bench runs in
minutes on a CPU. Weights are random (seeded).
"""

from __future__ import annotations

import shutil
from pathlib import Path

IMAGE_SIZE, PATCH_SIZE = 384, 14  # so400m-384: (384 // 14) ** 2 = 729 positions
VISION = dict(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=2)
TEXT = dict(vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
PHOTO_SIZE = (640, 480)


def build_bases(work: Path, seed: int = 0) -> tuple[Path, Path]:
    """``(vision_dir, text_dir)``: SigLIP and Qwen2 checkpoints (the text one with the tokenizer)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from tools.build_tiny_checkpoints import build_tokenizer

    torch.manual_seed(seed)
    vision_dir, text_dir = work / "siglip", work / "qwen2"
    SiglipVisionModel(SiglipVisionConfig(**VISION)).save_pretrained(vision_dir)
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(vision_dir)
    Qwen2ForCausalLM(Qwen2Config(**TEXT)).save_pretrained(text_dir)
    for f in Path(build_tokenizer()).iterdir():
        shutil.copy2(f, text_dir / f.name)
    return vision_dir, text_dir


def workload_model(seed: int = 0):
    """A float32 :class:`model.VQAModel` of these bases (built in a temporary directory, removed
    once the weights are loaded)."""
    import tempfile

    import torch

    from config import ModelSettings
    from model import VQAModel

    work = Path(tempfile.mkdtemp(prefix="workload-"))
    try:
        vision, text = build_bases(work, seed)
        torch.manual_seed(seed)
        return VQAModel.from_settings(ModelSettings(vision_model=str(vision), language_model=str(text), dtype="float32"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_photo(path: Path, seed: int) -> Path:
    """A 640x480 JPEG (quality 90) with shapes on a textured background, about the size and
    decoding cost of a COCO photo (pure noise would not compress like a photo; flat colour would
    decode unrealistically fast)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    width, height = PHOTO_SIZE
    noise = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
    image = noise.resize(PHOTO_SIZE, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = int(rng.integers(0, width - 100)), int(rng.integers(0, height - 100))
        w, h = int(rng.integers(30, 200)), int(rng.integers(30, 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], fill=colour)
    grain = rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8))
    image.save(path, quality=90)
    return path

"""Pretrain the demo's tiny SigLIP tower on synthetic shape images, in seconds on a CPU.

The real recipe starts from a *pretrained* SigLIP and keeps it frozen: the projector and the
language model learn to read features that already say what is where. A randomly initialised
tower says nothing of the kind, and learning it end to end through a random language model is
what kept the demo near chance for most of its ten minutes. This stands in for SigLIP's
pretraining: each patch of a ``grid``-layout image (``tools/make_demo_data.py``; one shape per
patch) learns to predict what it shows (one of the 12 colour-shape pairs, or background) and
which row and column of the 3x3 grid it is in, from the hidden state that the VQA model reads
(``hidden_states[-1]``). The linear heads are thrown away; only the tower is saved.

The pretraining images come from their own random stream, so they are not the demo's held-out
images (those are drawn from the data set's seed, and the data set never shows a held-out
image in training; the tower never sees questions or answers).
"""

from __future__ import annotations

from random import Random

import torch
from torch import nn

from tools.make_demo_data import COLORS, SHAPES, random_scene, render
from visual.preprocess import ImagePreprocessor

BACKGROUND_CLASS = len(COLORS) * len(SHAPES)  # 12: a patch showing no shape


def patch_targets(scene: dict, grid: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch (row-major) content class and position index of a grid scene."""
    cell = scene["image_size"] // grid
    content = torch.full((grid * grid,), BACKGROUND_CLASS, dtype=torch.long)
    for o in scene["objects"]:
        x0, y0 = o["bbox"][:2]
        content[(y0 // cell) * grid + x0 // cell] = COLORS.index(o["color"]) * len(SHAPES) + SHAPES.index(o["shape"])
    return content, torch.arange(grid * grid)


def _batch(rng: Random, image_size: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    preprocess = ImagePreprocessor(size=image_size)  # what the VQA model feeds the tower (SigLIP's mean/std)
    pixels, contents, positions = [], [], []
    for _ in range(n):
        scene = random_scene(rng, image_size, layout="grid")
        pixels.append(preprocess(render(scene)))
        content, position = patch_targets(scene)
        contents.append(content)
        positions.append(position)
    return torch.stack(pixels), torch.stack(contents), torch.stack(positions)


def pretrain_tower(model: nn.Module, steps: int = 100, batch_size: int = 32, lr: float = 2e-3, seed: int = 0) -> float:
    """Train a ``SiglipVisionModel`` in place; returns the held-out per-patch content accuracy."""
    cfg = model.config
    grid = cfg.image_size // cfg.patch_size
    if grid != 3 or cfg.image_size % 3:
        raise ValueError(f"the demo tower needs a 3x3 patch grid, got {cfg.image_size}px / {cfg.patch_size}px patches")
    rng = Random(f"siglip-qwen-vqa/pretrain_demo_tower:{seed}")
    gen = torch.Generator().manual_seed(seed)
    content_head = nn.Linear(cfg.hidden_size, BACKGROUND_CLASS + 1)
    position_head = nn.Linear(cfg.hidden_size, grid * grid)
    for head in (content_head, position_head):
        nn.init.normal_(head.weight, std=0.02, generator=gen)
        nn.init.zeros_(head.bias)
    params = [*model.parameters(), *content_head.parameters(), *position_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)

    def features(pixels: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]

    # Once the loss is near zero the gradients and Adam's moments turn denormal, and denormal
    # arithmetic made the same 300 steps take 230 s instead of 20 s; flushing them is harmless here.
    torch.set_flush_denormal(True)
    model.train()
    try:
        for _ in range(steps):
            pixels, content, position = _batch(rng, cfg.image_size, batch_size)
            hidden = features(pixels)
            loss = nn.functional.cross_entropy(content_head(hidden).flatten(0, 1), content.flatten())
            loss = loss + nn.functional.cross_entropy(position_head(hidden).flatten(0, 1), position.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_flush_denormal(False)
    model.eval()
    pixels, content, _ = _batch(rng, cfg.image_size, 256)
    with torch.no_grad():
        accuracy = (content_head(features(pixels)).argmax(-1) == content).float().mean().item()
    return accuracy

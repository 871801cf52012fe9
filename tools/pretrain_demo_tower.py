"""Pretrain the demo's tiny SigLIP tower on synthetic shape images, in seconds on a CPU.

The real recipe starts from a *pretrained* SigLIP and keeps it frozen: the projector and the
language model learn to read features that already say what is where. A randomly initialised
tower says nothing of the kind, and learning it end to end through a random language model is
what kept the demo near chance for most of its ten minutes. This stands in for SigLIP's
pretraining: each patch of a ``grid``-layout image (``tools/make_demo_data.py``; one shape per
patch) learns to say what it shows (one of the 12 colour-shape pairs, or background) and which
column of the 3x3 grid it is in, in the hidden state that the VQA model reads
(``hidden_states[-1]``).

Why fixed target codes rather than classification heads: with learned linear heads the column
was perfectly decodable but only 0.4-0.8% of a shape patch's feature variance. So each patch
regresses onto ``what[content] + column_weight * where[column]``, two fixed random codes of equal
norm, which sets how loud "where" is next to "what". At weight 0.5 the column is about a fifth
of a shape patch's variance; at 1.0 the demo learned more slowly (88% against 92% held-out in a
1,500-step prototype; README).

The pretraining images come from their own random stream, so they are not the demo's held-out
images (those are drawn from the data set's seed, and the data set never shows a held-out
image in training; the tower never sees questions or answers).
"""

from __future__ import annotations

from dataclasses import dataclass
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


COLUMN_WEIGHT = 0.5


@dataclass(frozen=True)
class TowerReport:
    """What the pretrained tower's features say on 256 fresh images (2,304 patches)."""

    content_accuracy: float  # nearest content code is the patch's content
    column_accuracy: float  # nearest column code is the patch's column
    column_share: float  # share of a shape patch's feature variance explained by its column


def target_codes(hidden_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random ``what`` (13 x hidden) and ``where`` (3 x hidden) codes, each of norm
    sqrt(hidden): unit variance per feature, like the LayerNorm-scale features SigLIP emits."""

    def codes(n: int) -> torch.Tensor:
        return nn.functional.normalize(torch.randn(n, hidden_size, generator=generator), dim=-1) * hidden_size**0.5

    return codes(BACKGROUND_CLASS + 1), codes(3)


def pretrain_tower(model: nn.Module, steps: int = 300, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
                   column_weight: float = COLUMN_WEIGHT) -> TowerReport:
    """Train a ``SiglipVisionModel`` in place so each patch's feature is its content code plus
    ``column_weight`` times its column code."""
    cfg = model.config
    grid = cfg.image_size // cfg.patch_size
    if grid != 3 or cfg.image_size % 3:
        raise ValueError(f"the demo tower needs a 3x3 patch grid, got {cfg.image_size}px / {cfg.patch_size}px patches")
    rng = Random(f"siglip-qwen-vqa/pretrain_demo_tower:{seed}")
    what, where = target_codes(cfg.hidden_size, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)

    def features(pixels: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]

    # Once the loss is near zero the gradients and Adam's moments turn denormal, and denormal
    # arithmetic made the same 300 steps take 230 s instead of 20 s; flushing them is harmless here.
    torch.set_flush_denormal(True)
    model.train()
    try:
        for _ in range(steps):
            pixels, content, position = _batch(rng, cfg.image_size, batch_size)
            target = what[content] + column_weight * where[position % grid]
            loss = nn.functional.mse_loss(features(pixels), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_flush_denormal(False)
    model.eval()
    pixels, content, position = _batch(rng, cfg.image_size, 256)
    column = position % grid
    with torch.no_grad():
        hidden = features(pixels)
    shapes = content != BACKGROUND_CLASS
    on_shapes, their_column = hidden[shapes], column[shapes]
    column_means = torch.stack([on_shapes[their_column == c].mean(0) for c in range(grid)])
    return TowerReport(
        content_accuracy=(hidden @ what.T).argmax(-1).eq(content).float().mean().item(),
        column_accuracy=(hidden @ where.T).argmax(-1).eq(column).float().mean().item(),
        column_share=(column_means.var(0).sum() / on_shapes.var(0).sum()).item(),
    )

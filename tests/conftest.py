"""Shared fixtures: the offline tiny checkpoints (built once, deterministically) and models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Nothing here may reach the model hub: fail fast instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny() -> dict[str, Path]:
    """Paths of the tiny checkpoints (tokenizer, tiny-siglip, tiny-qwen2, tiny-qwen3, tiny-timm-vit)."""
    from tools.build_tiny_checkpoints import build_all

    return build_all()


@pytest.fixture(scope="session")
def tokenizer(tiny):
    from qwen import load_tokenizer

    return load_tokenizer(str(tiny["tiny-qwen2"]))


def base_model(tiny, vision="tiny-siglip", language="tiny-qwen2", train_vision_tower=False, **settings):
    """A fresh VQAModel wired from the tiny bases, in float32 (``settings``: ``config.ModelSettings``)."""
    from config import ModelSettings
    from model import VQAModel

    settings = ModelSettings(vision_model=str(tiny[vision]), language_model=str(tiny[language]),
                             **{"dtype": "float32", **settings})
    return VQAModel.from_settings(settings, train_vision_tower=train_vision_tower)


def make_model(tiny, language="tiny-qwen2", select="drop_first", lora=None, finetune=None, train_embeddings=True, **kwargs):
    import torch

    torch.manual_seed(0)
    model = base_model(tiny, language=language, vision_feature_select=select, **kwargs)
    if finetune:
        model.configure_training(finetune, lora, train_embeddings=train_embeddings)
    return model


LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}

"""Building blocks of the model a training run starts from (``training.stages`` puts them together
per stage), and the optimizer's parameter groups."""

from __future__ import annotations

import dataclasses

import torch

from config import Config, TrainSettings
from errors import UserError


def supervised_model(cfg: Config, finetune: str):
    """A fresh :class:`model.VQAModel` from the configured bases with ``finetune`` (projector, lora,
    full) trainable, and ``train.init_from``'s weights when given: the supervised stages' start."""
    from model import VQAModel
    from model.checkpoints import resolve_checkpoint

    t = cfg.train
    model = VQAModel.from_settings(cfg.model, train_vision_tower=t.train_vision_tower)
    lora = lora_settings(t) if finetune == "lora" else None
    model.configure_training(finetune, lora, train_embeddings=t.train_embeddings)
    if t.init_from:
        # An earlier stage's weights (after LoRA wrapping, so its adapters find their names):
        # a pretrain checkpoint's projector, or an sft checkpoint's projector and LM.
        try:
            model.load_trained_weights(resolve_checkpoint(t.init_from) / "model.safetensors", partial=True)
        except (UserError, ValueError) as exc:
            raise UserError(f"train.init_from: {exc}") from None
    return model


def compiled(model, t: TrainSettings):
    """Layers compiled when ``train.torch_compile``; what trains in fp32 master weights."""
    if t.torch_compile:
        model.compile_layers()
    # Master weights of what trains stay fp32; bf16 compute comes from autocast (or DeepSpeed).
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def lora_settings(t: TrainSettings) -> dict:
    """The adapter's settings as the checkpoint's config.json keeps them (``VQAConfig.lora``)."""
    return dataclasses.asdict(t.lora)


def param_groups(model, t: TrainSettings) -> list[dict]:
    """Separate learning rates for the projector, the language model and the vision tower."""
    def own(rate: float | None) -> float:
        return t.learning_rate if rate is None else rate  # 0 is a rate (frozen by schedule), not "unset"

    lrs = {
        "multi_modal_projector.": own(t.projector_learning_rate),
        "vision_tower.": own(t.vision_learning_rate),
        "language_model.": t.learning_rate,
    }
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = next(p for p in lrs if name.startswith(p))
        no_decay = param.ndim < 2  # biases and norms
        key = f"{prefix}{'no_decay' if no_decay else 'decay'}"
        group = groups.setdefault(key, {"params": [], "lr": lrs[prefix], "weight_decay": 0.0 if no_decay else t.weight_decay})
        group["params"].append(param)
    return list(groups.values())

"""The model a training run starts from, and the optimizer's parameter groups."""

from __future__ import annotations

import torch

from config import Config, TrainSettings
from errors import UserError


def build_model(cfg: Config):
    """A fresh :class:`model.VQAModel` from the configured bases, set up for the configured stage:
    what trains, LoRA, an earlier stage's weights (``train.init_from``), compiled layers."""
    from model import VQAModel
    from model.checkpoints import resolve_checkpoint

    t = cfg.train
    if t.stage == "dpo":
        return _compiled(_dpo_model(cfg), t)
    model = VQAModel.from_settings(cfg.model, train_vision_tower=t.train_vision_tower)
    finetune = "projector" if t.stage == "pretrain" else t.finetune
    lora = _lora_settings(t) if finetune == "lora" else None
    model.configure_training(finetune, lora, train_embeddings=t.train_embeddings)
    if t.init_from:
        # An earlier stage's weights (after LoRA wrapping, so its adapters find their names):
        # a pretrain checkpoint's projector, or an sft checkpoint's projector and LM.
        try:
            model.load_trained_weights(resolve_checkpoint(t.init_from) / "model.safetensors", partial=True)
        except (UserError, ValueError) as exc:
            raise UserError(f"train.init_from: {exc}") from None
    return _compiled(model, t)


def _compiled(model, t: TrainSettings):
    if t.torch_compile:
        model.compile_layers()
    # Master weights of what trains stay fp32; bf16 compute comes from autocast (or DeepSpeed).
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def _lora_settings(t: TrainSettings) -> dict:
    return {"r": t.lora.r, "alpha": t.lora.alpha, "dropout": t.lora.dropout, "target_modules": t.lora.target_modules}


def _dpo_model(cfg: Config):
    """The sft checkpoint ``train.init_from`` with its adapter folded into the language model
    and, with LoRA, a fresh adapter on top (B = 0: at step 0 the policy is the reference, and the
    adapter off is the sft model). The checkpoint records that base (``base_checkpoint``) so that
    loading a dpo checkpoint rebuilds it. The projector (and tower) stay frozen."""
    import os

    from model import VQAModel
    from model.checkpoints import resolve_checkpoint

    t = cfg.train
    start = resolve_checkpoint(t.init_from)
    model = VQAModel.from_pretrained(start)
    model.fold_adapter()
    if t.finetune == "lora":
        model.configure_training("lora", _lora_settings(t))
        model.config.base_checkpoint = os.path.abspath(start)
    else:
        model.configure_training("full", train_embeddings=t.train_embeddings)
    model.multi_modal_projector.requires_grad_(False)
    return model


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

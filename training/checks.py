"""Everything that can be checked about a training configuration before any model is loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from config import Config, TrainSettings
from errors import UserError
from model.checkpoints import TRAINER_STATE_NAME, is_complete, newest_checkpoint
from training.stages import stage_of


def resume_checkpoint(t: TrainSettings) -> Path | None:
    """The checkpoint ``train.resume`` asks for: none, the newest resumable one, or the path given."""
    if t.resume == "never":
        return None
    if t.resume == "auto":
        return newest_checkpoint(t.output_dir, resumable=True)
    return Path(t.resume)


def _check_data_file(label: str, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{label}: {path} does not exist (run process_image.py first)")
    if p.stat().st_size == 0 or p.read_text(encoding="utf-8", errors="replace").strip() in ("", "[]"):
        raise UserError(f"{label}: {path} holds no records")
    if not (p.parent / "images.json").is_file():
        raise UserError(f"{label}: {p.parent / 'images.json'} is missing beside it")


def _check_deepspeed(path: str) -> None:
    ds_path = Path(path)
    if not ds_path.is_file():
        raise UserError(f"train.deepspeed: {path} does not exist")
    try:
        ds = json.loads(ds_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"train.deepspeed: {path} is not valid JSON: {exc}") from None
    if "LOCAL_RANK" not in os.environ:
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        raise UserError(
            f"train.deepspeed: ZeRO-{stage} needs a distributed launcher; run "
            "`torchrun --nproc_per_node N train.py ...` or `deepspeed train.py ...`"
        )


# Settings that must be at least 1 (0 or less fails deep inside the DataLoader or the Trainer).
_POSITIVE = ("per_device_batch_size", "eval_batch_size", "gradient_accumulation_steps", "logging_steps",
             "save_steps", "eval_steps")


def _check_numbers(cfg: Config) -> None:
    t, d = cfg.train, cfg.data
    for name in _POSITIVE:
        if getattr(t, name) < 1:
            raise UserError(f"train.{name} must be at least 1, got {getattr(t, name)}")
    if d.max_length < 1:
        raise UserError(f"data.max_length must be at least 1, got {d.max_length}")
    if d.num_workers < 0:
        raise UserError(f"data.num_workers must be 0 or more, got {d.num_workers}")
    if t.save_total_limit is not None and t.save_total_limit < 1:
        raise UserError(f"train.save_total_limit must be at least 1 (or null: keep all), got {t.save_total_limit}")
    if not 0 <= t.warmup_ratio < 1:
        raise UserError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if t.finetune == "lora" and stage_of(cfg).trains_language_model:
        if t.lora.r < 1:
            raise UserError(f"train.lora.r must be at least 1, got {t.lora.r}")
        if not 0 <= t.lora.dropout < 1:
            raise UserError(f"train.lora.dropout must be in [0, 1), got {t.lora.dropout}")


def _check_quantize(cfg: Config) -> None:
    """QLoRA trains a LoRA adapter over frozen 4-bit weights: nothing else can train the LM."""
    m, t = cfg.model, cfg.train
    if m.quantize == "none":
        return
    reason = stage_of(cfg).quantize_refusal(cfg)
    if reason is None and t.finetune != "lora":
        reason = "train.finetune full would train the 4-bit weights themselves; use finetune: lora (QLoRA)"
    elif reason is None and t.train_vision_tower:
        reason = "train.train_vision_tower: QLoRA keeps the tower as configured and frozen"
    if reason:
        raise UserError(f"model.quantize: {m.quantize} needs train.stage sft with train.finetune lora ({reason})")
    if t.lora.init == "pissa":
        raise UserError(f"train.lora.init pissa with model.quantize {m.quantize}: PiSSA leaves the residual of an SVD in "
                        "the base weights, which 4-bit weights cannot hold (use train.lora.init: default)")
    from model.quantization import require_bitsandbytes

    require_bitsandbytes()


def _check_lora_targets(cfg: Config) -> None:
    """Every ``train.lora.target_modules`` name must match a module of the language model (peft
    matches a name or a dotted suffix); checked on a weightless meta-device copy of the LM."""
    t = cfg.train
    if not stage_of(cfg).trains_language_model or t.finetune != "lora":
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.model.language_model))
    names = [name for name, _ in lm.named_modules()]
    unknown = [target for target in t.lora.target_modules
               if not any(name == target or name.endswith("." + target) for name in names)]
    if unknown or not t.lora.target_modules:
        leaves = sorted({name.rsplit(".", 1)[-1] for name, module in lm.named_modules()
                         if isinstance(module, torch.nn.Linear)} - {"lm_head"})
        raise UserError(f"train.lora.target_modules: {unknown or 'an empty list'} match no module of "
                        f"{cfg.model.language_model} (its linear layers: {', '.join(leaves)})")


def validate(cfg: Config) -> None:
    """Raise :class:`errors.UserError` when the config cannot work, before loading anything."""
    import torch

    from atomic import check_writable
    from model.bases import check_base
    from model.checkpoints import resolve_checkpoint

    t, d, m = cfg.train, cfg.data, cfg.model
    for key in ("vision_model", "language_model", "tokenizer"):
        if getattr(m, key):
            check_base(getattr(m, key), f"model.{key}")
    for label, path in (("data.train_file", d.train_file), ("data.eval_file", d.eval_file)):
        if path is not None:
            _check_data_file(label, path)
    if not t.train_embeddings and (not stage_of(cfg).trains_language_model or t.finetune != "full"):
        raise UserError("train.train_embeddings: false only applies to stages sft and dpo with finetune full "
                        "(LoRA and pretrain never train them)")
    _check_numbers(cfg)
    _check_quantize(cfg)
    stage_of(cfg).check(cfg)
    if t.init_from:
        try:
            resolve_checkpoint(t.init_from)
        except UserError as exc:
            raise UserError(f"train.init_from: {exc}") from None
    if t.deepspeed:
        _check_deepspeed(t.deepspeed)
    if t.bf16 and not t.use_cpu and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise UserError("train.bf16: this GPU does not support bfloat16; set train.bf16=false")
    if t.max_steps <= 0 and t.num_epochs <= 0:
        raise UserError("train.max_steps or train.num_epochs must be positive")
    if t.resume not in ("auto", "never"):
        if not Path(t.resume).is_dir():
            raise UserError(f"train.resume: {t.resume} is neither auto, never nor a checkpoint directory")
        if not is_complete(t.resume, resumable=True):
            raise UserError(f"train.resume: {t.resume} is not a complete checkpoint (no {TRAINER_STATE_NAME}, "
                            "or its weights are cut off)")
    if Path(t.output_dir).exists() and not Path(t.output_dir).is_dir():
        raise UserError(f"train.output_dir: {t.output_dir} is a file, not a directory")
    try:
        check_writable(t.output_dir)
    except UserError as exc:
        raise UserError(f"train.output_dir: {exc}") from None
    if d.token_cache and d.token_cache_dir:
        try:
            check_writable(d.token_cache_dir)
        except UserError as exc:
            raise UserError(f"data.token_cache_dir: {exc}") from None
    _check_lora_targets(cfg)

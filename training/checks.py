"""Everything that can be checked about a training configuration before any model is loaded."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from config import Config, TrainSettings
from errors import UserError
from model.checkpoints import TRAINER_STATE_NAME, is_complete, newest_checkpoint


def _model_source_exists(name: str) -> bool:
    if os.path.exists(name):
        return True
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return False  # not a hub id, so it had to be a local path
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    return True  # a hub id; the download will tell


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


def validate(cfg: Config) -> None:
    """Raise :class:`errors.UserError` when the config cannot work, before loading anything."""
    import torch

    t, d, m = cfg.train, cfg.data, cfg.model
    for label, name in (("model.vision_model", m.vision_model), ("model.language_model", m.language_model)):
        if not _model_source_exists(name):
            raise UserError(f"{label}: {name} does not exist (a local path, or a hub id that is cached when offline)")
    if m.tokenizer and not _model_source_exists(m.tokenizer):
        raise UserError(f"model.tokenizer: {m.tokenizer} does not exist")
    for label, path in (("data.train_file", d.train_file), ("data.eval_file", d.eval_file)):
        if path is not None:
            _check_data_file(label, path)
    if not t.train_embeddings and (t.stage != "sft" or t.finetune != "full"):
        raise UserError("train.train_embeddings: false only applies to stage sft with finetune full "
                        "(LoRA and pretrain never train them)")
    if t.init_from and not Path(t.init_from).is_dir():
        raise UserError(f"train.init_from: {t.init_from} does not exist")
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

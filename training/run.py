"""One training run, as ``train.py`` starts it: check, build, train, save.

What differs between stages (the model a run starts from, its data, collator and Trainer) is the
stage's to say (``training.stages``): this module is the same for every one of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from config import Config, config_to_dict
from errors import UserError
from training.checks import resume_checkpoint, validate
from training.memory import keep_freed_memory
from training.reporting import setup_wandb


def _datasets(cfg: Config, model, tokenizer, kind):
    from qwen import PromptRenderer

    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens, cfg.model.image_token)

    def make(path, limit=None):
        return kind(path, renderer, model.preprocessor, cfg.data.max_length, cfg.model.image_token,
                    cfg.model.system_prompt, limit=limit, cache=cfg.data.token_cache, cache_dir=cfg.data.token_cache_dir)

    try:
        train_set = make(cfg.data.train_file)
        eval_set = make(cfg.data.eval_file, cfg.data.eval_max_samples) if cfg.data.eval_file else None
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return train_set, eval_set


def _held_out_records(cfg: Config):
    """Records and image table for ``train.eval_vqa`` (None, None when it is off)."""
    if not (cfg.data.eval_file and cfg.train.eval_vqa):
        return None, None
    from dataset.records import load_merged

    records, images = load_merged(cfg.data.eval_file)
    return records[: cfg.data.eval_max_samples], images


def train(cfg: Config) -> Path:
    """Run the configured training to the end (or its stop step / time limit); returns the
    output directory, which then holds the final weights beside its ``checkpoint-N``."""
    from training.callbacks import WallClock
    from training.lineage import RecordCheckpoints, RunRecord
    from training.stages import build_model, stage_of
    from training.trainer import training_arguments

    t = cfg.train
    validate(cfg)
    stage = stage_of(cfg)
    resume_dir = resume_checkpoint(t)
    setup_wandb(t)
    keep_freed_memory(t)

    torch.manual_seed(t.seed)
    model = build_model(cfg)
    tokenizer = model.tokenizer  # the one it was built with (config.model.tokenizer or the LM's)
    train_set, eval_set = _datasets(cfg, model, tokenizer, stage.dataset_class())
    eval_records, eval_images = _held_out_records(cfg)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    record = None
    if rank0:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"training {model.config.finetune} ({trainable:,} parameters) on {len(train_set):,} samples"
              + (f", skipped {dict(train_set.skipped)}" if train_set.skipped else "")
              + (f"; tokenized data {train_set.cached} ({train_set.table.cache_dir})" if getattr(train_set, "cached", None)
                 else ""), flush=True)
        Path(t.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(t.output_dir) / "train_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2, ensure_ascii=False))
        if resume_dir:
            print(f"resuming from {resume_dir}", flush=True)
        record = RunRecord(cfg, resume_dir, _global_step(resume_dir))
        record.write()

    args = training_arguments(cfg)
    kwargs = dict(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=stage.collator(tokenizer),
        processing_class=tokenizer,
        callbacks=[WallClock(cfg, eval_records, eval_images, tokenizer), *([RecordCheckpoints(record)] if record else [])],
        settings=t,
        group_by_length=cfg.data.group_by_length,
    )
    trainer = stage.trainer(cfg, **kwargs)
    try:
        trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
        trainer.save_model(t.output_dir)
        trainer.save_state()
    except BaseException as exc:
        if record is not None:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {type(exc).__name__}: {exc}"[:300]
            record.finish(status, trainer.state.global_step, trainer.state.log_history)
        raise
    if record is not None:
        state = trainer.state
        status = "finished" if state.global_step >= state.max_steps else \
            f"stopped at step {state.global_step} of {state.max_steps} (train.stop_at_step or max_time_seconds)"
        record.finish(status, state.global_step, state.log_history, Path(t.output_dir))
        print(f"saved the trained model to {t.output_dir} (its record: {record.path})", flush=True)
    return Path(t.output_dir)


def _global_step(checkpoint: Path | None) -> int:
    """The step a resumed run starts from (its checkpoint's trainer state), 0 for a new run."""
    if checkpoint is None:
        return 0
    try:
        return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0

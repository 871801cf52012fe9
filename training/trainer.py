"""The transformers Trainer for the VQA model: its arguments, optimizer and sampler."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from config import Config, TrainSettings
from dataset.sampler import LengthGroupedSampler
from model.checkpoints import WEIGHTS_NAME
from training.build import param_groups


def offloads_optimizer(deepspeed_config: str | None) -> bool:
    """ZeRO-Offload steps the optimizer on the CPU, where DeepSpeed requires its own CPU Adam."""
    if not deepspeed_config:
        return False
    zero = json.loads(Path(deepspeed_config).read_text()).get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device") in ("cpu", "nvme")


class VQATrainer(Trainer):
    """The stock Trainer plus: parameter groups with their own learning rates, length-grouped
    batches, and checkpoint loading that checks completeness instead of warning about the
    (intentionally absent) frozen base weights."""

    def __init__(self, *args, settings: TrainSettings, group_by_length: bool, **kwargs):
        self.settings = settings
        self.group_by_length = group_by_length
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = param_groups(self.model, self.settings)
            kwargs = dict(lr=self.args.learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2),
                          eps=self.args.adam_epsilon)
            if offloads_optimizer(self.settings.deepspeed):
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                self.optimizer = DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
            else:
                # On a GPU, AdamW's fused kernel: one launch over all tensors of a group.
                fused = self.args.device.type == "cuda" or None
                self.optimizer = torch.optim.AdamW(groups, fused=fused, **kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length:
            return super()._get_train_sampler(dataset)
        batch = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * max(self.args.world_size, 1)
        return LengthGroupedSampler(dataset.lengths, batch, seed=self.args.data_seed or self.args.seed)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        (model or self.model).load_trained_weights(Path(resume_from_checkpoint) / WEIGHTS_NAME)


def training_arguments(cfg: Config) -> TrainingArguments:
    t, d = cfg.train, cfg.data
    has_eval = d.eval_file is not None
    return TrainingArguments(
        output_dir=t.output_dir,
        run_name=t.run_name,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        bf16=t.bf16,
        activation_checkpointing=t.activation_checkpointing,
        deepspeed=t.deepspeed,
        report_to=t.report_to or "none",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps if has_eval else None,
        prediction_loss_only=True,
        seed=t.seed,
        data_seed=t.seed,
        remove_unused_columns=False,
        dataloader_num_workers=d.num_workers,
        dataloader_persistent_workers=d.num_workers > 0,
        use_cpu=t.use_cpu,
        disable_tqdm=False,
    )

"""Train the VQA model with the transformers Trainer.

    python train.py --config config.yaml
    torchrun --nproc_per_node N train.py --config config.yaml --set train.deepspeed=configs/zero2.json
    deepspeed train.py --config config.yaml --set train.deepspeed=configs/zero3.json

Stages: ``pretrain`` trains the projector only; ``sft`` trains the projector plus a LoRA adapter
on the language model (``train.finetune: lora``) or the whole language model (``full``).
Checkpoints (``checkpoint-N`` under ``train.output_dir``) hold only the trained weights plus
config, tokenizer and trainer state; ``train.resume: auto`` continues from the newest complete one.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

from config import Config, TrainSettings, add_config_arguments, config_from_args, config_to_dict, fail

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"  # the Trainer writes it last, after weights and optimizer
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc mallopt parameters (<malloc.h>)


# -- CPU runs -----------------------------------------------------------------------------------


def keep_freed_memory(t: TrainSettings) -> bool:
    """On a CPU run, keep glibc from handing large freed blocks back to the kernel.

    Every step allocates and frees several vocabulary-sized tensors (logits, softmax and their
    gradients: supervised tokens x 151,936 floats). glibc serves each from a fresh ``mmap`` and
    unmaps it on free, so the kernel zero-fills those pages again on every step: a demo step took
    335 ms that way and 231 ms with large blocks kept in the heap (same losses). Returns whether
    it applied (glibc only; a GPU run allocates these on the device and is left alone).
    """
    if not t.use_cpu and torch.cuda.is_available():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


# -- checks before any work -----------------------------------------------------------------


def _model_source_exists(name: str) -> bool:
    if os.path.exists(name):
        return True
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return False  # not a hub id, so it had to be a local path
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    return True  # a hub id; the download will tell


def validate(cfg: Config, resume_dir: Path | None) -> None:
    """Fail before loading anything when the config cannot work."""
    t, d, m = cfg.train, cfg.data, cfg.model
    for label, name in (("model.vision_model", m.vision_model), ("model.language_model", m.language_model)):
        if not _model_source_exists(name):
            fail(f"{label}: {name} does not exist (a local path, or a hub id that is cached when offline)")
    if m.tokenizer and not _model_source_exists(m.tokenizer):
        fail(f"model.tokenizer: {m.tokenizer} does not exist")
    for label, path in (("data.train_file", d.train_file), ("data.eval_file", d.eval_file)):
        if path is None:
            continue
        p = Path(path)
        if not p.is_file():
            fail(f"{label}: {path} does not exist (run process_image.py first)")
        if p.stat().st_size == 0 or p.read_text(encoding="utf-8", errors="replace").strip() in ("", "[]"):
            fail(f"{label}: {path} holds no records")
        if not (p.parent / "images.json").is_file():
            fail(f"{label}: {p.parent / 'images.json'} is missing beside it")
    if not t.train_embeddings and (t.stage != "sft" or t.finetune != "full"):
        fail("train.train_embeddings: false only applies to stage sft with finetune full (LoRA and pretrain never train them)")
    if t.init_from and not Path(t.init_from).is_dir():
        fail(f"train.init_from: {t.init_from} does not exist")
    if t.deepspeed:
        ds_path = Path(t.deepspeed)
        if not ds_path.is_file():
            fail(f"train.deepspeed: {t.deepspeed} does not exist")
        try:
            ds = json.loads(ds_path.read_text())
        except json.JSONDecodeError as exc:
            fail(f"train.deepspeed: {t.deepspeed} is not valid JSON: {exc}")
        if "LOCAL_RANK" not in os.environ:
            stage = ds.get("zero_optimization", {}).get("stage", 0)
            fail(
                f"train.deepspeed: ZeRO-{stage} needs a distributed launcher; run "
                "`torchrun --nproc_per_node N train.py ...` or `deepspeed train.py ...`"
            )
    if t.bf16 and not t.use_cpu and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        fail("train.bf16: this GPU does not support bfloat16; set train.bf16=false")
    if t.max_steps <= 0 and t.num_epochs <= 0:
        fail("train.max_steps or train.num_epochs must be positive")
    if t.resume not in ("auto", "never") and not Path(t.resume).is_dir():
        fail(f"train.resume: {t.resume} is neither auto, never nor a checkpoint directory")
    if resume_dir is not None and not (resume_dir / COMPLETE_MARKER).is_file():
        fail(f"train.resume: {resume_dir} is not a complete checkpoint (no {COMPLETE_MARKER})")


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """Newest ``checkpoint-N`` whose trainer state was written: one cut off mid-write is skipped."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    found = [
        (int(m.group(1)), p) for p in out.iterdir()
        if (m := _CHECKPOINT.match(p.name)) and (p / COMPLETE_MARKER).is_file() and (p / "config.json").is_file()
    ]
    return max(found)[1] if found else None


def resume_checkpoint(t: TrainSettings) -> Path | None:
    if t.resume == "never":
        return None
    if t.resume == "auto":
        return latest_complete_checkpoint(t.output_dir)
    return Path(t.resume)


# -- wandb ----------------------------------------------------------------------------------


def setup_wandb(t: TrainSettings) -> None:
    """Log offline when no API key is configured: never block on wandb's login prompt."""
    if "wandb" not in t.report_to:
        return
    os.environ.setdefault("WANDB_PROJECT", "siglip-qwen-vqa")
    os.environ.setdefault("WANDB_DIR", str(Path(t.output_dir).resolve()))
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            import netrc

            has_key = netrc.netrc().authenticators("api.wandb.ai") is not None
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            has_key = False
    if not has_key and os.environ.get("WANDB_MODE") not in ("disabled", "offline"):
        os.environ["WANDB_MODE"] = "offline"
    if os.environ.get("WANDB_MODE") == "offline" and int(os.environ.get("RANK", "0")) == 0:
        print(f"wandb: no API key, logging offline under {os.environ['WANDB_DIR']}/wandb "
              "(upload later with `wandb sync`)", flush=True)


# -- model, data, trainer -------------------------------------------------------------------


def build_model(cfg: Config):
    from model import VQAModel

    m, t = cfg.model, cfg.train
    model = VQAModel.from_bases(
        vision_model=m.vision_model, language_model=m.language_model, vision_backend=m.vision_backend,
        vision_feature_layer=m.vision_feature_layer, vision_feature_select=m.vision_feature_select,
        image_size=m.image_size, tokenizer=m.tokenizer, image_token=m.image_token,
        projector_init_std=m.projector_init_std, dtype=m.dtype, attn_implementation=m.attn_implementation,
        system_prompt=m.system_prompt, train_vision_tower=t.train_vision_tower,
    )
    finetune = "projector" if t.stage == "pretrain" else t.finetune
    lora = None
    if finetune == "lora":
        lora = {"r": t.lora.r, "alpha": t.lora.alpha, "dropout": t.lora.dropout, "target_modules": t.lora.target_modules}
    model.configure_training(finetune, lora, train_embeddings=t.train_embeddings)
    if t.init_from:
        from model.predictor import resolve_checkpoint

        # An earlier stage's weights (after LoRA wrapping, so its adapters find their names):
        # a pretrain checkpoint's projector, or an sft checkpoint's projector and LM.
        try:
            model.load_trained_weights(resolve_checkpoint(t.init_from) / "model.safetensors", partial=True)
        except ValueError as exc:
            fail(f"train.init_from: {exc}")
    if t.torch_compile:
        model.compile_layers()
    # Master weights of what trains stay fp32; bf16 compute comes from autocast (or DeepSpeed).
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
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


def offloads_optimizer(deepspeed_config: str | None) -> bool:
    """ZeRO-Offload steps the optimizer on the CPU, where DeepSpeed requires its own CPU Adam."""
    if not deepspeed_config:
        return False
    zero = json.loads(Path(deepspeed_config).read_text()).get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device") in ("cpu", "nvme")


def make_trainer_class():
    from transformers import Trainer

    from dataset import LengthGroupedSampler

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
            (model or self.model).load_trained_weights(Path(resume_from_checkpoint) / "model.safetensors")

    return VQATrainer


def make_callbacks(cfg: Config, eval_records, eval_dir, tokenizer):
    from transformers import TrainerCallback

    t = cfg.train

    class WallClock(TrainerCallback):
        """Training wall time (evaluation excluded), the stop-at-step / time limits, and a JSONL
        log of loss and held-out accuracy against that time (the demo plots it)."""

        def __init__(self):
            self.train_seconds = 0.0
            self.started = None
            self.log_path = Path(t.output_dir) / "progress.jsonl"

        def on_train_begin(self, args, state, control, **kw):
            self.started = time.monotonic()
            if state.is_world_process_zero:
                Path(t.output_dir).mkdir(parents=True, exist_ok=True)

        def _pause(self):
            if self.started is not None:
                self.train_seconds += time.monotonic() - self.started
                self.started = None

        def _resume(self):
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            seconds = self.train_seconds + (time.monotonic() - self.started if self.started else 0.0)
            if t.stop_at_step and state.global_step >= t.stop_at_step:
                control.should_training_stop = True
                control.should_save = True
            if t.max_time_seconds and seconds >= t.max_time_seconds:
                control.should_training_stop = True
                control.should_save = True
            if control.should_evaluate:
                self._pause()

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
            if eval_records and state.is_world_process_zero:
                metrics = dict(metrics or {})
                metrics.update(vqa_eval(model or kw.get("model"), tokenizer, eval_records, eval_dir, cfg))
                self.write(state, metrics)
                print(f"step {state.global_step}: held-out VQA accuracy {metrics['eval_vqa_accuracy']:.3f} "
                      f"({self.train_seconds:.0f} s of training)", flush=True)
            self._resume()

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs and "loss" in logs:
                self.write(state, {"loss": logs["loss"]})

        def write(self, state, values):
            seconds = self.train_seconds + (time.monotonic() - self.started if self.started else 0.0)
            row = {"step": state.global_step, "train_seconds": round(seconds, 2), **values}
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    return [WallClock()]


def vqa_eval(model, tokenizer, records, image_dir, cfg: Config) -> dict:
    """Greedy answers for held-out records scored with the official VQA accuracy."""
    from evaluate import evaluate_records
    from model.generation import SamplingSettings
    from model.predictor import Predictor

    was_training = model.training
    predictor = Predictor(model, tokenizer)
    settings = SamplingSettings(max_new_tokens=cfg.generation.max_new_tokens)
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16):
        _, metrics = evaluate_records(predictor, records, image_dir, settings, cfg.train.eval_batch_size)
    model.train(was_training)
    out = {"eval_vqa_accuracy": metrics["vqa_accuracy"]}
    for qtype, m in metrics.get("per_question_type", {}).items():
        out[f"eval_vqa_accuracy_{qtype}"] = m["vqa_accuracy"]
    return out


def training_arguments(cfg: Config):
    from transformers import TrainingArguments

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the SigLIP + Qwen VQA model.")
    add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from the newest complete checkpoint (or the one given)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.resume:
        cfg.train.resume = args.resume
    t = cfg.train
    resume_dir = resume_checkpoint(t) if t.resume != "auto" else None
    validate(cfg, resume_dir)
    resume_dir = resume_checkpoint(t)
    setup_wandb(t)
    keep_freed_memory(t)

    from qwen import PromptRenderer, load_tokenizer
    from dataset import Collator, VQADataset
    from dataset.records import load_merged

    torch.manual_seed(t.seed)
    model = build_model(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.language_model, cfg.model.image_token)
    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens, cfg.model.image_token)
    preprocess = model.vision_tower.preprocessor
    make = lambda path, limit=None: VQADataset(path, renderer, preprocess, cfg.data.max_length,
                                               cfg.model.image_token, cfg.model.system_prompt, limit=limit)
    try:
        train_set = make(cfg.data.train_file)
        eval_set = make(cfg.data.eval_file, cfg.data.eval_max_samples) if cfg.data.eval_file else None
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    eval_records, eval_dir = None, None
    if cfg.data.eval_file and t.eval_vqa:
        records, _ = load_merged(cfg.data.eval_file)
        eval_records = records[: cfg.data.eval_max_samples]
        eval_dir = Path(cfg.data.eval_file).parent
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"training {model.config.finetune} ({trainable:,} parameters) on {len(train_set):,} samples"
              + (f", skipped {dict(train_set.skipped)}" if train_set.skipped else ""), flush=True)
        Path(t.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(t.output_dir) / "train_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2, ensure_ascii=False))
        if resume_dir:
            print(f"resuming from {resume_dir}", flush=True)

    trainer = make_trainer_class()(
        model=model,
        args=training_arguments(cfg),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=make_callbacks(cfg, eval_records, eval_dir, tokenizer),
        settings=t,
        group_by_length=cfg.data.group_by_length,
    )
    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    trainer.save_model(t.output_dir)
    trainer.save_state()
    if rank0:
        print(f"saved the trained model to {t.output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

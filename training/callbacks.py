"""Trainer callbacks: training wall time, time/step limits, progress.jsonl, held-out VQA accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from config import Config


def vqa_eval(model, tokenizer, records, images, cfg: Config) -> dict:
    """Greedy answers for held-out records scored with the official VQA accuracy."""
    from evaluation.records import evaluate_records
    from inference.generation import SamplingSettings
    from inference.predictor import Predictor

    was_training = model.training
    predictor = Predictor(model, tokenizer)
    settings = SamplingSettings.from_config(cfg.generation, do_sample=False)  # held-out answers are greedy
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16):
        _, metrics = evaluate_records(predictor, records, images, settings, cfg.train.eval_batch_size)
    model.train(was_training)
    out = {"eval_vqa_accuracy": metrics["vqa_accuracy"]}
    for qtype, m in metrics.get("per_question_type", {}).items():
        out[f"eval_vqa_accuracy_{qtype}"] = m["vqa_accuracy"]
    return out


class WallClock(TrainerCallback):
    """Training wall time (evaluation excluded), the stop-at-step / time limits, and a JSONL log
    of loss and held-out accuracy against that time (the demo plots it)."""

    def __init__(self, cfg: Config, eval_records=None, eval_images=None, tokenizer=None):
        self.cfg = cfg
        self.eval_records = eval_records
        self.eval_images = eval_images
        self.tokenizer = tokenizer
        self.train_seconds = 0.0
        self.started = None
        self.log_path = Path(cfg.train.output_dir) / "progress.jsonl"

    def on_train_begin(self, args, state, control, **kw):
        self.started = time.monotonic()
        if state.is_world_process_zero:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def _pause(self):
        if self.started is not None:
            self.train_seconds += time.monotonic() - self.started
            self.started = None

    def _resume(self):
        self.started = time.monotonic()

    def _seconds(self) -> float:
        return self.train_seconds + (time.monotonic() - self.started if self.started else 0.0)

    def on_step_end(self, args, state, control, **kw):
        t = self.cfg.train
        if t.stop_at_step and state.global_step >= t.stop_at_step:
            control.should_training_stop = True
            control.should_save = True
        if t.max_time_seconds and self._seconds() >= t.max_time_seconds:
            control.should_training_stop = True
            control.should_save = True
        if control.should_evaluate:
            self._pause()

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
        """One progress row per evaluation: the held-out VQA accuracy (``train.eval_vqa``) and a
        dpo run's held-out preference metrics (``eval_rewards/...``)."""
        if state.is_world_process_zero:
            metrics = dict(metrics or {})
            if self.eval_records:
                metrics.update(vqa_eval(model or kw.get("model"), self.tokenizer, self.eval_records,
                                        self.eval_images, self.cfg))
                print(f"step {state.global_step}: held-out VQA accuracy {metrics['eval_vqa_accuracy']:.3f} "
                      f"({self.train_seconds:.0f} s of training)", flush=True)
            if self.eval_records or any("rewards/" in key for key in metrics):
                self.write(state, metrics)
        self._resume()

    def on_log(self, args, state, control, logs=None, **kw):
        """The training loss, and a dpo run's preference metrics (``rewards/...``)."""
        if not (state.is_world_process_zero and logs):
            return
        kept = {k: v for k, v in logs.items() if k == "loss" or k.startswith("rewards/")}
        if "loss" in kept:
            self.write(state, kept)

    def write(self, state, values):
        row = {"step": state.global_step, "train_seconds": round(self._seconds(), 2), **values}
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

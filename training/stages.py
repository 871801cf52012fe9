"""Training stages, found by name (``train.stage``): what each one starts from, trains and refuses.

A :class:`Stage` decides the model a run starts from and what of it trains (``build_model``), the
samples it trains on and how they are batched (``dataset_class``, ``collator``), the Trainer that
runs it (``trainer``), and what it refuses before anything loads (``check``, ``quantize_refusal``).
``training.run``, ``training.build`` and ``training.checks`` ask the stage and never its name, so a
new stage (KTO, ORPO, GRPO) is one module with its ``Stage`` subclass plus one line in
:data:`STAGES` (and its name in ``config.TrainSettings.stage``'s type, with its settings).

The supervised stages live here: ``pretrain`` (the projector only) and ``sft`` (projector + LoRA or
the whole language model); their loss is the model's own (``VQAModel.supervised_loss``).
"""

from __future__ import annotations

from importlib import import_module

from config import Config
from errors import UserError


class Stage:
    """The supervised behaviour; subclasses override what differs."""

    name = ""
    # Whether the language model trains at all (LoRA or full); pretrain trains the projector only.
    trains_language_model = True

    def check(self, cfg: Config) -> None:
        """Stage-specific refusals (one line, before anything loads)."""

    def quantize_refusal(self, cfg: Config) -> str | None:
        """Why this stage cannot train over a 4-bit language model (QLoRA), or None."""
        return None

    def build_model(self, cfg: Config):
        """A fresh model from the configured bases, with ``train.finetune`` deciding what trains and
        ``train.init_from`` an earlier stage's weights."""
        from training.build import supervised_model

        return supervised_model(cfg, "projector" if not self.trains_language_model else cfg.train.finetune)

    def dataset_class(self):
        from dataset.vqa_dataset import VQADataset

        return VQADataset

    def collator(self, tokenizer):
        from dataset.collate import Collator

        return Collator(tokenizer.pad_token_id)

    def trainer(self, cfg: Config, **kwargs):
        """The Trainer for this stage (``kwargs``: what every stage's Trainer takes -- model, args,
        data sets, collator, callbacks)."""
        from training.trainer import VQATrainer

        return VQATrainer(**kwargs)


class Pretrain(Stage):
    name = "pretrain"
    trains_language_model = False

    def quantize_refusal(self, cfg: Config) -> str | None:
        return "train.stage pretrain trains the projector only; 4-bit weights are for LoRA on the LM"


class SFT(Stage):
    name = "sft"

    def check(self, cfg: Config) -> None:
        """An ``init_from`` checkpoint's LoRA adapter continues only under the same adapter settings:
        loaded into another variant (rank, scaling, DoRA's magnitudes, PiSSA's residual base) it
        would silently be another model."""
        import json

        from model.checkpoints import resolve_checkpoint

        t = cfg.train
        if not t.init_from or t.finetune != "lora":
            return
        try:
            saved = json.loads((resolve_checkpoint(t.init_from) / "config.json").read_text(encoding="utf-8")).get("lora")
        except (UserError, OSError, ValueError):
            return  # reported by the init_from check
        if not isinstance(saved, dict):
            return
        saved = {"method": "lora", "init": "default", **saved}  # written before method/init existed
        wanted = {"r": t.lora.r, "alpha": t.lora.alpha, "method": t.lora.method, "init": t.lora.init}
        differ = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in wanted.items() if saved.get(k) != v]
        if sorted(saved.get("target_modules") or []) != sorted(t.lora.target_modules):
            differ.append(f"target_modules {saved.get('target_modules')} -> {t.lora.target_modules}")
        if differ:
            raise UserError(f"train.init_from: {t.init_from} holds a LoRA adapter trained with other train.lora settings "
                            f"({'; '.join(differ)}); it continues only with the same ones")


# name -> "module:Class" (imported when asked for: a stage may need torch, the checks run before it).
STAGES = {
    "pretrain": "training.stages:Pretrain",
    "sft": "training.stages:SFT",
    "dpo": "training.dpo:DPOStage",
}


def build_model(cfg: Config):
    """The model a run starts from, set up by the configured stage (what trains, LoRA, an earlier
    stage's weights), with compiled layers when asked."""
    from training.build import compiled

    return compiled(stage_of(cfg).build_model(cfg), cfg.train)


def stage_of(cfg: Config) -> Stage:
    """The configured stage; an unknown name is one line listing the known ones."""
    target = STAGES.get(cfg.train.stage)
    if target is None:
        raise UserError(f"train.stage: unknown stage {cfg.train.stage!r} (known: {', '.join(STAGES)})")
    module, cls = target.split(":")
    return getattr(import_module(module), cls)()

"""Typed configuration loaded from YAML: the one place every setting and its default is declared.

Every script reads one YAML file into these dataclasses (``cli.config_from_args``). Unknown keys and wrong types are errors
that name the key and the file, so a typo never silently falls back to a default. Dotted
overrides (``--set train.learning_rate=1e-4``) are applied to the YAML tree before validation,
so they are checked exactly like the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from errors import UserError, read_utf8

# The image placeholder: one special token per image in a prompt (Qwen's <|extra_0|>).
DEFAULT_IMAGE_TOKEN = "<|extra_0|>"
# Weight dtypes a checkpoint can be built or loaded in (model.configuration maps them to torch).
DType = Literal["float32", "bfloat16", "float16"]
DTYPE_NAMES: tuple[str, ...] = typing.get_args(DType)


class ConfigError(UserError, ValueError):
    """A configuration file or override that does not match the schema."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass
class ModelSettings:
    """Which base checkpoints to wire together and how the image enters the prompt."""

    vision_model: str = "google/siglip-so400m-patch14-384"
    # "siglip": transformers' SiglipVisionModel; "timm": any timm ViT (not exportable to LLaVA).
    vision_backend: Literal["siglip", "timm"] = "siglip"
    # Index into the tower's hidden states (-1: last encoder layer, before post-layernorm).
    vision_feature_layer: int = -1
    # "drop_first" drops the first patch feature (the seed's 729 -> 728 layout), "full" keeps all.
    vision_feature_select: Literal["drop_first", "full"] = "drop_first"
    # timm only: input resolution when the timm model name does not fix it.
    image_size: int | None = None
    # A non-square image: "squash" resizes it straight to the tower's square (SigLIP's processor);
    # "pad" first pads it to a square with the mean colour, centred (LLaVA-1.5's expand-to-square;
    # llama.cpp letterboxes the same way, so a GGUF export sees what training saw).
    image_aspect: Literal["squash", "pad"] = "squash"
    language_model: str = "Qwen/Qwen2.5-0.5B-Instruct"
    # Defaults to language_model.
    tokenizer: str | None = None
    image_token: str = DEFAULT_IMAGE_TOKEN
    projector_init_std: float = 0.01
    # Weights dtype for the frozen parts; trainable parts follow train.bf16.
    dtype: DType = "bfloat16"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # System message for every conversation; null lets the chat template pick its default.
    system_prompt: str | None = None
    # QLoRA: load the language model's linear layers in 4 bits through bitsandbytes ("nf4" or
    # "fp4"; "none": as `dtype` says). Only with train.finetune: lora at stage sft; the tower and
    # the projector stay as configured, and checkpoints hold only the adapter and the projector.
    quantize: Literal["none", "nf4", "fp4"] = "none"
    # Quantize the 4-bit blocks' scales as well (QLoRA's double quantization, ~0.4 bit/param less).
    quantize_double: bool = True
    # What the 4-bit layers compute in; the frozen embeddings and head are kept in it too.
    quantize_compute_dtype: DType = "bfloat16"


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Module names inside the language model only; the vision tower is never adapted.
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # peft's variants: "lora"; "dora" (weight-decomposed: a learned magnitude per output row on
    # top of the low-rank direction, Liu et al. 2024); "rslora" (scaling alpha/sqrt(r) instead of
    # alpha/r, so higher ranks keep learning, Kalajdzievski 2023).
    method: Literal["lora", "dora", "rslora"] = "lora"
    # How the adapter starts: "default" (A random, B zero: exactly the base model), "gaussian",
    # or "pissa" (A and B from the top r singular vectors of each weight, the base keeps the
    # residual; Meng et al. 2024). pissa is recomputed (exact SVD, deterministic) when a
    # checkpoint loads, so checkpoints still hold only the adapter.
    init: Literal["default", "gaussian", "pissa"] = "default"


@dataclass
class DPOSettings:
    """Preference alignment (``train.stage: dpo``) on pairs of answers to the same image and question."""

    # sigmoid: DPO (Rafailov et al.); ipo: IPO's squared loss; hinge: SLiC's hinge on the margin.
    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    # How far the policy may move from the reference (larger: closer to it).
    beta: float = 0.1
    # sigmoid only: the share of pairs assumed mislabelled (conservative DPO).
    label_smoothing: float = 0.0
    # RPO: add this times the chosen answer's per-token negative log-likelihood.
    sft_weight: float = 0.0
    # Compute the reference log-probabilities once before training (required with finetune:
    # full; with LoRA the reference is otherwise the model with its adapter off).
    precompute_reference: bool = False


@dataclass
class SourceSettings:
    """One raw data source merged by process_image.py."""

    # One of the readers registered in dataset/sources (checked by process_image.py).
    type: str
    annotations: str
    image_dir: str = ""
    name: str | None = None


@dataclass
class DataSettings:
    sources: list[SourceSettings] = field(default_factory=list)
    # Where process_image.py writes images.json and qa.json.
    output_dir: str = "data/merged"
    seed: int = 42
    # What process_image.py does with a bad record: skip it (counted) or stop with an error.
    on_error: Literal["skip", "stop"] = "skip"
    check_images: bool = True
    # AI Challenger: one of these is chosen with probability 1/2 each.
    question_templates: list[str] = field(
        default_factory=lambda: [f"{DEFAULT_IMAGE_TOKEN}\n这张图片描述了什么？", f"{DEFAULT_IMAGE_TOKEN}\n请用一句话描述这张图片。"]
    )
    # Training data: a merged qa.json (images.json is read from the same directory).
    train_file: str = "data/merged/qa.json"
    # Held-out data for eval loss / evaluate.py; null disables evaluation during training.
    eval_file: str | None = None
    # Use at most this many eval records during training (null: all of them).
    eval_max_samples: int | None = None
    max_length: int = 2048
    # Keep the tokenized training data on disk, memory-mapped by every rank and worker, and reuse it
    # while the data, tokenizer and settings are the same (dataset/token_cache.py).
    token_cache: bool = True
    # Where (null: .token_cache beside the data file, or ~/.cache/siglip-qwen-vqa when that is read-only).
    token_cache_dir: str | None = None
    group_by_length: bool = True
    num_workers: int = 2


@dataclass
class TrainSettings:
    # "pretrain": projector only. "sft": projector + LoRA (or the full LM, see finetune).
    # "dpo": preference alignment from an sft checkpoint (train.init_from), see train.dpo.
    stage: Literal["pretrain", "sft", "dpo"] = "sft"
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    # Train the vision tower too (off for pretrained towers; the tiny demo tower may learn).
    train_vision_tower: bool = False
    # finetune: full only. false keeps the token embeddings and LM head frozen (and out of the
    # checkpoint): with a 151,936-token vocabulary they are most of a small model's weights.
    train_embeddings: bool = True
    output_dir: str = "checkpoints/run"
    learning_rate: float = 2e-4
    # null: same as learning_rate.
    projector_learning_rate: float | None = 1e-3
    vision_learning_rate: float | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.03
    num_epochs: float = 1.0
    # > 0 overrides num_epochs.
    max_steps: int = -1
    # Stop after this many seconds of training (null: no limit); a checkpoint is written then.
    max_time_seconds: float | None = None
    # Stop (and save) at this global step without changing the schedule: splits one run into
    # several sessions that resume where the last one stopped (null: run to the end).
    stop_at_step: int | None = None
    # An earlier stage's checkpoint (or run dir) to start from: a pretrain projector for sft,
    # an sft checkpoint for dpo (required there).
    init_from: str | None = None
    # At each evaluation, also generate answers for the eval records and log their official
    # VQA accuracy next to the eval loss.
    eval_vqa: bool = False
    per_device_batch_size: int = 8
    eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    bf16: bool = True
    activation_checkpointing: bool = True
    # torch.compile each transformer layer (VQAModel.compile_layers): on an H100 a 1.5B full
    # fine-tune step took 0.30 s eager, 0.20 s compiled. Compiling costs about a minute at start;
    # on a small CPU machine it costs minutes, which is why the demo leaves it off.
    torch_compile: bool = False
    # Path to a DeepSpeed JSON config (configs/zero2.json, zero3.json, zero3_offload.json) or null.
    deepspeed: str | None = None
    report_to: list[str] = field(default_factory=lambda: ["wandb"])
    run_name: str | None = None
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 3
    eval_steps: int = 500
    seed: int = 42
    # "auto": continue from the newest complete checkpoint-N in output_dir; "never"; or a path.
    resume: str = "auto"
    # Run on CPU even when a GPU is present (the offline demo and tests).
    use_cpu: bool = False


@dataclass
class SamplingSettings:
    """How one answer is generated: greedy (``do_sample: false``) or sampled with temperature,
    top-p and top-k; ``seed`` makes sampling repeatable (None: a fresh seed every time). The one
    type for these six settings: the ``generation`` section of a config extends it, and every
    generator (local, server, llama.cpp) takes it."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = 0

    @classmethod
    def from_config(cls, generation: "SamplingSettings", **overrides) -> "SamplingSettings":
        """Just the sampling settings of ``generation`` (a config's section), with ``overrides``
        (e.g. command-line flags; ``None`` means "not given") on top, validated: a bad value raises
        ``ValueError`` naming the setting."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown sampling setting(s): {', '.join(sorted(unknown))}")
        values = {name: getattr(generation, name) for name in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validate()

    def validate(self) -> "SamplingSettings":
        for name in ("temperature", "top_p"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature} (greedy: do_sample false)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        return self


@dataclass
class GenerationSettings(SamplingSettings):
    """The ``generation`` section: the sampling settings, plus batching and the review flags."""

    batch_size: int = 8
    # Batch pre-annotation flags an answer for review (the rule that fired is recorded) when its
    # mean token log-probability is below review_threshold, when it holds one of review_words
    # (hedging: whole words, any case; words in CJK scripts anywhere), when it is empty, or when
    # it is longer than review_max_chars characters (0: no limit).
    review_threshold: float = -0.5
    review_words: list[str] = field(default_factory=lambda: [
        "maybe", "possibly", "probably", "perhaps", "might", "not sure", "unclear", "i think",
        "可能", "也许", "大概", "或许", "好像", "似乎", "不确定",
    ])
    review_max_chars: int = 200


@dataclass
class Config:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build dataclasses from mappings."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept it, it is unambiguous.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} (known keys{' in ' + where if where else ''}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    return cls(**kwargs)


def _apply_override(tree: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (or only defaults when None), apply ``overrides``, validate everything."""
    tree: dict = {}
    source = str(path) if path is not None else "<defaults>"
    if path is not None:
        try:
            text = read_utf8(path, "config")
        except UserError as exc:
            raise ConfigError(str(exc)) from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for override in overrides or []:
        try:
            _apply_override(tree, override)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    try:
        return _build(Config, tree, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)

"""What every export format needs: refusals, loading a checkpoint once, the merged LM weights,
checks on the output directory, and writing it atomically.

A format module (``exporters/llava.py``, later ``gguf.py``) maps the loaded model into its own
layout and writes its files into the temporary directory ``atomic.replace_directory`` yields.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from atomic import replace_directory
from errors import UserError
from model.checkpoints import resolve_checkpoint


def stderr_warning(message: str) -> None:
    """How an export says something the user should know but that does not stop it."""
    print(f"warning: {message}", file=sys.stderr)


class ExportRefused(UserError):
    """A checkpoint or output the export cannot (or must not) handle; the message is one line."""


@contextlib.contextmanager
def quiet_transformers():
    """No progress bars or info warnings while loading: a refusal stays one line on stderr."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def export_record(source: "Checkpoint", fmt: str, options: dict) -> dict:
    """``lineage.json`` of an export: when, in which format, by which code, from which checkpoint
    (by fingerprint, with the checkpoint's own training record; ``model.lineage``)."""
    from model.lineage import checkpoint_record, code_version, now

    return {"exported": now(), "format": fmt, "options": options, "code": code_version(),
            "source": checkpoint_record(source.path)}


@contextlib.contextmanager
def export_directory(output: Path, record: dict):
    """``atomic.replace_directory`` for an export, with its ``record`` (:func:`export_record`)
    written first: a write that fails (the disk full, a quota, an I/O error; safetensors reports
    those as ``SafetensorError``) is one line, and nothing partial is left -- the output stays as
    it was."""
    import json

    from safetensors import SafetensorError

    from model.lineage import EXPORT_RECORD

    try:
        with replace_directory(output) as tmp:
            (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            yield tmp
    except (OSError, SafetensorError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ExportRefused(f"{output}: writing the export failed ({reason}); nothing was exported and {output} is "
                            "as it was -- free some space or choose another --output") from None


def resolve(checkpoint: str | Path) -> Path:
    """The checkpoint a path names (a run directory: its newest complete one), or a refusal."""
    try:
        return resolve_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        message = str(exc)
        raise ExportRefused(message if "incomplete checkpoint" in message else f"incomplete checkpoint: {message}") from None


class Checkpoint:
    """The checkpoint an export reads: resolved once (a run directory: its newest complete
    checkpoint), its config read once, its model and tokenizer loaded once on first use -- in float32
    (for an exact merge), eval mode, whatever format asks."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.path = resolve(checkpoint)
        self._config = None
        self._loaded = None

    @property
    def config(self):
        if self._config is None:
            from model.configuration import VQAConfig

            try:
                with quiet_transformers():
                    config = VQAConfig.from_pretrained(self.path)
            except (OSError, ValueError) as exc:
                raise ExportRefused(f"{self.path}: unreadable config.json ({exc})") from None
            if config.model_type != VQAConfig.model_type:
                raise ExportRefused(f"{self.path}: not a {VQAConfig.model_type} checkpoint")
            self._config = config
        return self._config

    def load(self):
        """``(model, tokenizer)``, loaded on the first call."""
        if self._loaded is None:
            from model.modeling import VQAModel

            config = self.config
            try:
                with quiet_transformers():
                    # A QLoRA checkpoint's adapter is merged into the full-precision base (the usual
                    # QLoRA practice): the 4-bit weights were only ever a memory saving for training.
                    model = VQAModel.from_pretrained(self.path, config=config, dtype="float32", quantize="none").eval()
            except ValueError as exc:
                raise ExportRefused(f"incomplete checkpoint: {exc}") from None
            except OSError as exc:
                raise ExportRefused(f"{self.path}: cannot load the checkpoint or its base models ({exc})") from None
            with quiet_transformers():  # AutoTokenizer reads our config.json and warns about its model type
                tokenizer = model.checkpoint_tokenizer(self.path)
            self._loaded = model, tokenizer
        return self._loaded


def as_checkpoint(checkpoint: "str | Path | Checkpoint") -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)


def check_output(output: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse an output that is, contains or lies inside the checkpoint, is a file, or is a
    non-empty directory (unless ``overwrite``)."""
    out, ckpt = output.resolve(), checkpoint.resolve()
    if out == ckpt or out in ckpt.parents or ckpt in out.parents:
        raise ExportRefused(f"{output}: the output must not be, contain or lie inside the checkpoint {checkpoint}")
    if out.exists() and not out.is_dir():
        raise ExportRefused(f"{output}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportRefused(f"{output}: exists and is not empty (pass --overwrite to replace it)")



def merged_lm_state(model) -> dict[str, torch.Tensor]:
    """The causal LM's weights (``model.*``, ``lm_head.*``) with any LoRA adapter merged in.

    Reads the adapter through peft's ``get_delta_weight`` (and DoRA's magnitudes) instead of
    ``merge_and_unload`` so the model passed in is left exactly as it was. Works for every
    ``train.lora.method``: rsLoRA's scaling is inside the delta, and a PiSSA start's residual is
    the base weight the checkpoint loaded with.
    """
    lm = model.causal_lm
    state = {}
    for key, value in lm.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    if model.config.lora is None:
        return state
    from peft.tuners.lora import LoraLayer

    for name, module in lm.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if getattr(module, "merged", False):
            raise ExportRefused(f"LoRA layer {name} is already merged into its base weights")
        key = f"{name}.weight"
        weight = state[key]
        merged = weight.to(torch.float32)
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            merged = merged + module.get_delta_weight(adapter).to(torch.float32)
            if module.use_dora.get(adapter, False):
                merged = _dora_rescaled(module, adapter, merged)
        state[key] = merged.to(weight.dtype)
    return state


def _dora_rescaled(module, adapter: str, direction: torch.Tensor) -> torch.Tensor:
    """DoRA's merged weight: each output row of W + BA rescaled to the learned magnitude m
    (``m * (W + BA) / ||W + BA||``, the norm over the row's inputs), the weight DoRA's forward
    pass computes with. The norm is taken of the merged weight itself, as DoRA defines it."""
    if getattr(module, "fan_in_fan_out", False) or direction.ndim != 2:
        raise ExportRefused(f"DoRA layer {type(module).__name__} is not a plain linear layer; it cannot be merged here")
    magnitude = module.lora_magnitude_vector[adapter].weight.to(torch.float32)
    return direction * (magnitude / torch.linalg.norm(direction, dim=1)).unsqueeze(1)

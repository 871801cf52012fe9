"""QLoRA: the language model's linear layers in 4 bits (bitsandbytes NF4/FP4), LoRA on top.

``model.quantize`` selects it; this module turns the settings into transformers'
``BitsAndBytesConfig`` and prepares the loaded 4-bit model for training. Only the language model
is quantized: the vision tower stays as configured and the projector in full precision.
"""

from __future__ import annotations

import importlib.util

import torch

from errors import UserError
from model.configuration import DTYPES

BITSANDBYTES = "bitsandbytes==0.50.2"


def require_bitsandbytes(label: str = "model.quantize") -> None:
    """One line naming the package when it is not installed, or when it is but does not import (a
    build for another CUDA or CPU, a missing native library): transformers would otherwise fail
    later, deep inside loading, with its own traceback."""
    try:
        found = importlib.util.find_spec("bitsandbytes") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UserError(f"{label}: 4-bit quantization needs the bitsandbytes package (pip install {BITSANDBYTES})")
    try:
        importlib.import_module("bitsandbytes")
    except Exception as exc:  # noqa: BLE001 -- whatever a broken native package raises, said in one line
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise UserError(f"{label}: bitsandbytes is installed but cannot be imported ({reason}); reinstall it for "
                        f"this machine (pip install --force-reinstall {BITSANDBYTES})") from None


def bnb_config(config):
    """transformers' ``BitsAndBytesConfig`` for a :class:`model.VQAConfig`, or None when it does
    not quantize. The packed 4-bit weights are stored in the compute dtype (``bnb_4bit_quant_storage``):
    DeepSpeed ZeRO-3 shards parameters of one dtype, and ZeRO-2 and plain runs do not mind."""
    if config.quantize == "none":
        return None
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    compute = DTYPES[config.quantize_compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quantize,
        bnb_4bit_use_double_quant=config.quantize_double,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,
    )


def prepare_for_training(lm, compute_dtype: torch.dtype):
    """peft's ``prepare_model_for_kbit_training`` (frozen base, norms upcast to fp32 for stable
    training) without its activation checkpointing (``train.activation_checkpointing`` stays in
    charge), then the frozen token embeddings and head back to the compute dtype: peft upcasts
    every non-quantized parameter to fp32, which for Qwen's 151,936-row embedding is 0.5 GB at
    0.5B and 0.9 GB at 1.5B of memory that buys nothing (bench/qlora_memory.py)."""
    from peft import prepare_model_for_kbit_training

    lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    for module in {lm.get_input_embeddings(), lm.get_output_embeddings()}:
        if module is not None:
            module.to(compute_dtype)
    return lm


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether any layer of ``module`` holds 4-bit weights."""
    return any(type(m).__name__ == "Linear4bit" for m in module.modules())

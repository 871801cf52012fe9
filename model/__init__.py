"""The composite model: vision tower + projector + Qwen LM; configuration, save/load, LoRA wiring.

``VQAModel`` and ``VQAConfig`` are imported on first use, so that ``model.checkpoints`` (standard
library only) can be used by the scripts before they pay for importing torch and transformers.
"""

from importlib import import_module

_LAZY = {"VQAConfig": "model.configuration", "VQAModel": "model.modeling"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")

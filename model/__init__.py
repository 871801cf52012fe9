"""The composite model: vision tower + projector + Qwen LM; save/load; LoRA wiring; generation."""

from model.configuration import VQAConfig
from model.modeling import VQAModel

__all__ = ["VQAConfig", "VQAModel"]

"""The composite model's own config: which bases it wires together and how.

The model settings themselves (``config.ModelSettings``: the bases, the feature layer and
selection, the image token, dtypes, ...) are declared once, in ``config.py``; this class stores
them in ``config.json`` together with what building the model derived (token id, feature count,
hidden sizes) and what training chose (``finetune``, LoRA, trainable tower).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import AutoConfig, PretrainedConfig

from config import DTYPE_NAMES, ModelSettings

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
# Model settings stored under another name in config.json: PretrainedConfig owns ``dtype`` and
# ``attn_implementation`` (names kept as they are so existing checkpoints load unchanged).
_STORED_AS = {"dtype": "base_dtype", "attn_implementation": "attn_implementation_name"}
_SETTING_NAMES = tuple(f.name for f in dataclasses.fields(ModelSettings))


class VQAConfig(PretrainedConfig):
    """Configuration of :class:`model.VQAModel`.

    The base vision tower and language model are referenced by hub name or path, not copied: a
    checkpoint holds only what training changed. ``finetune`` records what that is:
    ``projector`` (pretrain stage), ``lora`` (projector + LoRA adapter) or ``full`` (projector +
    all language-model weights); ``base_checkpoint`` what it was trained on top of.
    """

    model_type = "siglip_qwen_vqa"
    # DeepSpeed's "auto" bucket sizes and FLOP estimates read config.hidden_size.
    attribute_map = {"hidden_size": "text_hidden_size"}

    def __init__(
        self,
        image_token_id: int | None = None,
        num_image_tokens: int | None = None,
        vision_hidden_size: int | None = None,
        text_hidden_size: int | None = None,
        text_vocab_size: int | None = None,
        projector_hidden_act: str = "gelu",
        finetune: str = "projector",
        lora: dict | None = None,
        train_vision_tower: bool = False,
        train_embeddings: bool = True,
        base_checkpoint: str | None = None,
        **kwargs,
    ) -> None:
        defaults = ModelSettings()
        for name in _SETTING_NAMES:
            stored = _STORED_AS.get(name, name)
            setattr(self, stored, kwargs.pop(stored, getattr(defaults, name)))
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.vision_hidden_size = vision_hidden_size
        self.text_hidden_size = text_hidden_size
        self.text_vocab_size = text_vocab_size
        self.projector_hidden_act = projector_hidden_act
        self.finetune = finetune
        self.lora = lora
        self.train_vision_tower = train_vision_tower
        self.train_embeddings = train_embeddings
        # A checkpoint this one continues from with a fresh adapter (a dpo run on an sft model):
        # loading rebuilds that checkpoint, folds its adapter into the language model, then loads
        # this one's weights on top. None: the bases alone.
        self.base_checkpoint = base_checkpoint
        super().__init__(**kwargs)

    @classmethod
    def from_settings(cls, settings: ModelSettings, **kwargs) -> "VQAConfig":
        """A config for a fresh model from the ``model`` section of the YAML configuration."""
        values = {_STORED_AS.get(name, name): getattr(settings, name) for name in _SETTING_NAMES}
        return cls(**values, **kwargs)


# Registered so that transformers' Auto classes recognise a checkpoint directory (the tokenizer
# saved beside our config.json is loaded with AutoTokenizer, which reads config.json first).
AutoConfig.register(VQAConfig.model_type, VQAConfig, exist_ok=True)

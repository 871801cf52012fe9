"""Run an exported ``LlavaForConditionalGeneration`` directory through our Predictor/generation.

``export.py`` writes the trained model as a transformers LLaVA checkpoint (``config.json`` with
``model_type: llava`` + tokenizer/processor files). :class:`LlavaAdapter` wraps the loaded LLaVA
model and exposes the few attributes :mod:`model.generation` and :class:`model.predictor.Predictor`
use (``embed``, ``decoder``, ``lm_head``, ``text_config``, ``config.image_token_id`` ...), so an
export is answered by exactly the same prompt building, preprocessing and decoding loop as a
training checkpoint. Nothing else is adapted: training and saving stay with :class:`VQAModel`.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from qwen.splice import embed_with_images

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_llava_export(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a LLaVA ``config.json`` (an export, not a run)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "llava"
    except (OSError, ValueError, AttributeError):
        return False


def _num_image_tokens(config) -> int:
    vision = config.vision_config
    positions = (vision.image_size // vision.patch_size) ** 2
    return positions - (1 if config.vision_feature_select_strategy == "default" else 0)


class LlavaAdapter(nn.Module):
    """A loaded LLaVA export seen through the interface of :class:`model.VQAModel`'s generation."""

    def __init__(self, llava, image_token: str, preprocessor) -> None:
        super().__init__()
        self.llava = llava
        cfg = llava.config
        self.config = SimpleNamespace(
            image_token=image_token,
            image_token_id=cfg.image_token_id,
            num_image_tokens=_num_image_tokens(cfg),
            system_prompt=getattr(cfg, "system_prompt", None),
        )
        self.vision_tower = SimpleNamespace(preprocessor=preprocessor)

    @property
    def decoder(self) -> nn.Module:
        return self.llava.model.language_model

    @property
    def lm_head(self) -> nn.Module:
        return self.llava.lm_head

    @property
    def multi_modal_projector(self) -> nn.Module:
        return self.llava.model.multi_modal_projector

    @property
    def text_config(self):
        return self.llava.config.text_config

    def get_input_embeddings(self) -> nn.Module:
        return self.llava.get_input_embeddings()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, num_image_tokens, text_hidden]``, computed by LLaVA's own code path."""
        dtype = self.llava.model.vision_tower.dtype
        out = self.llava.model.get_image_features(pixel_values=pixel_values.to(dtype), return_dict=True)
        return torch.stack(list(out.pooler_output))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        return embed_with_images(
            self.get_input_embeddings(), input_ids, self.config.image_token_id, pixel_values, self.image_features
        )


def load_llava_export(path: str | Path, dtype: str | None = None, device: str | None = None):
    """Load an export directory: ``(LlavaAdapter, tokenizer)``.

    ``dtype`` (``float32``/``bfloat16``/``float16``) defaults to the dtype the export was saved in.
    The image token is the tokenizer's token for ``config.image_token_id``, so the prompt's
    placeholder ids are the ones the export's own processor would produce.
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from qwen.tokenizer import load_tokenizer
    from visual.tower import _siglip_preprocessor

    path = Path(path)
    llava = LlavaForConditionalGeneration.from_pretrained(path, dtype=DTYPES[dtype] if dtype else "auto").eval()
    if device:
        llava.to(device)
    image_token_id = llava.config.image_token_id
    image_token = AutoTokenizer.from_pretrained(path).convert_ids_to_tokens(image_token_id)
    if not image_token:
        raise ValueError(f"{path}: the tokenizer has no token for the image token id {image_token_id}")
    tokenizer = load_tokenizer(str(path), image_token)
    preprocessor = _siglip_preprocessor(str(path), llava.config.vision_config.image_size)
    return LlavaAdapter(llava, image_token, preprocessor), tokenizer

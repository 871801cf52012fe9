"""Run an exported ``LlavaForConditionalGeneration`` directory through our Predictor/generation.

``export.py`` writes the trained model as a transformers LLaVA checkpoint (``config.json`` with
``model_type: llava`` + tokenizer/processor files). :class:`LlavaAdapter` wraps the loaded LLaVA
model and offers the interface generation needs (:class:`inference.protocol.GenerativeVQA`), so an
export is answered by exactly the same prompt building, preprocessing and decoding loop as a
training checkpoint. Nothing else is adapted: training and saving stay with :class:`VQAModel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.configuration import DTYPES
from model.splice import embed_with_images
from visual.preprocess import ImagePreprocessor


@dataclass(frozen=True)
class ExportPromptSpec:
    """How an image enters a prompt of the export (what ``VQAConfig`` says for a checkpoint)."""

    image_token: str
    image_token_id: int
    num_image_tokens: int
    system_prompt: str | None = None


def _num_image_tokens(config) -> int:
    vision = config.vision_config
    positions = (vision.image_size // vision.patch_size) ** 2
    return positions - (1 if config.vision_feature_select_strategy == "default" else 0)


class LlavaAdapter(nn.Module):
    """A loaded LLaVA export seen through the interface of :class:`model.VQAModel`'s generation."""

    def __init__(self, llava, image_token: str, preprocessor: ImagePreprocessor) -> None:
        super().__init__()
        self.llava = llava
        cfg = llava.config
        self.config = ExportPromptSpec(
            image_token=image_token,
            image_token_id=cfg.image_token_id,
            num_image_tokens=_num_image_tokens(cfg),
            system_prompt=getattr(cfg, "system_prompt", None),
        )
        self.preprocessor = preprocessor

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

    @property
    def device(self) -> torch.device:
        return self.llava.device

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

    from qwen.tokenizer import with_image_token
    from visual.tower import siglip_preprocessor

    path = Path(path)
    llava = LlavaForConditionalGeneration.from_pretrained(path, dtype=DTYPES[dtype] if dtype else "auto").eval()
    if device:
        llava.to(device)
    image_token_id = llava.config.image_token_id
    tokenizer = AutoTokenizer.from_pretrained(path)  # loaded once: it is most of the load time
    image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    if not image_token:
        raise ValueError(f"{path}: the tokenizer has no token for the image token id {image_token_id}")
    tokenizer = with_image_token(tokenizer, image_token)
    preprocessor = siglip_preprocessor(str(path), llava.config.vision_config.image_size)
    return LlavaAdapter(llava, image_token, preprocessor), tokenizer

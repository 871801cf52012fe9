"""The interface a model offers to generation and to the Predictor.

Two classes implement it: :class:`model.VQAModel` (a training checkpoint) and
:class:`model.llava_adapter.LlavaAdapter` (an ``export.py`` directory loaded as transformers'
LLaVA). Naming it here keeps both honest: whatever generation touches is listed below.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from visual.preprocess import ImagePreprocessor


class PromptSpec(Protocol):
    """How an image enters a prompt: the placeholder, its id, how many ids one image takes."""

    image_token: str
    image_token_id: int
    num_image_tokens: int
    system_prompt: str | None


class GenerativeVQA(Protocol):
    """A vision-language model that generation can run: embed with images, decode, project."""

    config: PromptSpec

    @property
    def preprocessor(self) -> ImagePreprocessor: ...

    @property
    def decoder(self) -> nn.Module:
        """The language model without its head (takes ``inputs_embeds``/``input_ids``, a KV cache)."""

    @property
    def lm_head(self) -> nn.Module: ...

    @property
    def text_config(self) -> Any:
        """The language model's transformers config (for the KV cache)."""

    @property
    def device(self) -> torch.device: ...

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the projected image features spliced in at the image tokens."""

    def eval(self) -> Any: ...

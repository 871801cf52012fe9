"""Maps vision features into the language model's embedding space."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class Projector(nn.Module):
    """``Linear(vision_hidden, text_hidden) -> GELU -> Linear(text_hidden, text_hidden)``.

    Module names match LLaVA's ``multi_modal_projector`` so the export is a rename-free copy.
    Weights start at N(0, std) and biases at zero (the seed's initialisation): the image tokens
    start near zero instead of as large random vectors that swamp the text embeddings.
    """

    def __init__(self, vision_hidden: int, text_hidden: int, init_std: float = 0.01, act: str = "gelu") -> None:
        super().__init__()
        self.init_std = init_std
        self.linear_1 = nn.Linear(vision_hidden, text_hidden)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.linear_1, self.linear_2):
            nn.init.normal_(linear.weight, mean=0.0, std=self.init_std)
            nn.init.zeros_(linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(features)))

"""Asking questions about images: tokenizer + preprocessing + model + generation in one object.

Shared by ``infer.py``, ``evaluate.py``, the GUI and training's held-out evaluation, so that every
entry point builds prompts and pixels exactly the way training did.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from inference.generation import GenerationResult, SamplingSettings, generate, stream_generate
from inference.protocol import GenerativeVQA
from qwen import PromptRenderer, question_messages
from qwen.tokenizer import end_of_turn_ids
from errors import UserError


class QuestionTooLong(UserError, ValueError):
    """A question whose prompt plus answer would not fit the language model's positions."""


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    # Mean log-probability of the generated tokens: a cheap confidence for review queues.
    mean_logprob: float


class Predictor:
    def __init__(self, model: GenerativeVQA, tokenizer, system_prompt: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt if system_prompt is not None else model.config.system_prompt
        self.renderer = PromptRenderer(tokenizer, model.config.num_image_tokens, model.config.image_token)
        self.preprocess = model.preprocessor
        self.eos_token_ids = end_of_turn_ids(tokenizer)

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: str | None = None, device: str | None = None,
                        quantize: str | None = None) -> "Predictor":
        """A training checkpoint, a run directory (its newest checkpoint) or a LLaVA export.
        ``quantize`` overrides a checkpoint's own ``model.quantize`` (e.g. ``none``)."""
        from model.checkpoints import is_llava_export, resolve_checkpoint

        checkpoint = resolve_checkpoint(path, allow_export=True)
        if is_llava_export(checkpoint):
            from model.llava_adapter import load_llava_export

            return cls(*load_llava_export(checkpoint, dtype=dtype, device=device))
        from model import VQAModel

        model = VQAModel.from_pretrained(checkpoint, dtype=dtype, quantize=quantize)
        if device:
            model.to(device)
        return cls(model, model.checkpoint_tokenizer(checkpoint))

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prompt_ids(self, question: str) -> list[int]:
        return self.renderer.render(question_messages(question, self.system_prompt), add_generation_prompt=True).input_ids

    def check_question(self, question: str, settings: SamplingSettings | None = None) -> None:
        """Refuse a question whose prompt plus ``max_new_tokens`` exceeds the language model's
        ``max_position_embeddings``: past it a model answers from positions it never saw, silently.
        Refused rather than cut, so a long question never loses the end a user typed last."""
        limit = getattr(self.model.text_config, "max_position_embeddings", None)
        answer = (settings or SamplingSettings()).max_new_tokens
        prompt = len(self.prompt_ids(question))
        if limit and prompt + answer > limit:
            raise QuestionTooLong(
                f"the question is too long: its prompt is {prompt:,} tokens and the answer may take {answer:,} "
                f"more, but the language model reads at most {limit:,} (max_position_embeddings); shorten "
                "the question or lower max_new_tokens"
            )

    def prompt_batch(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` (on the CPU): generation appends
        new tokens on the right, so every row's prompt must end in the last column."""
        rows = [self.prompt_ids(q) for q in questions]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return ids, mask

    def prepare(self, images: list[str | Path | Image.Image], questions: list[str]):
        """Left-padded ``input_ids``/``attention_mask`` and stacked ``pixel_values``."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        ids, mask = self.prompt_batch(questions)
        pixels = torch.stack([self.preprocess(image) for image in images])
        return ids.to(self.device), mask.to(self.device), pixels.to(self.device)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    def answer(self, images, questions, settings: SamplingSettings | None = None) -> list[Answer]:
        """Answer a batch of (image, question) pairs with one batched generation."""
        for question in questions:
            self.check_question(question, settings)
        ids, mask, pixels = self.prepare(list(images), list(questions))
        result: GenerationResult = generate(
            self.model, ids, pixels, mask, settings, self.eos_token_ids, self.tokenizer.pad_token_id
        )
        return [
            Answer(self.decode(seq), seq, result.mean_logprob(i)) for i, seq in enumerate(result.sequences)
        ]

    def stream(self, image, question: str, settings: SamplingSettings | None = None,
               should_stop=lambda: False) -> Iterator[str]:
        """Yield text pieces of the answer as they are generated (whole characters only).

        ``should_stop`` is polled between tokens so a GUI can cancel mid-answer.
        """
        self.check_question(question, settings)
        ids, mask, pixels = self.prepare([image], [question])
        tokens: list[int] = []
        emitted = ""
        for step, _, active in stream_generate(
            self.model, ids, pixels, mask, settings, self.eos_token_ids, self.tokenizer.pad_token_id
        ):
            if should_stop() or not bool(active[0]):
                break
            tokens.append(int(step[0]))
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                continue
            text = text.strip()  # trailing spaces wait: the final answer is stripped too
            if len(text) > len(emitted) and text.startswith(emitted):
                yield text[len(emitted):]
                emitted = text
        final = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        if final.startswith(emitted) and len(final) > len(emitted):
            yield final[len(emitted):]

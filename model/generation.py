"""KV-cache generation for :class:`model.VQAModel`: greedy or sampled, batched, streamable.

A small loop of our own instead of ``GenerationMixin.generate``: the image splice happens once
in the prefill, every later step feeds one token per row through the cache, and the loop yields
each step so callers can stream text. Batches are left-padded; positions are counted from each
row's first real token so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass
class SamplingSettings:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


@dataclass
class GenerationResult:
    # Generated ids per row, up to and including the end-of-turn token when one was produced.
    sequences: list[list[int]] = field(default_factory=list)
    # Log-probability of each generated token under the model (temperature 1, unfiltered).
    token_logprobs: list[list[float]] = field(default_factory=list)

    def mean_logprob(self, row: int) -> float:
        lp = self.token_logprobs[row]
        return sum(lp) / len(lp) if lp else float("-inf")


def _filter_logits(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    logits = logits / max(s.temperature, 1e-5)
    if s.top_k and s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= s.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.inference_mode()
def stream_generate(
    model,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    settings: SamplingSettings | None = None,
    eos_token_ids: list[int] | tuple[int, ...] = (),
    pad_token_id: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(tokens [B], logprobs [B], active [B])`` once per step.

    ``active`` marks rows still generating at this step (a finished row yields ``pad_token_id``).
    Stops when every row has produced an end-of-turn token or after ``max_new_tokens``.
    """
    s = settings or SamplingSettings()
    device = input_ids.device
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    padded = bool((attention_mask == 0).any())
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    generator = None
    if s.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(s.seed if s.seed is not None else torch.seed())
    eos = torch.tensor(list(eos_token_ids), device=device, dtype=torch.long)
    image_token_id = model.config.image_token_id

    cache = DynamicCache(config=model.text_config)
    embeds = model.embed(input_ids, pixel_values)
    hidden = model.decoder(
        inputs_embeds=embeds, attention_mask=attention_mask if padded else None,
        position_ids=position_ids, past_key_values=cache, use_cache=True,
    ).last_hidden_state[:, -1]
    next_position = position_ids[:, -1:] + 1
    active = torch.ones(batch, dtype=torch.bool, device=device)

    for _ in range(s.max_new_tokens):
        logits = model.lm_head(hidden).float()
        # The image placeholder only ever enters through the splice; never generate it.
        logits[:, image_token_id] = float("-inf")
        logprobs = logits.log_softmax(-1)
        if s.do_sample:
            probs = _filter_logits(logits, s).softmax(-1)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            tokens = logits.argmax(-1)
        token_logprobs = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
        tokens = torch.where(active, tokens, torch.full_like(tokens, pad_token_id))
        yield tokens, token_logprobs, active.clone()
        if eos.numel():
            active &= ~torch.isin(tokens, eos)
        if not bool(active.any()):
            return
        attention_mask = torch.cat([attention_mask, torch.ones(batch, 1, dtype=torch.long, device=device)], dim=1)
        hidden = model.decoder(
            input_ids=tokens[:, None], attention_mask=attention_mask if padded else None,
            position_ids=next_position, past_key_values=cache, use_cache=True,
        ).last_hidden_state[:, -1]
        next_position = next_position + 1


def generate(model, input_ids, pixel_values, attention_mask=None, settings=None, eos_token_ids=(), pad_token_id=0) -> GenerationResult:
    """Run :func:`stream_generate` to the end and collect each row's tokens and log-probabilities."""
    batch = input_ids.shape[0]
    result = GenerationResult([[] for _ in range(batch)], [[] for _ in range(batch)])
    for tokens, logprobs, active in stream_generate(
        model, input_ids, pixel_values, attention_mask, settings, eos_token_ids, pad_token_id
    ):
        for row in torch.nonzero(active).flatten().tolist():
            result.sequences[row].append(int(tokens[row]))
            result.token_logprobs[row].append(float(logprobs[row]))
    return result

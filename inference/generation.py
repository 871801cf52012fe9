"""KV-cache generation: greedy or sampled, batched, streamable.

Runs any :class:`inference.protocol.GenerativeVQA` (a training checkpoint or a LLaVA export).
A small loop of our own instead of ``GenerationMixin.generate``: the image splice happens once
in the prefill, every later step feeds one token per row through the cache, and the loop yields
each step so callers can stream text. Batches are left-padded; positions are counted from each
row's first real token so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from config import SamplingSettings  # noqa: F401 (re-exported: the generators' settings type)
from inference.protocol import GenerativeVQA


@dataclass
class GenerationResult:
    # Generated ids per row, up to and including the end-of-turn token when one was produced.
    sequences: list[list[int]] = field(default_factory=list)
    # Log-probability of each generated token under the model (temperature 1, unfiltered).
    token_logprobs: list[list[float]] = field(default_factory=list)

    def mean_logprob(self, row: int) -> float:
        lp = self.token_logprobs[row]
        return sum(lp) / len(lp) if lp else float("-inf")


# Largest lm_head for which a transposed copy is kept on CPU (Qwen2.5-0.5B's fp32 head is 0.54 GB).
_MAX_TRANSPOSED_HEAD_BYTES = 1 << 30


def _vocab_projection(lm_head: nn.Module, device: torch.device):
    """``hidden [B, H] -> float32 logits [B, V]`` for the decoding loop.

    On CPU the vocabulary projection is most of a decoding step, and MKL computes ``h @ W.T`` with
    the usual ``[V, H]`` weight 1.3-2.5x slower than ``h @ Wt`` with a contiguous ``[H, V]`` copy
    (measured in bench/generate.py). That copy is cached on the module, keyed on the weight's
    storage, version counter and dtype, so a weight changed in place (training between two
    evaluations) is copied again. GPUs, biased or unusual heads, and heads over 1 GiB use the module.
    """
    weight = getattr(lm_head, "weight", None)
    if (device.type != "cpu" or type(lm_head) is not nn.Linear or lm_head.bias is not None or weight is None
            or weight.dim() != 2 or weight.numel() * weight.element_size() > _MAX_TRANSPOSED_HEAD_BYTES):
        return lambda hidden: lm_head(hidden).float()
    key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
    cached = lm_head.__dict__.get("_transposed_weight")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, weight.detach().t().contiguous())
        lm_head.__dict__["_transposed_weight"] = cached
    transposed = cached[1]
    return lambda hidden: torch.mm(hidden.to(transposed.dtype), transposed).float()


# Candidates kept by torch.topk before top-p filtering; the full vocabulary is sorted only when
# these do not hold the top-p mass (a flat distribution).
_TOP_P_CANDIDATES = 256


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One categorical draw per row: a uniform number located in the cumulative distribution.

    Exact like ``torch.multinomial(probs, 1)`` but one random number per row; multinomial over
    Qwen's 151,936 categories costs tens of milliseconds per step on a CPU.
    """
    dtype = torch.float32 if probs.device.type == "mps" else torch.float64
    cdf = probs.to(dtype).cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=dtype) * cdf[:, -1:]
    # right=True: the first index whose cumulative mass exceeds u, so zero-probability tokens never win
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _sample(logits: torch.Tensor, s: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Draw from the temperature-scaled distribution, restricted by top-k and then top-p.

    Top-k keeps the ``top_k`` largest logits; top-p then keeps the smallest set of the remaining
    tokens (most likely first, renormalised) whose mass reaches ``top_p`` (a token is dropped when
    the mass before it already reaches ``top_p``, so the most likely token always stays).
    """
    logits = logits / max(s.temperature, 1e-5)
    vocab = logits.shape[-1]
    if s.top_k <= 0 and s.top_p >= 1.0:
        return _inverse_cdf(logits.softmax(-1), generator)
    values, index = torch.topk(logits, min(s.top_k if s.top_k > 0 else _TOP_P_CANDIDATES, vocab), dim=-1)
    if s.top_p < 1.0:
        if s.top_k > 0:
            probs = values.softmax(-1)
        else:
            probs = (values - logits.logsumexp(-1, keepdim=True)).exp()
            if bool((probs.sum(-1) < s.top_p).any()):
                values, index = torch.sort(logits, descending=True, dim=-1)
                probs = values.softmax(-1)
        values = values.masked_fill(probs.cumsum(-1) - probs >= s.top_p, float("-inf"))
    return index.gather(-1, _inverse_cdf(values.softmax(-1), generator)[:, None]).squeeze(-1)


@torch.inference_mode()
def stream_generate(
    model: GenerativeVQA,
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

    project = _vocab_projection(model.lm_head, hidden.device)
    for _ in range(s.max_new_tokens):
        logits = project(hidden)
        # The image placeholder only ever enters through the splice; never generate it.
        logits[:, image_token_id] = float("-inf")
        logprobs = logits.log_softmax(-1)
        if s.do_sample:
            tokens = _sample(logits, s, generator)
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


def generate(model: GenerativeVQA, input_ids, pixel_values, attention_mask=None, settings=None, eos_token_ids=(), pad_token_id=0) -> GenerationResult:
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

"""KV-cache generation against independent references: a full-forward greedy loop and HF Llava."""

from __future__ import annotations

import pytest
import torch

from config import GenerationSettings
from inference.generation import SamplingSettings, generate
from tests.conftest import llava_from, make_model, question_batch

QUESTIONS = ["What colour is the square?", "How many?", "Is there a small red circle on the left side?"]


@pytest.fixture(scope="module")
def model(tiny):
    """A random tiny model whose greedy output is varied (not the copy-the-last-token newlines of
    a freshly initialised tied-embedding LM): strong projector, amplified MLPs."""
    m = make_model(tiny).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.multi_modal_projector.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for layer in m.decoder.layers:
            layer.mlp.down_proj.weight.mul_(30)
    return m


def manual_greedy(model, ids, mask, pixels, steps):
    """No cache: the whole sequence through ``model.forward`` every step, argmax of the last logits."""
    ids, mask = ids.clone(), mask.clone()
    tokens, logprobs = [], []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits[:, -1].float()
            logits[:, model.config.image_token_id] = float("-inf")
            nxt = logits.argmax(-1)
            tokens.append(nxt)
            logprobs.append(logits.log_softmax(-1).gather(-1, nxt[:, None]).squeeze(-1))
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(tokens, 1), torch.stack(logprobs, 1)


def test_cached_equals_uncached_equals_manual_loop(model, tokenizer):
    steps = 10
    ids, mask, pixels = question_batch(model, tokenizer, QUESTIONS[:1])
    ours = generate(model, ids, pixels, mask, SamplingSettings(max_new_tokens=steps))
    manual, manual_lp = manual_greedy(model, ids, mask, pixels, steps)
    assert ours.sequences == manual.tolist()
    assert len(set(ours.sequences[0])) > 3  # varied output, not one repeated token
    torch.testing.assert_close(torch.tensor(ours.token_logprobs), manual_lp, atol=1e-4, rtol=0)

    llava = llava_from(model)
    for use_cache in (True, False):
        with torch.no_grad():
            hf = llava.generate(
                input_ids=ids, pixel_values=pixels, attention_mask=mask, do_sample=False,
                max_new_tokens=steps, min_new_tokens=steps, eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
                suppress_tokens=[model.config.image_token_id], use_cache=use_cache,
            )
        assert hf[:, ids.shape[1]:].tolist() == ours.sequences, f"use_cache={use_cache}"


def test_batched_left_padded_equals_one_at_a_time(model, tokenizer):
    steps = 8
    ids, mask, pixels = question_batch(model, tokenizer, QUESTIONS, seed=3)
    assert len(set(mask.sum(1).tolist())) == 3  # three different prompt lengths: real left padding
    alone = []
    for row in range(len(QUESTIONS)):
        width = int(mask[row].sum())
        r = generate(model, ids[row:row + 1, -width:], pixels[row:row + 1], None, SamplingSettings(max_new_tokens=steps))
        alone.append(r.sequences[0])
    # An end-of-turn id that row 0 produces at step 3 makes rows finish at different steps.
    eos = alone[0][3]
    assert all(eos not in seq[:steps] for seq in alone[1:]), "pick another step"
    expected = [alone[0][:4]] + alone[1:]
    together = generate(model, ids, pixels, mask, SamplingSettings(max_new_tokens=steps), eos_token_ids=[eos])
    assert together.sequences == expected
    # Same result with every row padded to a wider batch (extra padding changes nothing).
    pad = torch.full((ids.shape[0], 5), tokenizer.pad_token_id)
    wider = generate(model, torch.cat([pad, ids], 1), pixels, torch.cat([torch.zeros_like(pad), mask], 1),
                     SamplingSettings(max_new_tokens=steps), eos_token_ids=[eos])
    assert wider.sequences == expected
    torch.testing.assert_close(torch.tensor(wider.token_logprobs[1]), torch.tensor(together.token_logprobs[1]),
                               atol=1e-4, rtol=0)


def test_sampling_is_seeded_and_top_k_1_is_greedy(model, tokenizer):
    ids, mask, pixels = question_batch(model, tokenizer, QUESTIONS[:2])
    greedy = generate(model, ids, pixels, mask, SamplingSettings(max_new_tokens=6)).sequences
    top1 = generate(model, ids, pixels, mask, SamplingSettings(max_new_tokens=6, do_sample=True, top_k=1, seed=5))
    assert top1.sequences == greedy
    hot = SamplingSettings(max_new_tokens=6, do_sample=True, temperature=5.0, seed=7)
    a = generate(model, ids, pixels, mask, hot).sequences
    b = generate(model, ids, pixels, mask, hot).sequences
    assert a == b and a != greedy


def test_sampling_settings_from_config():
    gen = GenerationSettings(max_new_tokens=7, do_sample=True, temperature=0.5, top_p=0.9, top_k=3, seed=11)
    s = SamplingSettings.from_config(gen)
    assert (s.max_new_tokens, s.do_sample, s.temperature, s.top_p, s.top_k, s.seed) == (7, True, 0.5, 0.9, 3, 11)
    s = SamplingSettings.from_config(gen, max_new_tokens=2, do_sample=False, top_k=None)
    assert (s.max_new_tokens, s.do_sample, s.top_k) == (2, False, 3)
    for bad in ({"max_new_tokens": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"temperature": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingSettings.from_config(gen, **bad)
    # temperature 0 is harmless when decoding greedily
    assert SamplingSettings.from_config(GenerationSettings(temperature=0.0)).do_sample is False


def test_top_k_top_p_sample_only_from_the_kept_tokens():
    from inference.generation import _sample

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1000, generator=g) * torch.tensor([[3.0], [0.01]])  # peaked row, nearly flat row
    for settings in (SamplingSettings(do_sample=True, top_p=0.6), SamplingSettings(do_sample=True, top_k=5, top_p=0.8),
                     SamplingSettings(do_sample=True, top_k=7, temperature=0.5)):
        scaled = logits / settings.temperature
        if settings.top_k:
            scaled = scaled.masked_fill(scaled < scaled.topk(settings.top_k).values[:, -1:], float("-inf"))
        sorted_logits, order = scaled.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        keep = probs.cumsum(-1) - probs < settings.top_p  # the reference rule, over the whole vocabulary
        kept = [set(order[r][keep[r] & torch.isfinite(sorted_logits[r])].tolist()) for r in range(2)]
        if not settings.top_k:  # the flat row needs more than the 256 top candidates: the full-sort path
            assert len(kept[1]) > 256
        draws = torch.stack([_sample(logits, settings, g) for _ in range(150)])
        for r in range(2):
            seen = set(draws[:, r].tolist())
            assert seen <= kept[r] and len(seen) > 1, settings


def test_cached_transposed_head_follows_in_place_weight_changes(model, tokenizer):
    ids, mask, pixels = question_batch(model, tokenizer, QUESTIONS[:1])
    first = generate(model, ids, pixels, mask, SamplingSettings(max_new_tokens=3)).sequences[0]
    weight = model.lm_head.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():  # make another token win the first step (the tied embedding changes too)
            target = first[0] + 1
            weight[target] = weight[first[0]] * 3
        changed = generate(model, ids, pixels, mask, SamplingSettings(max_new_tokens=3)).sequences
        assert changed == manual_greedy(model, ids, mask, pixels, 3)[0].tolist()
        assert changed[0] != first
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert generate(model, ids, pixels, mask, SamplingSettings(max_new_tokens=3)).sequences[0] == first


def test_both_model_kinds_offer_what_generation_needs(tiny):
    """VQAModel and the LLaVA export adapter both implement inference.protocol.GenerativeVQA."""
    from inference.protocol import GenerativeVQA, PromptSpec
    from model.llava_adapter import LlavaAdapter

    model = make_model(tiny).eval()
    adapter = LlavaAdapter(llava_from(model), model.config.image_token, model.preprocessor)
    members = {name for name in dir(GenerativeVQA) if not name.startswith("_")} | set(GenerativeVQA.__annotations__)
    spec = set(PromptSpec.__annotations__)
    for implementation in (model, adapter):
        assert all(hasattr(implementation, name) for name in members), type(implementation).__name__
        assert all(getattr(implementation.config, name) == getattr(model.config, name) for name in spec)

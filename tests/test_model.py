"""The composite model against independent references: transformers' Llava, full-logit CE."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from qwen import PromptRenderer, record_messages
from qwen.prompt import IGNORE_INDEX
from tests.conftest import LORA, base_model, llava_from, make_model, question_batch


@pytest.mark.parametrize("language", ["tiny-qwen2", "tiny-qwen3"])
@pytest.mark.parametrize("select", ["drop_first", "full"])
def test_logits_equal_transformers_llava(tiny, tokenizer, language, select):
    model = make_model(tiny, language=language, select=select).eval()
    # A non-trivial projector so the image tokens matter.
    torch.manual_seed(1)
    for p in model.multi_modal_projector.parameters():
        p.data.normal_(0, 0.5)
    llava = llava_from(model)
    ids, mask, pixels = question_batch(model, tokenizer, ["What colour is the square?", "How many?"])
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        ref = llava(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # The image really changes the answer distribution (the comparison is not vacuous).
    with torch.no_grad():
        other = model(input_ids=ids, pixel_values=pixels.flip(0), attention_mask=mask).logits
    assert (other[:, -1] - ours[:, -1]).abs().max() > 1e-3


def test_supervised_loss_equals_full_logits_cross_entropy(tiny, tokenizer):
    model = make_model(tiny).eval()
    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens)
    conv = [
        {"role": "user", "content": "<|extra_0|>\nWhat colour is it?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And the shape?"},
        {"role": "assistant", "content": "a small square"},
    ]
    r = renderer.render(record_messages(conv, system_prompt=""))
    ids = torch.tensor([r.input_ids, r.input_ids])
    labels = torch.tensor([r.labels, r.labels])
    labels[1, : len(r.labels) // 2 + 9] = IGNORE_INDEX  # rows with different supervision
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, labels=labels)
        full = model(input_ids=ids, pixel_values=pixels).logits
    expected = F.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    n_sup = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert out.logits.shape == (n_sup, full.shape[-1])
    assert abs(out.loss.item() - expected.item()) < 1e-6


def test_lora_touches_only_the_language_model(tiny):
    model = make_model(tiny, finetune="lora", lora=LORA)
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora_names and all(n.startswith("language_model.") for n in lora_names)
    assert not any("lora" in n for n, _ in model.vision_tower.named_parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_names) | {n for n, _ in model.named_parameters() if n.startswith("multi_modal_projector.")}


def test_training_step_leaves_frozen_weights_bitwise_unchanged(tiny, tokenizer):
    model = make_model(tiny, finetune="lora", lora=LORA)
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens)
    r = renderer.render(record_messages([{"role": "user", "content": "<|extra_0|>\nColour?"}, {"role": "assistant", "content": "red"}]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.activation_checkpointing_enable()
    for _ in range(2):
        loss = model(input_ids=torch.tensor([r.input_ids]), pixel_values=torch.randn(1, 3, 32, 32),
                     labels=torch.tensor([r.labels])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert model.vision_tower.training is False and model.training is True
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    changed = [n for n, p in model.named_parameters() if n in trained and not torch.equal(p, trained[n])]
    assert any(n.startswith("multi_modal_projector.") for n in changed)
    assert any("lora_B" in n for n in changed)


@pytest.mark.parametrize("finetune", ["projector", "lora", "full", "full-frozen-embeddings"])
def test_save_load_roundtrip_is_bitwise(tiny, tokenizer, tmp_path, finetune):
    from model import VQAModel
    from safetensors import safe_open

    frozen_embeddings = finetune == "full-frozen-embeddings"
    finetune = finetune.removesuffix("-frozen-embeddings")
    model = make_model(tiny, finetune=finetune, lora=LORA if finetune == "lora" else None, train_embeddings=not frozen_embeddings)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    if finetune == "lora":
        assert keys and all("lora_" in k or k.startswith("multi_modal_projector.") for k in keys)
        assert not any(k.startswith("vision_tower.") for k in keys)
    elif finetune == "projector":
        assert keys == {f"multi_modal_projector.{k}" for k in model.multi_modal_projector.state_dict()}
    elif frozen_embeddings:
        assert not model.get_input_embeddings().weight.requires_grad and not model.lm_head.weight.requires_grad
        assert any(k.endswith("mlp.down_proj.weight") for k in keys)
        assert not any(k.endswith(("embed_tokens.weight", "lm_head.weight")) or k.startswith("vision_tower.") for k in keys)
    else:
        assert any(k.endswith("embed_tokens.weight") for k in keys) and not any(k.startswith("vision_tower.") for k in keys)
    loaded = VQAModel.from_pretrained(tmp_path / "ckpt").eval()
    ids, mask, pixels = question_batch(model, tokenizer, ["What shape?", "Is it blue?"])
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        b = loaded(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    assert torch.equal(a, b)


def test_timm_backbone(tiny, tokenizer):

    torch.manual_seed(0)
    model = base_model(tiny, vision="tiny-timm-vit", vision_backend="timm").eval()
    # 4x4 patches + 1 class token, first one dropped.
    assert model.config.num_image_tokens == 16 and model.config.vision_hidden_size == 48
    ids, mask, pixels = question_batch(model, tokenizer, ["What colour?"])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    assert out.logits.shape[:2] == ids.shape and torch.isfinite(out.logits).all()
    assert not any(p.requires_grad for p in model.vision_tower.parameters())


def test_checkpoint_builder_rebuilds_a_directory_built_from_another_spec(tmp_path):
    """A checkpoint built by an older version of tools/ must never be silently reused."""
    from tools.build_tiny_checkpoints import SPEC_FILE, _atomic_dir

    builds = []

    def build(tmp):
        builds.append(tmp)
        (tmp / "weights").write_text(str(len(builds)))

    target = tmp_path / "ckpt"
    _atomic_dir(target, build, {"hidden": 64})
    _atomic_dir(target, build, {"hidden": 64})
    assert len(builds) == 1  # same spec: reused
    _atomic_dir(target, build, {"hidden": 128})
    assert len(builds) == 2 and (target / "weights").read_text() == "2"
    assert json.loads((target / SPEC_FILE).read_text()) == {"hidden": 128}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or stale dirs left
    (target / SPEC_FILE).unlink()  # built before specs were recorded: rebuilt
    _atomic_dir(target, build, {"hidden": 128})
    assert len(builds) == 3


def test_loading_a_checkpoint_is_quiet(tiny, tokenizer, tmp_path, caplog):
    """transformers' Auto classes recognise our config.json (no 'model of type ...' warning)."""
    from transformers import AutoConfig

    from model import VQAConfig, VQAModel

    model = make_model(tiny, finetune="projector")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        VQAModel.from_pretrained(tmp_path)
    assert not [r for r in caplog.records if "to instantiate a model of type" in r.getMessage()]
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VQAConfig)


def _loss_and_grads(model, tokenizer):
    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens)
    conv = [{"role": "user", "content": "<|extra_0|>\nWhat colour is it?"}, {"role": "assistant", "content": "red"}]
    r = renderer.render(record_messages(conv, system_prompt=""))
    ids, labels = torch.tensor([r.input_ids] * 2), torch.tensor([r.labels] * 2)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out = model(input_ids=ids, pixel_values=pixels, labels=labels)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_compiled_layers_trace_whole_and_match_eager(tiny, tokenizer):
    """compile_layers: every LM and tower layer becomes one graph (fullgraph: a graph break is an
    error) and the loss and gradients equal eager ones. The "eager" backend runs Dynamo's tracing
    without Inductor's code generation, which takes minutes on a small CPU."""
    torch._dynamo.reset()
    eager = make_model(tiny, finetune="lora", lora=LORA)
    compiled = make_model(tiny, finetune="lora", lora=LORA)
    for model in (eager, compiled):
        model.train()
        model.activation_checkpointing_enable()
    compiled.compile_layers(backend="eager", fullgraph=True)
    layers = [*compiled.decoder.layers, *compiled.vision_tower.blocks()]
    assert len(layers) == compiled.text_config.num_hidden_layers + compiled.vision_tower.layers_to_run
    assert all(layer._compiled_call_impl is not None for layer in layers)
    out_e, grads_e = _loss_and_grads(eager, tokenizer)
    out_c, grads_c = _loss_and_grads(compiled, tokenizer)
    torch.testing.assert_close(out_c.loss, out_e.loss, atol=1e-6, rtol=0)
    assert grads_c.keys() == grads_e.keys() and any(g.abs().sum() > 0 for g in grads_c.values())
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # A training forward builds no KV cache (the LM's default would).
    assert out_c.past_key_values is None and out_e.past_key_values is None
    torch._dynamo.reset()


def test_tower_blocks_are_the_layers_it_runs(tiny):
    """blocks() is what compile_layers compiles: exactly the layers up to the feature layer."""

    siglip = make_model(tiny, vision_feature_layer=-2).vision_tower
    layers = siglip.model.encoder.layers
    assert [id(b) for b in siglip.blocks()] == [id(layer) for layer in layers[: len(layers) - 1]]
    timm = base_model(tiny, vision="tiny-timm-vit", vision_backend="timm", vision_feature_layer=-2).vision_tower
    assert [id(b) for b in timm.blocks()] == [id(b) for b in timm.model.blocks[: len(timm.model.blocks) - 1]]

"""model/quantization.py: QLoRA on the tiny Qwen2, on the CPU (bitsandbytes' CPU backend).

The 4-bit weights are checked to really be 4-bit (dequantized against the originals, the relative
error NF4 gives on Gaussian weights), only the adapter and the projector train and are saved, a
saved QLoRA checkpoint reloads to the same logits, loads on its full-precision base on request,
and exports merged into that base.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import base_model, question_batch, save_checkpoint, teach

QLORA = dict(quantize="nf4", quantize_compute_dtype="float32")
# On every projection, as QLoRA does (attention alone barely moves the tiny LM's near-uniform logits).
QLORA_ADAPTER = {"r": 8, "alpha": 16, "dropout": 0.0,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


@pytest.fixture(scope="module")
def qlora(tiny, tokenizer, tmp_path_factory):
    """A QLoRA model trained for a few steps (the losses recorded) and saved as a checkpoint."""
    torch.manual_seed(0)
    model = base_model(tiny, **QLORA)
    model.configure_training("lora", QLORA_ADAPTER)
    ids, mask, pixels = question_batch(model, tokenizer, ["What colour?", "What shape?"])
    batch = dict(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    examples = [("What colour?", "red"), ("What shape?", "a circle")]
    losses = teach(model, tokenizer, examples, pixels, steps=20)
    checkpoint = save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("qlora") / "checkpoint")
    torch.manual_seed(0)  # the same adapter on the full-precision LM, the same steps: the reference
    reference = base_model(tiny, quantize_compute_dtype="float32")
    reference.configure_training("lora", QLORA_ADAPTER)
    reference_losses = teach(reference, tokenizer, examples, pixels, steps=20)
    return SimpleNamespace(model=model, checkpoint=checkpoint, batch=batch, losses=losses,
                           reference_losses=reference_losses)


def test_the_language_model_really_is_4_bit_and_only_the_adapter_trains(tiny, qlora):
    import bitsandbytes as bnb

    model = qlora.model
    linears = [m for m in model.causal_lm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert all(m.weight.quant_state.quant_type == "nf4" for m in linears)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("multi_modal_projector.") for n in trainable)
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    # Dequantized vs the original weights: NF4 (blocks of 64) gives ~0.09 relative error on
    # Gaussian weights; full precision would give 0, a broken quantizer far more.
    original = load_file(str(tiny["tiny-qwen2"] / "model.safetensors"))
    layer = model.causal_lm.model.layers[0].self_attn.q_proj.base_layer
    restored = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    reference = original["model.layers.0.self_attn.q_proj.weight"]
    error = float((restored - reference).norm() / reference.norm())
    assert 0.05 < error < 0.15, error
    # The frozen embedding and head stay in the compute dtype (peft would upcast them to fp32 for nothing).
    assert model.get_input_embeddings().weight.dtype == torch.float32  # the compute dtype of this test


def test_training_lowers_the_loss_and_the_checkpoint_holds_only_adapter_and_projector(qlora):
    from model import VQAModel
    from model.quantization import is_quantized

    assert qlora.losses[-1] < qlora.losses[0] - 1.0, qlora.losses  # the adapter learns the answers...
    assert abs(qlora.losses[-1] - qlora.reference_losses[-1]) < 0.1  # ...as well as LoRA on the bf16/fp32 LM
    saved = load_file(str(qlora.checkpoint / "model.safetensors"))
    assert saved and all("lora_" in k or k.startswith("multi_modal_projector.") for k in saved)
    assert json.loads((qlora.checkpoint / "config.json").read_text())["quantize"] == "nf4"
    with torch.no_grad():
        expected = qlora.model(**qlora.batch).logits
        reloaded = VQAModel.from_pretrained(qlora.checkpoint)  # quantized again, as the checkpoint says
        torch.testing.assert_close(reloaded(**qlora.batch).logits, expected, atol=1e-5, rtol=0)
        # On the full-precision base (--set model.quantize=none): no 4-bit layer; close, not equal.
        full = VQAModel.from_pretrained(qlora.checkpoint, quantize="none")
        assert is_quantized(reloaded.causal_lm) and not is_quantized(full.causal_lm)
        unquantized = full(**qlora.batch).logits
    assert not torch.equal(unquantized, expected) and float((unquantized - expected).abs().max()) < 1.0


def test_export_merges_the_adapter_into_the_full_precision_base(qlora, tmp_path, capsys):
    from transformers import LlavaForConditionalGeneration

    from commands import export
    from model import VQAModel

    assert export.main(["--checkpoint", str(qlora.checkpoint), "--output", str(tmp_path / "export"),
                        "--dtype", "float32"]) == 0
    assert "a QLoRA checkpoint (nf4): its adapter is merged into the full-precision base" in capsys.readouterr().err
    full = VQAModel.from_pretrained(qlora.checkpoint, quantize="none").eval()
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        torch.testing.assert_close(llava(**qlora.batch).logits, full(**qlora.batch).logits, atol=1e-5, rtol=0)


def test_without_bitsandbytes_the_message_names_the_package(monkeypatch):
    from errors import UserError
    from model.quantization import require_bitsandbytes

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import (and find_spec) now fail
    with pytest.raises(UserError, match=r"model.quantize: 4-bit quantization needs the bitsandbytes package"):
        require_bitsandbytes()


def test_a_bitsandbytes_that_does_not_import_is_one_line_before_any_work(tmp_path, monkeypatch):
    """A package that is found but fails on import (as a build for another CUDA does, with OSError
    from its native library): refused by the check, not by transformers half-way through loading."""
    from errors import UserError
    from model.quantization import require_bitsandbytes

    broken = tmp_path / "site" / "bitsandbytes"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise OSError("libbitsandbytes_cuda130.so: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    with pytest.raises(UserError, match=r"bitsandbytes is installed but cannot be imported \(OSError: libbitsandbytes_cuda130"):
        require_bitsandbytes()


def test_inference_loads_it_quantized_or_on_its_full_precision_base(qlora):
    import cli
    from model.quantization import is_quantized

    args = SimpleNamespace(server=None, checkpoint=str(qlora.checkpoint), device="cpu", dtype=None, overrides=[])
    assert is_quantized(cli.load_predictor(args).model.causal_lm)  # as the checkpoint says
    args.overrides = ["generation.max_new_tokens=4", "model.quantize=none"]  # --set model.quantize=none
    predictor = cli.load_predictor(args)
    assert not is_quantized(predictor.model.causal_lm)
    from PIL import Image

    assert predictor.answer([Image.new("RGB", (40, 30), (200, 30, 30))], ["What colour?"])[0].token_ids

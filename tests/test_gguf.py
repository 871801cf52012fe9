"""export.py --format gguf: the files llama.cpp loads hold exactly our model, under its names.

Structural checks only (llama.cpp itself is not installed here): every file is read back with
``gguf.GGUFReader`` and compared with the model loaded from the same checkpoint -- tensor names
(written out by hand below from llama.cpp's ``llama-arch.cpp`` / ``tools/mtmd/clip-impl.h``, not
taken from the exporter's tables), shapes in ggml's reversed dimension order, values (exact for
f32, within the format's error for f16 and q8_0), the vision keys, the tokenizer and the template.

Three checkpoints: a LoRA fine-tune (Qwen2, ``drop_first``, exported f32), a full fine-tune
(Qwen3, ``full`` features from the second-to-last layer, exported with the default f16) and a
projector-only one on the untied demo LM (exported q8_0, so ``output.weight`` is written).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from commands import export
from exporters import gguf as gguf_export
from tests.conftest import LORA, base_model, make_model
from tests.test_export import refused

import gguf  # noqa: E402 (requirements-dev.txt pins it: a missing one fails, never skips)

QUESTION = "What colour is the square?"
VARIANTS = {
    "lora": (dict(language="tiny-qwen2", select="drop_first", finetune="lora", lora=LORA), "f32"),
    "qwen3": (dict(language="tiny-qwen3", select="full", finetune="full", vision_feature_layer=-2, image_aspect="pad"), None),
    "untied": (dict(language="demo-qwen3", select="full", finetune="projector"), "q8_0"),
    # DoRA: the merge rescales each row to the learned magnitude (peft's merge is the reference)
    "dora": (dict(language="tiny-qwen2", select="drop_first", finetune="lora", lora=dict(LORA, method="dora")), "f32"),
}
# llama.cpp's names (llama-arch.cpp LLM_TENSOR_NAMES for qwen2/qwen3, clip-impl.h TN_*).
LM_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
VISION_NAMES = {
    "layer_norm1": "ln1", "layer_norm2": "ln2", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.out_proj": "attn_out", "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down",
}


def llama_cpp_lm_name(key: str) -> str | None:
    """Our merged LM key -> llama.cpp's tensor name (None: not exported)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if key in fixed:
        return fixed[key]
    parts = key.split(".")  # model.layers.N.<module...>.<kind>
    return f"blk.{parts[2]}.{LM_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"


def llama_cpp_vision_name(key: str) -> str | None:
    fixed = {"embeddings.patch_embedding.weight": "v.patch_embd.weight",
             "embeddings.patch_embedding.bias": "v.patch_embd.bias",
             "embeddings.position_embedding.weight": "v.position_embd.weight"}
    if key in fixed:
        return fixed[key]
    if key.startswith("post_layernorm."):
        return None
    parts = key.split(".")  # encoder.layers.N.<module...>.<kind>
    return f"v.blk.{parts[2]}.{VISION_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"


@pytest.fixture(scope="module")
def checkpoints(tiny, tokenizer, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-checkpoints")
    out = {}
    for name, (spec, _) in VARIANTS.items():
        model = make_model(tiny, **spec)
        torch.manual_seed(7)
        with torch.no_grad():  # non-zero LoRA B, a projector that matters, a changed LM
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.05))
        model.eval().save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """``name -> (export directory, what export.py wrote on stderr)``."""
    root = tmp_path_factory.mktemp("gguf-exports")
    out = {}
    for name, (_, quantize) in VARIANTS.items():
        argv = ["--checkpoint", str(checkpoints[name]), "--output", str(root / name), "--format", "gguf"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert export.main(argv + (["--quantize", quantize] if quantize else [])) == 0
        out[name] = (root / name, err.getvalue())
    return out


@pytest.fixture(scope="module")
def models(checkpoints):
    """Our model per checkpoint and its LM weights merged by peft itself (the reference)."""
    from model.modeling import VQAModel

    cache = {}

    def get(name: str):
        if name not in cache:
            model = VQAModel.from_pretrained(checkpoints[name], dtype="float32", quantize="none").eval()
            lm = model.language_model
            merged = copy.deepcopy(lm).merge_and_unload() if hasattr(lm, "merge_and_unload") else lm
            cache[name] = (model, {k: v.detach() for k, v in merged.state_dict().items()})
        return cache[name]

    return get


@pytest.fixture(scope="module")
def read():
    """``read(path) -> (metadata, {tensor name: ReaderTensor})``, each file parsed once: GGUFReader
    takes ~10 s on a language-model file (it walks the 151,936 tokens and 294k merges in Python)."""
    cache: dict[Path, tuple[dict, dict]] = {}

    def get(path: Path) -> tuple[dict, dict]:
        if path not in cache:
            reader = gguf.GGUFReader(path)
            fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
            cache[path] = fields, {t.name: t for t in reader.tensors}
        return cache[path]

    return get


def values(tensor) -> np.ndarray:
    """A tensor's values as float32 in torch's dimension order (dequantized when quantized)."""
    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def check_tensor(tensor, expected: torch.Tensor, kind: str) -> None:
    expected = expected.float().numpy()
    assert [int(d) for d in tensor.shape] == list(reversed(expected.shape)), tensor.name  # ggml's ne order
    got = values(tensor).reshape(expected.shape)
    if kind == "F32":
        assert np.array_equal(got, expected), tensor.name
    elif kind == "F16":
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6, err_msg=tensor.name)
    else:  # Q8_0: per 32-value block, scale = max|x| / 127 (stored as f16), error <= ~scale / 2
        blocks = np.abs(expected).reshape(-1, 32).max(axis=1, keepdims=True)
        error = np.abs(got - expected).reshape(-1, 32)
        assert (error <= blocks / 127 * 0.6 + 1e-6).all(), tensor.name  # + the f16 scale


def expected_type(name: str, quantize: str, shape) -> str:
    """What the export promises: 1-D tensors and position embeddings F32, the rest as asked."""
    if len(shape) == 1 or ".position_embd." in name or quantize == "f32":
        return "F32"
    return {"f16": "F16", "q8_0": "Q8_0"}[quantize]


# -- the language model -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_language_model_holds_the_merged_weights_under_llama_cpp_names(exports, models, read, name):
    quantize = VARIANTS[name][1] or "f16"
    model, merged = models(name)
    meta, tensors = read(exports[name][0] / f"model-{quantize}.gguf")
    text = model.text_config
    arch = text.model_type
    assert meta["general.architecture"] == arch and arch in ("qwen2", "qwen3")
    assert meta["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[quantize]
    assert meta[f"{arch}.block_count"] == text.num_hidden_layers
    assert meta[f"{arch}.embedding_length"] == text.hidden_size
    assert meta[f"{arch}.feed_forward_length"] == text.intermediate_size
    assert meta[f"{arch}.attention.head_count"] == text.num_attention_heads
    assert meta[f"{arch}.attention.head_count_kv"] == text.num_key_value_heads
    assert meta[f"{arch}.context_length"] == text.max_position_embeddings
    assert meta[f"{arch}.rope.freq_base"] == pytest.approx(text.rope_parameters["rope_theta"])
    assert meta[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(text.rms_norm_eps)

    tied = text.tie_word_embeddings
    expected = {llama_cpp_lm_name(k): v for k, v in merged.items() if not (tied and k == "lm_head.weight")}
    assert set(tensors) == set(expected)
    assert ("output.weight" in tensors) == (not tied) and (name == "untied") == (not tied)
    if arch == "qwen3":
        assert "blk.0.attn_q_norm.weight" in tensors and "blk.0.attn_q.bias" not in tensors
    else:
        assert "blk.0.attn_q.bias" in tensors and "blk.0.attn_q_norm.weight" not in tensors
    for key, tensor in tensors.items():
        kind = expected_type(key, quantize, expected[key].shape)
        assert tensor.tensor_type.name == kind, key
        check_tensor(tensor, expected[key], kind)
    if name in ("lora", "dora"):  # the adapter really is in there (not the base weights)
        base = model.causal_lm.model.layers[0].self_attn.q_proj.base_layer.weight.detach()
        assert not torch.allclose(base, merged["model.layers.0.self_attn.q_proj.weight"])


def test_tokenizer_and_chat_template(exports, models, read, tokenizer):
    from qwen import PromptRenderer, question_messages
    from qwen.chat_template import chat_template, default_system_prompt

    path = exports["lora"][0]
    model, _ = models("lora")
    meta, _ = read(path / "model-f32.gguf")
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == model.get_input_embeddings().num_embeddings == 151936
    image_id = model.config.image_token_id
    assert image_id == 151665 and tokens[image_id] == "<|extra_0|>" and types[image_id] == gguf.TokenType.CONTROL
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == tokens.index("<|im_end|>")
    assert meta["tokenizer.ggml.eot_token_id"] == tokens.index("<|im_end|>")
    assert meta["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id == tokens.index("<|endoftext|>")
    assert meta["tokenizer.ggml.bos_token_id"] == 151643 and meta["tokenizer.ggml.add_bos_token"] is False
    for i in (0, 220, 1000, 151642):  # byte-level BPE strings as the tokenizer has them
        assert tokens[i] == tokenizer.convert_ids_to_tokens(i) and types[i] == gguf.TokenType.NORMAL
    assert tokens[-1] == "[PAD151935]" and types[-1] == gguf.TokenType.UNUSED
    merges = meta["tokenizer.ggml.merges"]
    assert merges[0] == "Ġ Ġ" and len(merges) > 100_000 and all(m.count(" ") == 1 for m in merges[:1000])

    template = meta["tokenizer.chat_template"]
    assert template == (path / "chat_template.jinja").read_text(encoding="utf-8")
    assert template == chat_template(gguf_export.MEDIA_MARKER, default_system_prompt(tokenizer, None))
    # The marker where training put the image tokens: same ids once it is expanded.
    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens, model.config.image_token)
    expected = renderer.render(question_messages(QUESTION), add_generation_prompt=True).input_ids
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = template
    for content in ([{"type": "image"}, {"type": "text", "text": QUESTION}], f"<__media__>\n{QUESTION}"):
        text = plain.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
        assert text.count("<__media__>") == 1
        ids = plain(text.replace("<__media__>", "<|extra_0|>" * model.config.num_image_tokens),
                    add_special_tokens=False)["input_ids"]
        assert ids == expected
    # llama-cpp-python's handler finds the image by its URL in the rendered text.
    plain.chat_template = (path / "chat_template.llama-cpp-python.jinja").read_text(encoding="utf-8")
    url = "data:image/png;base64,AAAA"
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": QUESTION}]}]
    text = plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith(f"<|im_start|>user\n{url}\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


# -- the mmproj ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_mmproj_is_a_clip_mlp_projector_with_our_tower(exports, models, read, name):
    quantize = VARIANTS[name][1] or "f16"
    kind = "f32" if quantize == "f32" else "f16"
    model, _ = models(name)
    path, err = exports[name]
    assert sorted(p.name for p in path.iterdir()) == sorted([
        f"model-{quantize}.gguf", f"mmproj-{kind}.gguf", "chat_template.jinja",
        "chat_template.llama-cpp-python.jinja", "README.md", "lineage.json"])
    meta, tensors = read(path / f"mmproj-{kind}.gguf")
    vision = model.vision_tower.model.config
    layers = vision.num_hidden_layers
    assert meta["general.architecture"] == "clip" and meta["clip.projector_type"] == "mlp"
    assert meta["clip.has_vision_encoder"] is True and meta["clip.use_gelu"] is True  # gelu_pytorch_tanh
    assert meta["clip.vision.image_size"] == vision.image_size == model.preprocessor.size
    assert meta["clip.vision.patch_size"] == vision.patch_size
    assert meta["clip.vision.embedding_length"] == vision.hidden_size
    assert meta["clip.vision.feed_forward_length"] == vision.intermediate_size
    assert meta["clip.vision.block_count"] == layers
    assert meta["clip.vision.attention.head_count"] == vision.num_attention_heads
    assert meta["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(vision.layer_norm_eps)
    assert meta["clip.vision.projection_dim"] == model.text_config.hidden_size
    assert meta["clip.vision.image_mean"] == pytest.approx(list(model.preprocessor.image_mean))
    assert meta["clip.vision.image_std"] == pytest.approx(list(model.preprocessor.image_std))
    # hidden_states[-1] is the last layer's output: llama.cpp's feature layer n; -2 is n - 1.
    assert meta["clip.vision.feature_layer"] == [layers if model.config.vision_feature_layer == -1 else layers - 1]
    assert model.config.vision_feature_layer == (-2 if name == "qwen3" else -1)

    expected = {llama_cpp_vision_name(k): v for k, v in model.vision_tower.model.state_dict().items()}
    expected.pop(None)  # the post-layernorm: never run
    projector = model.multi_modal_projector
    expected.update({"mm.0.weight": projector.linear_1.weight, "mm.0.bias": projector.linear_1.bias,
                     "mm.2.weight": projector.linear_2.weight, "mm.2.bias": projector.linear_2.bias})
    assert set(tensors) == set(expected)
    assert not any(n.startswith(("v.class_embd", "v.post_ln", "v.pre_ln")) for n in tensors)
    for key, tensor in tensors.items():
        kind_name = expected_type(key, kind, expected[key].shape)
        assert tensor.tensor_type.name == kind_name, key
        check_tensor(tensor, expected[key].detach(), kind_name)
    # One warning line each for drop_first (llama.cpp keeps every patch) and squash models
    # (llama.cpp letterboxes); a pad model's pad colour is a README note.
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    readme = (path / "README.md").read_text()
    expected = {"drop_first": model.config.vision_feature_select == "drop_first",
                "image_aspect squash": model.preprocessor.aspect == "squash"}
    assert len(warnings) == sum(expected.values())
    for word, present in expected.items():
        assert any(word in w for w in warnings) == present and (word in readme) == present, word
    if model.config.vision_feature_select == "drop_first":
        assert "16 patches" in err
    assert ("image_aspect pad" in readme and "(122, 116, 104)" in readme) == (model.preprocessor.aspect == "pad")
    assert f"--mmproj {path.resolve() / f'mmproj-{kind}.gguf'}" in readme and "llama-server" in readme


# -- refusals --------------------------------------------------------------------------------------


def test_refusals_are_one_line_and_leave_nothing(tiny, checkpoints, tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    base_model(tiny, vision="tiny-timm-vit", vision_backend="timm").save_pretrained(tmp_path / "timm")
    lora = str(checkpoints["lora"])
    gguf_args = ["--format", "gguf"]
    err = refused(capsys, ["--checkpoint", str(tmp_path / "timm"), "--output", str(tmp_path / "o1"), *gguf_args])
    assert "timm" in err and "no GGUF mapping" in err
    assert "unknown --quantize 'q5_k'" in refused(capsys, ["--checkpoint", lora, "--output", str(tmp_path / "o2"),
                                                          *gguf_args, "--quantize", "q5_k"])
    with monkeypatch.context() as patch:
        patch.setitem(__import__("sys").modules, "llama_cpp", None)  # as if llama-cpp-python were missing
        assert "runs llama.cpp's quantizer: pip install -r requirements-gguf.txt" in refused(
            capsys, ["--checkpoint", lora, "--output", str(tmp_path / "o2"), *gguf_args, "--quantize", "q4_k_m"])
    assert "--format gguf" in refused(capsys, ["--checkpoint", lora, "--output", str(tmp_path / "o3"), "--quantize", "q8_0"])
    assert "not writable" in refused(capsys, ["--checkpoint", lora, "--output", "/proc/vqa-gguf", *gguf_args])
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # as if requirements-gguf.txt were not installed
    assert "pip install -r requirements-gguf.txt" in refused(capsys, ["--checkpoint", lora, "--output",
                                                                      str(tmp_path / "o4"), *gguf_args])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timm"]


def test_a_full_disk_is_one_line_and_leaves_nothing(checkpoints, tmp_path, capsys):
    from tests.conftest import small_disk

    with small_disk(tmp_path / "small") as disk:
        with pytest.raises(SystemExit) as exit_:
            export.main(["--checkpoint", str(checkpoints["lora"]), "--output", str(disk / "gguf"), "--format", "gguf"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the export's warnings
        assert err.startswith("error:") and "writing the export failed (No space left on device)" in err, err
        assert os.listdir(disk) == []


def test_a_crash_while_writing_leaves_no_partial_files(checkpoints, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_export, "write_mmproj", crash)  # after the language model was written
    with pytest.raises(RuntimeError, match="disk full"):
        gguf_export.export(checkpoints["qwen3"], tmp_path / "new", quantize="f16", warn=lambda m: None)
    assert os.listdir(tmp_path) == []


def test_lineage_of_a_gguf_export_names_its_checkpoint(exports, checkpoints, capsys):
    """train.py --lineage reads a GGUF export's lineage.json (no config.json to resolve there)."""
    from commands import train
    from model.checkpoints import files_fingerprint, model_files

    capsys.readouterr()
    assert train.main(["--lineage", str(exports["lora"][0])]) == 0
    out = capsys.readouterr().out
    fingerprint = files_fingerprint(model_files(checkpoints["lora"])).removeprefix("sha256:")[:12]
    assert '"quantize": "f32"' in out and f"from {checkpoints['lora'].resolve()} (fingerprint {fingerprint})" in out
    assert "exported as gguf" in out and "still there, unchanged" in out
    assert "no record of how that checkpoint was trained" in out  # made by a test, not by train.py

"""The GGUF export: our model for llama.cpp (``llama-mtmd-cli``, ``llama-server``, llama-cpp-python).

llama.cpp runs our layout as it runs LLaVA-1.5: two files, written here with the ``gguf`` package
(``requirements-gguf.txt``) straight from the loaded model -- llama.cpp's ``convert_hf_to_gguf.py``
cannot read our checkpoint, and its LLaVA path maps our vision tower and projector to other names.

- ``model-<type>.gguf``: the language model as an ordinary ``qwen2`` (or ``qwen3``) GGUF, the LoRA
  adapter merged (``exporters.common.merged_lm_state``), the byte-level BPE tokenizer (``gpt2``
  model, ``qwen2`` pre-tokenizer, every id of the embedding, ``<|extra_0|>`` included) and a ChatML
  template laid out like training, with llama.cpp's media marker where the image goes.
- ``mmproj-f16.gguf`` (``mmproj-f32.gguf`` for ``--quantize f32``): the SigLIP tower and our
  projector as a CLIP-style ``mlp`` projector (ViT -> ``mm.0`` -> GELU -> ``mm.2``), no class
  embedding, no post-layernorm (we use ``hidden_states[layer]``), and ``clip.vision.feature_layer``
  set explicitly: without it llama.cpp stops one layer early (LLaVA's -2 default).

Names and keys follow llama.cpp's ``tools/mtmd/clip-impl.h`` and ``models/llava.cpp`` (the graph
this projector type runs) and ``gguf.constants`` (``TENSOR_NAMES``, ``MODEL_TENSORS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from exporters.common import (
    Checkpoint,
    ExportRefused,
    as_checkpoint,
    check_output,
    export_directory,
    export_record,
    merged_lm_state,
    stderr_warning,
)
from qwen.chat_template import chat_template, default_system_prompt

# llama.cpp's image placeholder in prompt text (mtmd_default_marker()); the GGUF template puts it
# where training put the image tokens.
MEDIA_MARKER = "<__media__>"
# --quantize (also the file name part) -> gguf.LlamaFileType; 1-D tensors always stay F32.
QUANTIZE = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
# Types llama.cpp's own quantizer makes from the f32 file (the gguf package has no k-quant
# quantizer) -> llama_cpp.LLAMA_FTYPE_*. Their blocks span 256 values of a row.
LLAMA_QUANTIZE = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
K_BLOCK = 256
LM_ARCH = {"qwen2": "QWEN2", "qwen3": "QWEN3"}
# Activations llama.cpp's mlp projector and CLIP graph run as ggml_gelu, the tanh approximation:
# the tanh variants exactly, and erf GELU ("gelu") within about 1e-3 (measured: the exact/tanh
# difference moves no greedy answer of the demo; docs/export.md).
GGML_GELU = {"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"}
# Our module names -> gguf.MODEL_TENSOR members (per decoder layer, then global).
LM_LAYER = {
    "input_layernorm": "ATTN_NORM",
    "self_attn.q_proj": "ATTN_Q",
    "self_attn.k_proj": "ATTN_K",
    "self_attn.v_proj": "ATTN_V",
    "self_attn.o_proj": "ATTN_OUT",
    "self_attn.q_norm": "ATTN_Q_NORM",
    "self_attn.k_norm": "ATTN_K_NORM",
    "post_attention_layernorm": "FFN_NORM",
    "mlp.gate_proj": "FFN_GATE",
    "mlp.up_proj": "FFN_UP",
    "mlp.down_proj": "FFN_DOWN",
}
LM_GLOBAL = {"model.embed_tokens": "TOKEN_EMBD", "model.norm": "OUTPUT_NORM", "lm_head": "OUTPUT"}
VISION_LAYER = {
    "layer_norm1": "V_ENC_INPUT_NORM",
    "self_attn.q_proj": "V_ENC_ATTN_Q",
    "self_attn.k_proj": "V_ENC_ATTN_K",
    "self_attn.v_proj": "V_ENC_ATTN_V",
    "self_attn.out_proj": "V_ENC_ATTN_O",
    "layer_norm2": "V_ENC_POST_ATTN_NORM",
    "mlp.fc1": "V_ENC_FFN_UP",
    "mlp.fc2": "V_ENC_FFN_DOWN",
}
VISION_GLOBAL = {"embeddings.patch_embedding": "V_ENC_EMBD_PATCH", "embeddings.position_embedding": "V_ENC_EMBD_POS"}
# What serving a drop_first model with every patch did to the demo (bench/gguf_parity.py).
DROP_FIRST_EFFECT = "13% of held-out answers differ, VQA accuracy 72.7 vs 69.7"
# ... and what letterboxing did to the squash-trained demo on images twice as wide as high.
SQUASH_EFFECT = "the demo on 2x-wide images: VQA 30.0 in llama.cpp vs 91.0"
# The colour llama.cpp pads non-square images with for an mlp projector (tools/mtmd/clip.cpp,
# hard-coded: CLIP's mean, not the mmproj's): it letterboxes, resizing then centring.
LLAMA_CPP_PAD = (122, 116, 104)
# Written by us: gguf.get_tensor_name_map maps "linear_1"/"linear_2" to another model's names.
PROJECTOR = {"linear_1": "mm.0", "linear_2": "mm.2"}


def require_gguf():
    """The ``gguf`` package, or a one-line refusal saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise ExportRefused("--format gguf needs the gguf package: pip install -r requirements-gguf.txt") from None
    return gguf


def check_quantize(quantize: str) -> None:
    if quantize in LLAMA_QUANTIZE:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise ExportRefused(f"--quantize {quantize} runs llama.cpp's quantizer: pip install -r requirements-gguf.txt "
                                "(or make gguf); f32/f16/q8_0 need only the gguf package") from None
    elif quantize not in QUANTIZE:
        raise ExportRefused(f"unknown --quantize {quantize!r}: choose one of {', '.join([*QUANTIZE, *LLAMA_QUANTIZE])}")


@contextlib.contextmanager
def stderr_to(path: Path):
    """File descriptor 2 (where llama.cpp's C code logs) appended to ``path`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def llama_quantize(source: Path, target: Path, quantize: str) -> None:
    """``target`` = ``source`` (an f32 GGUF) quantized by llama.cpp to ``quantize``; its log is
    kept out of the terminal and its last lines reported if it fails."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_QUANTIZE[quantize])
    params.nthread = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "quantize.log"
        with stderr_to(log):
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
        if status != 0:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise ExportRefused(f"llama.cpp could not quantize to {quantize} (status {status}): {tail}")


def k_quant_fallbacks(tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
    """``(matrices whose rows k-quants cannot block, matrices)``: llama.cpp stores the former in a
    legacy type (q5_0, q8_0, ...) instead, so a small model is barely a k-quant at all."""
    matrices = [t for name, t in tensors.items() if t.dim() == 2 and name.endswith(".weight")]
    return sum(t.shape[-1] % K_BLOCK != 0 for t in matrices), len(matrices)


def check_exportable(config) -> None:
    """Refuse, from the checkpoint's config alone, what the llama.cpp graph cannot compute."""
    if config.vision_backend != "siglip":
        raise ExportRefused(
            f"vision backend {config.vision_backend!r} has no GGUF mapping: llama.cpp's mmproj only "
            "expresses SigLIP/CLIP towers; retrain with vision_backend: siglip"
        )
    if config.vision_feature_select not in ("drop_first", "full"):
        raise ExportRefused(f"vision_feature_select {config.vision_feature_select!r} has no GGUF equivalent")
    if not isinstance(config.vision_feature_layer, int):
        raise ExportRefused("only a single integer vision_feature_layer can be exported to GGUF")
    if config.projector_hidden_act not in GGML_GELU:
        raise ExportRefused(f"projector activation {config.projector_hidden_act!r}: llama.cpp's mlp projector applies GELU")


def feature_layer(layer: int, num_layers: int) -> int:
    """Our ``hidden_states[layer]`` as llama.cpp's non-negative ``clip.vision.feature_layer``
    (``models/llava.cpp``: L < n takes layer L's input, L == n the last layer's output)."""
    index = layer if layer >= 0 else num_layers + 1 + layer
    if not 0 <= index <= num_layers:
        raise ExportRefused(f"vision_feature_layer {layer} is out of range for a tower with {num_layers} layers")
    return index


# -- tensors ------------------------------------------------------------------------------------


def _gguf_name(gguf, arch, member: str, bid: int | None = None) -> str:
    tensor = gguf.MODEL_TENSOR[member]
    if tensor not in gguf.MODEL_TENSORS[arch]:
        raise ExportRefused(f"llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]} architecture has no {member} tensor")
    return gguf.TENSOR_NAMES[tensor].format(bid=bid)


def lm_arch(model) -> str:
    """The llama.cpp architecture name of the language model (``qwen2``, ``qwen3``)."""
    text = model.text_config
    if text.model_type not in LM_ARCH:
        raise ExportRefused(f"language model type {text.model_type!r} has no GGUF mapping here (Qwen2/2.5/3 only)")
    if getattr(text, "hidden_act", "silu") != "silu":
        raise ExportRefused(f"language model activation {text.hidden_act!r}: llama.cpp's Qwen graphs use SiLU")
    rope = getattr(text, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportRefused(f"rope scaling {rope.get('rope_type')!r} is not written to GGUF yet")
    if getattr(text, "use_sliding_window", False):
        raise ExportRefused("sliding-window attention is not written to GGUF yet")
    return text.model_type


def lm_tensors(model) -> dict[str, torch.Tensor]:
    """The merged language-model weights under llama.cpp's names (``output`` only when untied)."""
    gguf = require_gguf()
    arch = gguf.MODEL_ARCH[LM_ARCH[lm_arch(model)]]
    state = merged_lm_state(model)
    if model.text_config.tie_word_embeddings:
        head = state.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, state["model.embed_tokens.weight"]):
            raise ExportRefused("the LM declares tied embeddings but lm_head differs from embed_tokens")
    return {renamed(gguf, arch, key, "model.layers.", LM_LAYER, LM_GLOBAL, "language-model"): value
            for key, value in state.items()}


def renamed(gguf, arch, key: str, layers: str, per_layer: dict, fixed: dict, what: str) -> str:
    """``key`` (``<module>.<weight|bias>``) under llama.cpp's name for ``arch``: modules under
    ``layers`` + block index map through ``per_layer``, the others through ``fixed``."""
    module, _, kind = key.rpartition(".")
    if module.startswith(layers):
        bid, _, rest = module.removeprefix(layers).partition(".")
        member = per_layer.get(rest)
        name = _gguf_name(gguf, arch, member, int(bid)) if member else None
    else:
        member = fixed.get(module)
        name = _gguf_name(gguf, arch, member) if member else None
    if name is None:
        raise ExportRefused(f"{what} weight {key!r} has no GGUF name")
    return f"{name}.{kind}"


def vision_tensors(model) -> dict[str, torch.Tensor]:
    """The SigLIP tower (without its post-layernorm) and the projector under llama.cpp's names."""
    gguf = require_gguf()
    arch = gguf.MODEL_ARCH.MMPROJ
    out = {}
    for key, value in model.vision_tower.model.state_dict().items():
        key = key.removeprefix("vision_model.")
        if key.startswith(("post_layernorm.", "head.")):
            continue  # never run: features are hidden_states[layer], before the post-layernorm
        out[renamed(gguf, arch, key, "encoder.layers.", VISION_LAYER, VISION_GLOBAL, "vision")] = value
    for key, value in model.multi_modal_projector.state_dict().items():
        module, _, kind = key.rpartition(".")
        out[f"{PROJECTOR[module]}.{kind}"] = value
    return out


def encode(gguf, name: str, tensor: torch.Tensor, kind: str):
    """``(array, raw_dtype)`` for ``GGUFWriter.add_tensor``: 1-D tensors and position embeddings
    stay F32 (as llama.cpp's own converter keeps them); a row Q8_0 cannot block falls back to F16."""
    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    if data.ndim <= 1 or ".position_embd." in name or kind == "f32":
        return data, None
    if kind == "q8_0":
        q8 = gguf.GGMLQuantizationType.Q8_0
        if data.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0] == 0:
            return gguf.quants.quantize(data, q8), q8
    return data.astype("float16"), None


def _write(writer, tensors: dict[str, torch.Tensor], kind: str, gguf) -> None:
    for name, tensor in tensors.items():
        data, raw = encode(gguf, name, tensor, kind)
        writer.add_tensor(name, data, raw_dtype=raw)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


# -- tokenizer ----------------------------------------------------------------------------------


def vocabulary(tokenizer, n_vocab: int, gguf) -> tuple[list[str], list[int]]:
    """Every id of the embedding as llama.cpp's token list: byte-level BPE strings, added tokens
    as written (special ones CONTROL, others USER_DEFINED), ``[PADi]`` for rows no token uses."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= n_vocab:
        raise ExportRefused(f"the tokenizer has id {max(by_id)} but the embedding only {n_vocab} rows")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, [int(t) for t in types]


def merges(tokenizer) -> list[str]:
    """The BPE merges as llama.cpp reads them ("a b"), from the fast tokenizer's own model."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise ExportRefused("GGUF export needs the Qwen byte-level BPE (fast) tokenizer")
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def add_tokenizer(writer, tokenizer, model, template: str, gguf) -> None:
    from qwen.tokenizer import token_id

    tokens, types = vocabulary(tokenizer, model.get_input_embeddings().num_embeddings, gguf)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges(tokenizer))
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else model.text_config.bos_token_id
    if bos is not None:
        writer.add_bos_token_id(bos)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    end_of_turn = token_id(tokenizer, "<|im_end|>")
    if end_of_turn is not None:
        writer.add_eot_token_id(end_of_turn)
    writer.add_add_bos_token(False)  # Qwen prompts carry no BOS (ours neither)
    writer.add_chat_template(template)


# -- the two files ------------------------------------------------------------------------------


def write_language_model(path: Path, model, tokenizer, quantize: str, template: str, name: str,
                         tensors: dict[str, torch.Tensor]) -> None:
    """``tensors``: :func:`lm_tensors` of ``model``."""
    gguf = require_gguf()
    arch = lm_arch(model)
    text = model.text_config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType[QUANTIZE[quantize]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(text.max_position_embeddings)
    writer.add_embedding_length(text.hidden_size)
    writer.add_block_count(text.num_hidden_layers)
    writer.add_feed_forward_length(text.intermediate_size)
    writer.add_head_count(text.num_attention_heads)
    writer.add_head_count_kv(text.num_key_value_heads)
    if getattr(text, "head_dim", None):
        writer.add_key_length(text.head_dim)
        writer.add_value_length(text.head_dim)
    writer.add_rope_freq_base(float((getattr(text, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(text.rms_norm_eps)
    add_tokenizer(writer, tokenizer, model, template, gguf)
    _write(writer, tensors, quantize, gguf)


def write_mmproj(path: Path, model, kind: str, name: str) -> None:
    gguf = require_gguf()
    vision = model.vision_tower.model.config
    if vision.hidden_act not in GGML_GELU | {"quick_gelu"}:
        raise ExportRefused(f"vision activation {vision.hidden_act!r} has no llama.cpp equivalent")
    pre = model.preprocessor
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType[QUANTIZE[kind]])
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VISION_PROJECTOR_TYPE_NAMES[gguf.VISION_PROJECTOR_TYPE.MLP])
    writer.add_vision_image_size(pre.size)
    writer.add_vision_patch_size(vision.patch_size)
    writer.add_vision_embedding_length(vision.hidden_size)
    writer.add_vision_feed_forward_length(vision.intermediate_size)
    writer.add_vision_block_count(vision.num_hidden_layers)
    writer.add_vision_head_count(vision.num_attention_heads)
    writer.add_vision_attention_layernorm_eps(vision.layer_norm_eps)
    writer.add_vision_projection_dim(model.text_config.hidden_size)
    writer.add_vision_image_mean([float(x) for x in pre.image_mean])
    writer.add_vision_image_std([float(x) for x in pre.image_std])
    writer.add_vision_use_gelu(vision.hidden_act in GGML_GELU)  # else llama.cpp's quick GELU
    layer = feature_layer(model.config.vision_feature_layer, vision.num_hidden_layers)
    writer.add_array("clip.vision.feature_layer", [layer])  # clip-impl.h KEY_FEATURE_LAYER
    _write(writer, vision_tensors(model), kind, gguf)


def file_names(quantize: str) -> tuple[str, str]:
    """``(language model, mmproj)`` file names for ``--quantize`` (the mmproj stays f16, or f32)."""
    return f"model-{quantize}.gguf", f"mmproj-{'f32' if quantize == 'f32' else 'f16'}.gguf"


def llama_cpp_python_template(template: str) -> str:
    """The GGUF template for llama-cpp-python's ``Llava15ChatHandler``, which finds each image by
    its URL in the rendered text: an image part renders its URL instead of the media marker."""
    marker = "{{- image_token -}}"
    if template.count(marker) != 1:
        raise ExportRefused("unexpected export chat template: cannot derive the llama-cpp-python template")
    url = "{{- part['image_url']['url'] if part['image_url'] is mapping else part['image_url'] -}}"
    return template.replace(marker, "{%- if part['type'] == 'image_url' -%}" + url + "{%- else -%}" + marker + "{%- endif -%}")


def readme(output: Path, checkpoint: Path, model_file: str, mmproj_file: str, warnings: list[str]) -> str:
    out = output.resolve()
    notes = "".join(f"- {w}\n" for w in warnings) or "- none\n"
    return f"""# GGUF export of `{checkpoint}`

| file | what |
|---|---|
| `{model_file}` | the language model (LoRA merged), tokenizer and chat template, for llama.cpp |
| `{mmproj_file}` | the SigLIP vision tower + projector (llama.cpp mmproj, `mlp` projector) |
| `chat_template.jinja` | the chat template inside `{model_file}` (image = `{MEDIA_MARKER}`) |
| `chat_template.llama-cpp-python.jinja` | the same template for llama-cpp-python's chat handler |

Warnings at export time:
{notes}
Ask greedily (`--temp 0`, `--repeat-penalty 1.0`) to get `infer.py`'s greedy answer. Put the image
first, then a newline and the question, as in training.

## llama-mtmd-cli

```bash
llama-mtmd-cli -m {out / model_file} --mmproj {out / mmproj_file} \\
  --image IMAGE.png -p "{MEDIA_MARKER}
What colour is the square?" --temp 0 --repeat-penalty 1.0
```

## llama-server (OpenAI API)

```bash
llama-server -m {out / model_file} --mmproj {out / mmproj_file} --jinja --host 127.0.0.1 --port 8080
python infer.py --server http://127.0.0.1:8080 --model vqa --image IMAGE.png --question "What colour is the square?"
```

## llama-cpp-python

```python
import base64
from pathlib import Path
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Llava15ChatHandler

class VQAChatHandler(Llava15ChatHandler):
    DEFAULT_SYSTEM_MESSAGE = None  # the template inserts the system turn training used
    CHAT_FORMAT = Path("{out / 'chat_template.llama-cpp-python.jinja'}").read_text()

llm = Llama(model_path="{out / model_file}", chat_handler=VQAChatHandler(clip_model_path="{out / mmproj_file}"),
            n_ctx=4096, verbose=False)
image = "data:image/png;base64," + base64.b64encode(open("IMAGE.png", "rb").read()).decode()
reply = llm.create_chat_completion(messages=[{{"role": "user", "content": [
    {{"type": "image_url", "image_url": {{"url": image}}}},
    {{"type": "text", "text": "What colour is the square?"}},
]}}], temperature=0, repeat_penalty=1.0, max_tokens=64)
print(reply["choices"][0]["message"]["content"])
llm.close()
```
"""


def summary(output: Path, quantize: str = "f16") -> list[str]:
    """What export.py prints when the export is written."""
    return [f"gguf, {quantize}", f"run it with llama.cpp: see {output.resolve() / 'README.md'}"]


def export(checkpoint: "str | Path | Checkpoint", output: str | Path, overwrite: bool = False,
           quantize: str = "f16", warn: Callable[[str], None] = stderr_warning) -> Path:
    """Write the GGUF export of ``checkpoint`` (a path, or one already opened:
    ``exporters.common.Checkpoint``) to ``output``; GGUF types come from ``quantize``. All files go
    to a temporary sibling directory renamed into place at the end, so a refusal or crash leaves no
    partial export."""
    check_quantize(quantize)
    require_gguf()
    output = Path(output)
    source = as_checkpoint(checkpoint)
    check_output(output, source.path, overwrite)  # cheap refusals before loading anything
    check_exportable(source.config)
    path = source.path
    model, tokenizer = source.load()

    warnings, notes = [], []  # notes: in the README only
    if model.preprocessor.aspect == "squash":
        warnings.append(f"model.image_aspect squash: llama.cpp letterboxes a non-square image onto a {LLAMA_CPP_PAD} "
                        f"square, the model saw it squashed ({SQUASH_EFFECT}); square images are unaffected, "
                        "a model trained with image_aspect: pad is not")
    else:
        notes.append(f"model.image_aspect pad: llama.cpp pads non-square images with {LLAMA_CPP_PAD}, training "
                     f"padded with the mean colour {tuple(int(255 * m) for m in model.preprocessor.image_mean)}")
    if model.config.vision_feature_select == "drop_first":
        n = model.config.num_image_tokens
        # Measured (bench/RESULTS.md, "GGUF in llama.cpp"): not an accuracy loss of more than a
        # point, the issue's bar for refusing, so a warning rather than a refusal.
        warnings.append(f"vision_feature_select drop_first: llama.cpp feeds all {n + 1} patches per image, "
                        f"the model was trained on {n} (the first dropped); answers differ (the demo trained "
                        f"this way: {DROP_FIRST_EFFECT})")
    for message in warnings:
        warn(message)
    try:
        default_system = default_system_prompt(tokenizer, model.config.system_prompt)
    except ValueError as exc:
        raise ExportRefused(str(exc)) from None
    template = chat_template(MEDIA_MARKER, default_system)
    model_file, mmproj_file = file_names(quantize)
    name = Path(path).resolve().name
    tensors = lm_tensors(model)  # merged once: the k-quant count and the file both read it
    if quantize in LLAMA_QUANTIZE:
        fallbacks, matrices = k_quant_fallbacks(tensors)
        if fallbacks:
            warnings.append(f"{quantize}: {fallbacks} of the language model's {matrices} weight matrices have rows that "
                            f"are not a multiple of {K_BLOCK}; llama.cpp stores those in a legacy type (q5_0/q8_0)")
            warn(warnings[-1])
    with export_directory(output, export_record(source, "gguf", {"quantize": quantize})) as tmp:
        if quantize in LLAMA_QUANTIZE:
            source = tmp / "model-f32.gguf"
            write_language_model(source, model, tokenizer, "f32", template, name, tensors)
            llama_quantize(source, tmp / model_file, quantize)
            source.unlink()
        else:
            write_language_model(tmp / model_file, model, tokenizer, quantize, template, name, tensors)
        write_mmproj(tmp / mmproj_file, model, "f32" if quantize == "f32" else "f16", name)
        (tmp / "chat_template.jinja").write_text(template, encoding="utf-8")
        (tmp / "chat_template.llama-cpp-python.jinja").write_text(llama_cpp_python_template(template), encoding="utf-8")
        (tmp / "README.md").write_text(readme(output, path, model_file, mmproj_file, warnings + notes), encoding="utf-8")
    return output

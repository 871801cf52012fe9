"""Export a trained checkpoint as a transformers ``LlavaForConditionalGeneration`` for serving.

    python export.py --checkpoint RUN_OR_CHECKPOINT_DIR --output EXPORT_DIR [--dtype bfloat16|float32] [--overwrite]

The export is a self-contained directory that ``transformers`` loads with
``LlavaForConditionalGeneration.from_pretrained`` / ``AutoProcessor.from_pretrained`` and that
``vllm serve EXPORT_DIR`` and ``transformers serve EXPORT_DIR`` serve with the OpenAI API:

- the LoRA adapter merged into the Qwen weights (computed from the adapter's own
  ``get_delta_weight``, so neither the checkpoint nor the in-memory model is modified), or the
  fully fine-tuned LM, or the base LM for a projector-only checkpoint;
- ``config.json``: a ``LlavaConfig`` with the SigLIP ``vision_config`` (``vision_use_head: false``),
  the Qwen ``text_config``, ``vision_feature_layer`` / ``vision_feature_select_strategy`` as
  trained (``drop_first`` is LLaVA's ``default``, ``full`` is ``full``), ``image_token_index`` = our
  ``<|extra_0|>`` id and ``image_seq_length`` = our number of image tokens;
- safetensors shards in the llava-hf key layout (``language_model.model.*``,
  ``vision_tower.vision_model.*``, ``multi_modal_projector.linear_{1,2}.*``) -- the layout every
  published llava-hf checkpoint uses, which vLLM's LLaVA loader and transformers both read;
- a ``LlavaProcessor``: SigLIP image processor (the tower's size/mean/std), the tokenizer, and a
  ChatML chat template that turns each image content part into ONE ``<|extra_0|>`` (which the
  processor and vLLM expand to exactly ``image_seq_length`` tokens);
- ``generation_config.json`` (greedy, stops at ``<|im_end|>``, never emits the image token, as our
  ``Predictor`` does) and a model card ``README.md`` with the ``vllm serve`` command.

Everything is written to a temporary sibling directory and renamed into place at the end, so a
crash never leaves a half export. Refusals (unsupported vision backend, a non-empty output
directory without ``--overwrite``, an incomplete checkpoint) exit with status 2 and one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch

EXIT_REFUSED = 2
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
SELECT_STRATEGY = {"drop_first": "default", "full": "full"}
MAX_SHARD_SIZE = "4GB"
# The llava-hf file layout (what transformers < 4.52 wrote and every llava-hf checkpoint uses).
# transformers 5 maps it onto its module names when loading; vLLM's LLaVA loader reads it as is.
_FILE_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


class ExportRefused(Exception):
    """A checkpoint or output the export cannot (or must not) handle; the message is one line."""


# -- pure mapping: our model -> LLaVA -----------------------------------------------------------


def check_exportable(config) -> None:
    """Refuse what ``LlavaForConditionalGeneration`` cannot express."""
    if config.vision_backend != "siglip":
        raise ExportRefused(
            f"vision backend {config.vision_backend!r} cannot be exported: LLaVA (transformers and vLLM) "
            "only expresses SigLIP/CLIP vision towers; retrain with vision_backend: siglip"
        )
    if config.vision_feature_select not in SELECT_STRATEGY:
        raise ExportRefused(f"vision_feature_select {config.vision_feature_select!r} has no LLaVA equivalent")
    if not isinstance(config.vision_feature_layer, int):
        raise ExportRefused("only a single integer vision_feature_layer can be exported")


def llava_config(model, dtype: torch.dtype = torch.float32):
    """The ``LlavaConfig`` that makes LLaVA compute exactly what ``model`` computes."""
    from transformers import LlavaConfig

    cfg = model.config
    check_exportable(cfg)
    vision = model.vision_tower.model.config.to_dict()
    vision["vision_use_head"] = False  # SigLIP's pooling head is not used (and vLLM would run it)
    text = model.text_config.to_dict()
    text["architectures"] = [type(model.causal_lm).__name__]  # vLLM picks the LM class from this
    text["vocab_size"] = model.get_input_embeddings().num_embeddings
    dtype_name = str(dtype).removeprefix("torch.")
    vision["dtype"] = text["dtype"] = dtype_name
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=cfg.image_token_id,
        image_seq_length=cfg.num_image_tokens,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=SELECT_STRATEGY[cfg.vision_feature_select],
        projector_hidden_act=cfg.projector_hidden_act,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = dtype_name
    return config


def _merged_lm_state(model) -> dict[str, torch.Tensor]:
    """The causal LM's weights (``model.*``, ``lm_head.*``) with any LoRA adapter merged in.

    Reads the adapter through peft's ``get_delta_weight`` instead of ``merge_and_unload`` so the
    model passed in is left exactly as it was.
    """
    lm = model.causal_lm
    state = {}
    for key, value in lm.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    if model.config.lora is None:
        return state
    from peft.tuners.lora import LoraLayer

    for name, module in lm.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if getattr(module, "merged", False):
            raise ExportRefused(f"LoRA layer {name} is already merged into its base weights")
        key = f"{name}.weight"
        weight = state[key]
        delta = None
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if module.use_dora.get(adapter, False):
                raise ExportRefused(f"LoRA layer {name} uses DoRA, which this export does not merge")
            d = module.get_delta_weight(adapter).to(torch.float32)
            delta = d if delta is None else delta + d
        if delta is not None:
            state[key] = (weight.to(torch.float32) + delta).to(weight.dtype)
    return state


def llava_state_dict(model) -> dict[str, torch.Tensor]:
    """Our weights under ``LlavaForConditionalGeneration``'s module names (transformers 5)."""
    check_exportable(model.config)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.vision_tower.model.state_dict().items():
        state[f"model.vision_tower.{key}"] = value
    for key, value in model.multi_modal_projector.state_dict().items():
        state[f"model.multi_modal_projector.{key}"] = value
    for key, value in _merged_lm_state(model).items():
        if key.startswith("model."):
            state["model.language_model." + key[len("model."):]] = value
        elif key.startswith("lm_head."):
            state[key] = value
        else:
            raise ExportRefused(f"unexpected language-model weight {key!r}")
    if model.text_config.tie_word_embeddings:
        embed = state["model.language_model.embed_tokens.weight"]
        head = state.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, embed):
            raise ExportRefused("the LM declares tied embeddings but lm_head differs from embed_tokens")
    return state


def to_llava(model, dtype: torch.dtype = torch.float32):
    """A ``LlavaForConditionalGeneration`` holding ``model``'s weights (LoRA merged), in eval mode.

    ``model`` is not modified.
    """
    from transformers import LlavaForConditionalGeneration
    from transformers.initialization import no_init_weights

    config = llava_config(model, dtype)
    with no_init_weights():
        llava = LlavaForConditionalGeneration(config)
    state = llava_state_dict(model)
    missing, unexpected = llava.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ExportRefused(f"weight names do not match LLaVA: missing {sorted(set(missing) - tied)[:5]}, "
                            f"unexpected {sorted(unexpected)[:5]}")
    llava.tie_weights()
    return llava.to(dtype).eval()


def file_key(name: str) -> str:
    """A LLaVA module name -> its name in the exported safetensors files (llava-hf layout)."""
    for prefix, replacement in _FILE_PREFIXES:
        if name.startswith(prefix):
            return replacement + name[len(prefix):]
    raise ExportRefused(f"no file name for weight {name!r}")


# -- processor and chat template -----------------------------------------------------------------

_CHATML_SYSTEM = re.compile(r"\A<\|im_start\|>system\n(.*)<\|im_end\|>\n\Z", re.DOTALL)


def default_system_prompt(tokenizer, system_prompt: str | None) -> str | None:
    """The system turn our prompts carry when the caller gives none.

    Our ``Predictor`` passes the checkpoint's ``system_prompt`` as a system message when it is not
    None; otherwise the base template decides (Qwen2.5 inserts "You are Qwen, created by Alibaba
    Cloud. ...", Qwen3 inserts nothing). Read that default off the base template itself.
    """
    if system_prompt is not None:
        return system_prompt
    probe = "\ue000"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
    start = rendered.find("<|im_start|>user\n" + probe)
    if start < 0:
        raise ExportRefused("the base tokenizer's chat template is not ChatML; cannot derive an export template")
    if start == 0:
        return None
    match = _CHATML_SYSTEM.match(rendered[:start])
    if not match:
        raise ExportRefused("the base tokenizer's chat template is not ChatML; cannot derive an export template")
    return match.group(1)


def _jinja_string(text: str) -> str:
    """A Jinja string literal for ``text`` (Jinja un-escapes literals like Python does)."""
    return json.dumps(text, ensure_ascii=False)


def chat_template(image_token: str, default_system: str | None) -> str:
    """ChatML with image parts, laid out exactly like ``qwen.prompt.PromptRenderer``.

    - message content is a string or a list of parts; an ``image`` / ``image_url`` part becomes ONE
      ``image_token`` (the processor / vLLM expand it to the image's feature count);
    - an image part directly followed by a text part that does not start with a newline gets a
      ``"\\n"`` in between (the renderer's layout rule: ``<image>\\nquestion`` as in training);
    - without a leading system message, ``default_system`` (when not None) is inserted.

    The loop ``for part in message['content']`` is what vLLM's content-format detection looks
    for: it then passes image parts to the template as ``{"type": "image"}`` instead of inserting
    its default ``<image>`` string (3 tokens in Qwen's vocabulary, not our placeholder).
    """
    system = ""
    if default_system is not None:
        system = (
            "{%- if messages | length == 0 or messages[0]['role'] != 'system' -%}\n"
            "{{- '<|im_start|>system\\n' + " + _jinja_string(default_system) + " + '<|im_end|>\\n' -}}\n"
            "{%- endif -%}\n"
        )
    return (
        "{%- set image_token = " + _jinja_string(image_token) + " -%}\n"
        + system
        + "{%- for message in messages -%}\n"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
        "{%- if message['content'] is string -%}\n"
        "{{- message['content'] -}}\n"
        "{%- elif message['content'] is not none -%}\n"
        "{%- set ns = namespace(after_image=false) -%}\n"
        "{%- for part in message['content'] -%}\n"
        "{%- if part['type'] in ['image', 'image_url', 'input_image'] -%}\n"
        "{{- image_token -}}\n"
        "{%- set ns.after_image = true -%}\n"
        "{%- elif part['type'] == 'text' -%}\n"
        "{%- if ns.after_image and not part['text'].startswith('\\n') -%}{{- '\\n' -}}{%- endif -%}\n"
        "{{- part['text'] -}}\n"
        "{%- set ns.after_image = false -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- endif -%}\n"
        "{{- '<|im_end|>\\n' -}}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "{{- '<|im_start|>assistant\\n' -}}\n"
        "{%- endif -%}\n"
    )


def build_processor(model, tokenizer, template: str):
    """``LlavaProcessor`` whose single image placeholder expands to our exact image-token count."""
    from transformers import LlavaProcessor, SiglipImageProcessor

    pre = model.vision_tower.preprocessor
    vision = model.vision_tower.model.config
    image_processor = SiglipImageProcessor(
        size={"height": pre.size, "width": pre.size},
        image_mean=list(pre.image_mean),
        image_std=list(pre.image_std),
        resample=3,  # PIL bicubic, antialiased (what visual.preprocess does)
        do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
    )
    strategy = SELECT_STRATEGY[model.config.vision_feature_select]
    # LlavaProcessor: (h // patch) * (w // patch) + num_additional_image_tokens - (1 if default).
    # SigLIP has no class token, so nothing is added: so400m-384 -> 729 patches, 728 with default.
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=template,
        image_token=model.config.image_token,
        num_additional_image_tokens=0,
    )
    grid = pre.size // vision.patch_size
    expected = grid * grid - (1 if strategy == "default" else 0)
    if expected != model.config.num_image_tokens or processor.image_token_id != model.config.image_token_id:
        raise ExportRefused(
            f"the processor would expand one image to {expected} tokens of id {processor.image_token_id}, "
            f"the model expects {model.config.num_image_tokens} of id {model.config.image_token_id}"
        )
    return processor


def verify_prompts(processor, reference_ids: dict[str, list[int]], size: int) -> None:
    """The exported template + processor must give exactly our renderer's ``input_ids``."""
    from PIL import Image

    image = Image.new("RGB", (size, size), (128, 64, 32))
    for question, expected in reference_ids.items():
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        ids = processor(text=text, images=[image], return_tensors="pt")["input_ids"][0].tolist()
        if ids != expected:
            raise ExportRefused(
                "the exported chat template does not reproduce the training prompt layout "
                f"for {question!r}; the base chat template is not plain ChatML"
            )


def generation_config(model, tokenizer):
    from transformers import GenerationConfig

    from qwen.tokenizer import end_of_turn_ids

    text = model.text_config
    return GenerationConfig(
        do_sample=False,
        bos_token_id=getattr(text, "bos_token_id", None),
        eos_token_id=end_of_turn_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        # The placeholder only ever enters through the splice; our generation never emits it.
        suppress_tokens=[model.config.image_token_id],
    )


# -- files ------------------------------------------------------------------------------------


def write_weights(model, directory: Path, dtype: torch.dtype) -> list[str]:
    """Safetensors shards (+ index when more than one) in the llava-hf layout."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    state = {file_key(k): v.detach().to("cpu", dtype).contiguous() for k, v in llava_state_dict(model).items()}
    # The names must be exactly what LLaVA has (checked on a weightless meta-device instance).
    with torch.device("meta"):
        reference = LlavaForConditionalGeneration(llava_config(model, dtype))
    expected = {file_key(k) for k in reference.state_dict()}
    if reference.config.tie_word_embeddings:
        expected.discard(file_key("lm_head.weight"))
    if set(state) != expected:
        raise ExportRefused(f"exported weight names do not match LLaVA: {sorted(set(state) ^ expected)[:5]}")
    split = split_torch_state_dict_into_shards(state, max_shard_size=MAX_SHARD_SIZE)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return sorted(split.filename_to_tensors)


def model_card(model, source: Path, output: Path, dtype: str) -> str:
    cfg = model.config
    name = output.name
    return f"""# {name}

A SigLIP + Qwen VQA model exported by `export.py` of siglip-qwen-vqa as a transformers
`LlavaForConditionalGeneration` ({dtype}).

- source checkpoint: `{source}` (fine-tuning: `{cfg.finetune}`{", LoRA merged" if cfg.lora else ""})
- vision: `{cfg.vision_model}` (SigLIP, hidden state {cfg.vision_feature_layer}, `{cfg.vision_feature_select}` ->
  LLaVA `{SELECT_STRATEGY[cfg.vision_feature_select]}`, {cfg.num_image_tokens} image tokens per image)
- language model: `{cfg.language_model}`
- image placeholder: `{cfg.image_token}` (id {cfg.image_token_id}); put one image part in a user message,
  the processor expands it

## Serve with vLLM

```bash
vllm serve {output} --served-model-name {name} --chat-template-content-format openai
```

Ask with `temperature=0` for the greedy answer `infer.py` gives (vLLM samples at temperature 1
unless told otherwise). The image goes in as an `image_url` part; the chat template turns it into
one `{cfg.image_token}` and vLLM expands that to {cfg.num_image_tokens} image tokens.

## Serve with transformers

```bash
transformers serve {output} --host 127.0.0.1 --port 8000
```

With `transformers serve` the model name in requests is the path above. Or, from this repository:
`python infer.py --server http://127.0.0.1:8000 --model {output} --image IMAGE --question TEXT`.

## Ask a question (OpenAI client)

```python
import base64
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="EMPTY")
image = base64.b64encode(open("image.png", "rb").read()).decode()
reply = client.chat.completions.create(
    model="{name}",  # with `transformers serve`: the path passed to it, "{output}"
    messages=[{{"role": "user", "content": [
        {{"type": "image_url", "image_url": {{"url": f"data:image/png;base64,{{image}}"}}}},
        {{"type": "text", "text": "What colour is the square?"}},
    ]}}],
    temperature=0,
    max_tokens=64,
)
print(reply.choices[0].message.content)
```

## Load with transformers

```python
from transformers import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained("{output}")
processor = AutoProcessor.from_pretrained("{output}")
```
"""


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or info warnings while loading: a refusal stays one line on stderr."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load_checkpoint(checkpoint: str | Path):
    """Resolve and load a checkpoint (float32, for an exact merge); refusals for what is wrong."""
    from model.configuration import VQAConfig
    from model.modeling import VQAModel
    from model.predictor import resolve_checkpoint
    from qwen import load_tokenizer

    try:
        path = resolve_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        raise ExportRefused(f"incomplete checkpoint: {exc}") from None
    try:
        with _quiet_transformers():
            config = VQAConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ExportRefused(f"{path}: unreadable config.json ({exc})") from None
    if config.model_type != VQAConfig.model_type:
        raise ExportRefused(f"{path}: not a {VQAConfig.model_type} checkpoint")
    check_exportable(config)  # before loading any weights
    try:
        with _quiet_transformers():
            model = VQAModel.from_pretrained(path, dtype="float32").eval()
    except ValueError as exc:
        raise ExportRefused(f"incomplete checkpoint: {exc}") from None
    except OSError as exc:
        raise ExportRefused(f"{path}: cannot load the checkpoint or its base models ({exc})") from None
    tokenizer_src = path if (path / "tokenizer_config.json").is_file() else (
        model.config.tokenizer or model.config.language_model
    )
    with _quiet_transformers():  # AutoTokenizer reads our config.json and warns about its model type
        tokenizer = load_tokenizer(str(tokenizer_src), model.config.image_token)
    return path, model, tokenizer


def _check_output(output: Path, checkpoint: Path, overwrite: bool) -> None:
    out, ckpt = output.resolve(), checkpoint.resolve()
    if out == ckpt or out in ckpt.parents or ckpt in out.parents:
        raise ExportRefused(f"{output}: the output must not be, contain or lie inside the checkpoint {checkpoint}")
    if out.exists() and not out.is_dir():
        raise ExportRefused(f"{output}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportRefused(f"{output}: exists and is not empty (pass --overwrite to replace it)")


def export(checkpoint: str | Path, output: str | Path, dtype: str = "bfloat16", overwrite: bool = False) -> Path:
    """Write the LLaVA export of ``checkpoint`` (a checkpoint or run directory) to ``output``."""
    if dtype not in DTYPES:
        raise ExportRefused(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    output = Path(output)
    from model.predictor import resolve_checkpoint

    try:
        resolved = resolve_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        raise ExportRefused(f"incomplete checkpoint: {exc}") from None
    _check_output(output, resolved, overwrite)  # cheap refusals before loading anything
    path, model, tokenizer = _load_checkpoint(resolved)
    torch_dtype = DTYPES[dtype]

    from qwen import PromptRenderer, question_messages

    # Reference prompts from the training renderer (base template), before swapping the template.
    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens, model.config.image_token)
    system_prompt = model.config.system_prompt
    probes = ["What colour is the square?", "\nHow many?", "是什么颜色？"]
    reference = {q: renderer.render(question_messages(q, system_prompt), add_generation_prompt=True).input_ids
                 for q in probes}
    template = chat_template(model.config.image_token, default_system_prompt(tokenizer, system_prompt))
    tokenizer.chat_template = template  # vLLM falls back to the tokenizer's template when tools are given
    processor = build_processor(model, tokenizer, template)
    verify_prompts(processor, reference, model.vision_tower.preprocessor.size)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.partial-{os.getpid()}"
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_weights(model, tmp, torch_dtype)
        llava_config(model, torch_dtype).save_pretrained(tmp)
        generation_config(model, tokenizer).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        # Also the image processor on its own (preprocessor_config.json), for readers that look there.
        processor.image_processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(model, path, output.resolve(), dtype), encoding="utf-8")
        if output.exists():
            output.rename(old)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not output.exists():
            old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run directory (newest checkpoint-N)")
    parser.add_argument("--output", required=True, help="the export directory (must not exist or be empty)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weight dtype of the export")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.output, args.dtype, args.overwrite)
    except ExportRefused as exc:
        print(f"export.py: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"exported {args.checkpoint} -> {out} ({args.dtype})")
    print(f"serve it with: vllm serve {out.resolve()} --chat-template-content-format openai")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())

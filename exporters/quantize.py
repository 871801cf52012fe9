"""4-bit LLaVA exports: ``export.py --format llava --quantize awq|gptq``.

Why GPTQModel (``gptqmodel``) and these formats: it is the maintained quantizer that resolves with
our pins (torch 2.14.1, transformers 5.23), it quantizes on the CPU as well as on a GPU, and it has
a LLaVA definition that quantizes only the language model's decoder layers while calibrating
through ``LlavaForConditionalGeneration``'s own forward pass -- the image features spliced in at
the ``<|extra_0|>`` placeholders, which the 16-bit export reproduces exactly (``exporters.llava``
checks it) -- so the calibration sees what serving sees, not text alone. It writes the two formats
vLLM and transformers both load: GPTQ (``quant_method: gptq``, symmetric, no act-order: vLLM's
gptq_marlin / gptq kernels; transformers through optimum + gptqmodel) and AWQ (``quant_method:
awq``, GEMM layout with zero points, as AutoAWQ wrote it: vLLM's awq_marlin / awq kernels;
transformers through gptqmodel). llm-compressor (vLLM's own compressed-tensors format) needs
torch<=2.14.0 and would live in its own environment; AutoAWQ is archived.

What stays 16-bit: the vision tower, the projector, the embeddings, norms and ``lm_head``
(``modules_to_not_convert`` says so in ``config.json``, or transformers would try to swap the
tower's linears too). The weights are renamed into the llava-hf file layout the 16-bit export
uses (``exporters.llava.file_key``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

from exporters.common import ExportRefused

METHODS = ("awq", "gptq")
BITS = 4
DEFAULT_GROUP_SIZE = 128
DEFAULT_SAMPLES = 128
# GPTQModel's AWQ clipping search takes a weight's output rows in batches of 64 (or 256).
AWQ_ROW_MULTIPLE = 64
# Module names that stay 16-bit, as each loader matches them: transformers from the start of its
# module names (model.vision_tower...), vLLM as a substring of its own (vision_tower.vision_model...).
KEEP_16BIT = ("model.vision_tower", "model.multi_modal_projector", "vision_tower", "multi_modal_projector", "lm_head")
# What the quantizer writes that replaces the 16-bit export's files; everything else (processor,
# tokenizer, chat template, generation config, model card) is the 16-bit export's.
QUANTIZED_FILES = ("config.json", "quantize_config.json")
INSTALL = "pip install gptqmodel==7.7.0 optimum==2.3.0"


@dataclass(frozen=True)
class QuantizeSettings:
    """How the language model is quantized and on what it is calibrated."""

    method: str                  # awq | gptq
    group_size: int = DEFAULT_GROUP_SIZE
    samples: int = DEFAULT_SAMPLES

    def describe(self) -> str:
        return f"{self.method} {BITS}-bit, group {self.group_size}, language model only"


def check_available(settings: QuantizeSettings) -> None:
    """A known method and sample count, and the packages: gptqmodel quantizes; transformers loads
    GPTQ through optimum and AWQ through gptqmodel. Before anything loads."""
    import importlib.util

    if settings.method not in METHODS:
        raise ExportRefused(f"--quantize for --format llava is one of {', '.join(METHODS)} (4-bit), got {settings.method!r} "
                            "(llama.cpp's types such as q8_0 or q4_k_m need --format gguf)")
    if settings.samples < 1:
        raise ExportRefused(f"--calibration-samples must be at least 1, got {settings.samples}")
    missing = [name for name in ("gptqmodel", "optimum") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportRefused(f"--quantize needs {' and '.join(missing)}: {INSTALL}")


def largest_group(widths: list[int]) -> int:
    """The largest power of two that divides every input width (a group never spans two rows)."""
    common = reduce(math.gcd, widths)
    return common & -common


def check_shapes(model, settings: QuantizeSettings) -> None:
    """Refuse a group size that does not divide every quantized layer's inputs, or an AWQ export
    of a layer whose outputs GPTQModel's AWQ cannot batch: before anything is loaded or written."""
    import torch

    linears = [(name, m) for name, m in model.causal_lm.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]
    widths = sorted({m.in_features for _, m in linears})
    if settings.group_size < 1 or any(w % settings.group_size for w in widths):
        raise ExportRefused(f"--group-size {settings.group_size} does not divide the language model's layer inputs "
                            f"({', '.join(map(str, widths))}); the largest that does is {largest_group(widths)}")
    if settings.method == "awq":
        odd = sorted({m.out_features for _, m in linears if m.out_features % AWQ_ROW_MULTIPLE})
        if odd:
            raise ExportRefused(f"--quantize awq needs layer outputs that are multiples of {AWQ_ROW_MULTIPLE} "
                                f"(this language model has {', '.join(map(str, odd))}); use --quantize gptq")


def calibration_file(checkpoint: Path, given: Path | None) -> Path:
    """``given``, else the training data named in the checkpoint's ``run.json``."""
    if given is not None:
        return Path(given)
    from model.lineage import find_record

    found = find_record(checkpoint)
    sessions = (found[1].get("sessions") or [{}]) if found else [{}]
    train_file = ((sessions[-1].get("config") or {}).get("data") or {}).get("train_file")
    if not train_file:
        raise ExportRefused(f"--quantize calibrates on merged data and {checkpoint} does not say what it was trained on: "
                            "pass --calibration data/merged/qa.json")
    return Path(train_file)


def calibration_conversations(records: list[tuple[Path, str, str | None]], samples: int) -> list[list[dict]]:
    """Up to ``samples`` of the merged data's (image, question, answer) records, spread evenly over
    them, as the chat messages GPTQModel's LLaVA definition renders with the export's processor (so
    each image goes through the tower, the projector and the splice). ``commands/export.py`` reads
    the records (``dataset.records``, the one reader of merged data)."""
    from PIL import Image

    step = max(1, len(records) // samples)
    conversations = []
    for path, question, answer in records[::step]:
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError:
            continue  # a missing or broken image is skipped, as training skips it
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        if answer:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        conversations.append(messages)
        if len(conversations) == samples:
            break
    if not conversations:
        raise ExportRefused("--calibration: no record with a readable image and a question")
    return conversations


def quantize_directory(staging: Path, out: Path, settings: QuantizeSettings, conversations: list[list[dict]],
                       file_key: Callable[[str], str]) -> None:
    """Quantize the 16-bit export in ``staging`` into ``out``: GPTQModel's weights (tensor names
    mapped by ``file_key``, ``exporters.llava``'s) and config, the 16-bit export's other files.
    ``staging`` is removed."""
    import torch

    # GPTQModel sizes its CPU pool as (cores + 1) // 2 and then asks it for 2 loader threads:
    # on a 1-2 core machine that is refused unless the pool is given 2 workers.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import AWQConfig, GPTQConfig, GPTQModel

    common = dict(bits=BITS, group_size=settings.group_size, offload_to_disk=False)
    config = GPTQConfig(**common, sym=True, desc_act=False) if settings.method == "gptq" else AWQConfig(**common, sym=False)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    staging, out = staging.resolve(), out.resolve()
    quantized = out / ".quantized"
    # GPTQModel writes its per-layer logs into ./logs: keep them out of the user's working directory.
    with tempfile.TemporaryDirectory(prefix="gptqmodel-") as scratch, contextlib.chdir(scratch):
        model = GPTQModel.load(str(staging), config, device=device)
        model.quantize(conversations, batch_size=1)
        model.save(str(quantized))
        del model
    for path in staging.iterdir():
        if not (path.name in QUANTIZED_FILES or path.name.startswith("model") and path.suffix in (".safetensors", ".json")):
            shutil.move(str(path), out / path.name)
    for name in QUANTIZED_FILES:
        shutil.move(str(quantized / name), out / name)
    _write_renamed_weights(quantized, out, file_key)
    _finish_config(out / "config.json", settings)
    shutil.rmtree(quantized)
    shutil.rmtree(staging)


def _write_renamed_weights(quantized: Path, out: Path, file_key: Callable[[str], str]) -> None:
    """GPTQModel's shards with their tensors renamed into the llava-hf layout of the 16-bit export."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    index = quantized / "model.safetensors.index.json"
    weight_map = {}
    for shard in sorted(quantized.glob("model*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            tensors = {file_key(key): f.get_tensor(key) for key in f.keys()}
        save_file(tensors, str(out / shard.name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard.name))
    if index.is_file():
        document = json.loads(index.read_text(encoding="utf-8"))
        document["weight_map"] = dict(sorted(weight_map.items()))
        (out / index.name).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _finish_config(path: Path, settings: QuantizeSettings) -> None:
    """What the quantizer leaves out of ``quantization_config``: the modules that stay 16-bit, the
    calibration that was used; and nothing of this machine (GPTQModel's temporary paths)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    quant = config["quantization_config"]
    quant["modules_to_not_convert"] = list(KEEP_16BIT)
    meta = quant.get("meta") or {}
    meta.pop("offload_to_disk_path", None)
    meta["calibration"] = {"samples": settings.samples, "data": "merged qa.json through the LLaVA splice"}
    quant["meta"] = meta
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

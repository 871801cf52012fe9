"""export.py --format llava --quantize gptq|awq: a 4-bit language model that transformers loads and
that answers like the 16-bit export, calibrated on merged data through the LLaVA splice.

The ``trained`` checkpoint (tiny Qwen2: hidden 64, intermediate 128) is quantized with GPTQ at
group 64, the largest group that divides its layer inputs (128 does not: refused, below). AWQ
needs layer outputs in multiples of 64, which the tiny model's key/value projections (32) are not:
refused with one line; the AWQ export itself is tested on the demo LM (hidden 128, intermediate
256, key/value 128) at the issue's group 128. transformers loads both with gptqmodel's CPU kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from exporters import llava
from tests.conftest import COLOUR_QUESTION, OFFLINE_ENV, ROOT, make_model, save_checkpoint, teach
from tests.test_export import refused


# Solid colours the model has never seen (trained: (220, 20, 20) red, (20, 20, 220) blue).
HELD_OUT = [("red", (200, 30, 25)), ("red", (235, 10, 40)), ("red", (190, 45, 35)), ("blue", (30, 25, 200)),
            ("blue", (10, 40, 235)), ("blue", (45, 35, 190))]


def export_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "export.py"), *map(str, args)], capture_output=True, text=True,
                          env=OFFLINE_ENV, timeout=timeout, cwd=ROOT)


def write_merged(directory: Path, colours: list[tuple[str, tuple[int, int, int]]], seed: int) -> Path:
    """A merged data set (qa.json + images.json, as process_image.py writes it) of solid images."""
    directory.mkdir(parents=True)
    table, records = {}, []
    for i, (name, rgb) in enumerate(colours):
        Image.new("RGB", (24 + (seed + i) % 17, 30 + (seed * i) % 11), rgb).save(directory / f"{i}.png")
        table[str(i)] = {"path": f"{i}.png", "source": "t"}
        records.append({"id": f"t/{i}", "image_id": i, "source": "t", "messages": [
            {"role": "user", "content": f"<|extra_0|>\n{COLOUR_QUESTION}"}, {"role": "assistant", "content": name}]})
    (directory / "images.json").write_text(json.dumps(table))
    (directory / "qa.json").write_text(json.dumps(records))
    return directory / "qa.json"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    colours = [("red", (210 + i, 25 - i, 20 + i)) if i % 2 else ("blue", (20 + i, 25 - i, 210 + i)) for i in range(16)]
    return write_merged(tmp_path_factory.mktemp("calibration") / "merged", colours, seed=3)


@pytest.fixture(scope="module")
def exports(trained, calibration, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quantized")
    llava.export(trained.checkpoint, root / "bf16", warn=lambda _: None)
    done = export_cli("--checkpoint", trained.checkpoint, "--output", root / "gptq", "--quantize", "gptq",
                      "--group-size", 64, "--calibration", calibration, "--calibration-samples", 12)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "llava, gptq 4-bit group 64 language model, bfloat16 otherwise" in done.stdout
    return {"bf16": root / "bf16", "gptq": root / "gptq"}


def answers_and_logits(directory: Path, images: list[Image.Image]) -> tuple[list[str], torch.Tensor]:
    """transformers' greedy answers and first-token logits of an export, through its own processor."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(directory, device_map="cpu").eval()
    processor = AutoProcessor.from_pretrained(directory)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": COLOUR_QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    answers, logits = [], []
    with torch.no_grad():
        for image in images:
            inputs = processor(text=text, images=[image], return_tensors="pt")
            logits.append(model(**inputs).logits[0, -1].float())
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            answers.append(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers, torch.stack(logits)


def test_gptq_export_is_4_bit_where_it_should_be_and_16_bit_elsewhere(exports):
    config = json.loads((exports["gptq"] / "config.json").read_text())
    quant = config["quantization_config"]
    assert (quant["quant_method"], quant["bits"], quant["group_size"], quant["sym"], quant["desc_act"]) == ("gptq", 4, 64, True, False)
    assert quant["modules_to_not_convert"] == ["model.vision_tower", "model.multi_modal_projector", "vision_tower",
                                               "multi_modal_projector", "lm_head"]
    assert "offload_to_disk_path" not in json.dumps(quant)  # nothing of the machine that exported it
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    with safe_open(str(exports["gptq"] / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
    layer = "language_model.model.layers.0.self_attn.q_proj"
    assert {f"{layer}.qweight", f"{layer}.scales", f"{layer}.qzeros"} <= keys and f"{layer}.weight" not in keys
    assert dtypes[f"{layer}.qweight"] == "I32"
    # the llava-hf layout of the 16-bit export; the tower, projector and embeddings stay 16-bit
    assert all(k.split(".")[0] in ("language_model", "vision_tower", "multi_modal_projector") for k in keys)
    sixteen = [k for k in keys if k.startswith(("vision_tower.", "multi_modal_projector.")) or "embed_tokens" in k]
    assert sixteen and {dtypes[k] for k in sixteen} == {"BF16"}
    assert not any(k.endswith("qweight") for k in keys if not k.startswith("language_model.model.layers."))
    # the processor, chat template and card are the 16-bit export's, byte for byte
    for name in ("chat_template.jinja", "processor_config.json", "preprocessor_config.json", "generation_config.json"):
        assert (exports["gptq"] / name).read_bytes() == (exports["bf16"] / name).read_bytes(), name
    assert "gptq 4-bit, group 64, language model only" in (exports["gptq"] / "README.md").read_text()
    lineage = json.loads((exports["gptq"] / "lineage.json").read_text())
    assert lineage["options"] == {"dtype": "bfloat16", "quantize": "gptq", "group_size": 64, "calibration_samples": 12}
    assert not [p.name for p in exports["gptq"].iterdir() if p.name.startswith(".")]  # no staging left behind
    size = sum(p.stat().st_size for p in exports["gptq"].glob("*.safetensors"))
    assert size < sum(p.stat().st_size for p in exports["bf16"].glob("*.safetensors"))


def test_transformers_loads_the_gptq_export_and_it_answers_like_16_bit(exports):
    images = [Image.new("RGB", (36, 28), rgb) for _, rgb in HELD_OUT]
    truth = [name for name, _ in HELD_OUT]
    answers16, logits16 = answers_and_logits(exports["bf16"], images)
    answers4, logits4 = answers_and_logits(exports["gptq"], images)
    accuracy16 = sum(a == t for a, t in zip(answers16, truth)) / len(truth)
    accuracy4 = sum(a == t for a, t in zip(answers4, truth)) / len(truth)
    print(f"held-out accuracy: bf16 {accuracy16:.3f}, gptq 4-bit {accuracy4:.3f}; first-token logits: max |diff| "
          f"{(logits4 - logits16).abs().max():.4f} of range {logits16.abs().max():.2f}")
    assert accuracy16 == 1.0 and accuracy4 >= accuracy16 - 0.02, (answers16, answers4)
    assert answers4 == answers16
    assert torch.equal(logits4.argmax(-1), logits16.argmax(-1))
    # 4-bit weights move the logits, but far less than their spread
    assert 0 < (logits4 - logits16).abs().max() < 0.1 * logits16.abs().max()


def test_awq_export_of_the_demo_lm_answers_like_16_bit(tiny, tokenizer, trained, calibration, tmp_path):
    """AWQ at the issue's group 128 on the demo LM's shapes (every layer 128 or 256 wide), taught
    red/blue as ``trained`` was."""
    model = make_model(tiny, language="demo-qwen3", finetune="full")
    pixels = torch.stack([model.preprocessor(path) for path in (trained.red, trained.blue)])
    teach(model, tokenizer, [(COLOUR_QUESTION, "red"), (COLOUR_QUESTION, "blue")], pixels, steps=25)
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "demo-checkpoint")
    llava.export(checkpoint, tmp_path / "bf16")
    done = export_cli("--checkpoint", checkpoint, "--output", tmp_path / "awq", "--quantize", "awq",
                      "--calibration", calibration, "--calibration-samples", 8)
    assert done.returncode == 0, done.stderr[-3000:]
    quant = json.loads((tmp_path / "awq" / "config.json").read_text())["quantization_config"]
    assert (quant["quant_method"], quant["bits"], quant["group_size"], quant["zero_point"]) == ("awq", 4, 128, True)
    assert quant["version"] == "gemm"  # AutoAWQ's GEMM layout, what vLLM's awq / awq_marlin kernels read
    images = [Image.new("RGB", (36, 28), rgb) for _, rgb in HELD_OUT]
    answers16, logits16 = answers_and_logits(tmp_path / "bf16", images)
    answers4, logits4 = answers_and_logits(tmp_path / "awq", images)
    print(f"demo LM held-out answers: bf16 {answers16}, awq {answers4}; first-token logits: max |diff| "
          f"{(logits4 - logits16).abs().max():.4f} of range {logits16.abs().max():.2f}")
    assert answers16 == [name for name, _ in HELD_OUT] and answers4 == answers16
    assert 0 < (logits4 - logits16).abs().max() < 0.1 * logits16.abs().max()


@pytest.mark.parametrize("args, message", [
    (("--quantize", "gptq", "--calibration", "CAL"),
     "--group-size 128 does not divide the language model's layer inputs (64, 128); the largest that does is 64"),
    (("--quantize", "awq", "--group-size", "64", "--calibration", "CAL"), "--quantize awq needs layer outputs that are multiples of 64"),
    (("--quantize", "int3"), "--quantize for --format llava is one of awq, gptq (4-bit), got 'int3'"),
    (("--quantize", "gptq", "--group-size", "64"), "does not say what it was trained on: pass --calibration"),
    (("--quantize", "gptq", "--group-size", "64", "--calibration", "missing/qa.json"), "--calibration: missing/qa.json: not found"),
    (("--format", "gguf", "--quantize", "awq"), "unknown --quantize 'awq'"),
    (("--format", "gguf", "--group-size", "64"), "--group-size applies to --format llava, not gguf"),
])
def test_refusals_are_one_line_and_write_nothing(trained, calibration, tmp_path, capsys, args, message):
    args = [str(calibration) if a == "CAL" else a for a in args]
    assert message in refused(capsys, ["--checkpoint", str(trained.checkpoint), "--output", str(tmp_path / "out"), *args])
    assert os.listdir(tmp_path) == []


def test_calibration_defaults_to_the_training_data_the_run_record_names(tmp_path):
    from exporters.quantize import calibration_file, largest_group

    checkpoint = tmp_path / "run" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    sessions = [{"config": {"data": {"train_file": "old/qa.json"}}}, {"config": {"data": {"train_file": "data/merged/qa.json"}}}]
    (checkpoint / "run.json").write_text(json.dumps({"sessions": sessions}))
    assert calibration_file(checkpoint, None) == Path("data/merged/qa.json")  # the latest session's
    assert calibration_file(checkpoint, tmp_path / "given.json") == tmp_path / "given.json"
    assert (largest_group([64, 128]), largest_group([896, 4864]), largest_group([3584, 18944])) == (64, 128, 512)

"""The GGUF export run by llama.cpp itself (llama-cpp-python, installed by requirements-dev.txt).

A model whose language-model rows are all 256 wide (``gguf-qwen2``), so that q4_k_m really holds
k-quant blocks, is taught briefly to name the colour of a square image in a few words, then
exported f32, q8_0 and q4_k_m (q4_k_m by llama.cpp's own quantizer, through the exporter).

- f32 against our model: the same greedy answer, token for token in text, and the first answer
  token's log-probability within 1e-2 of ours, computed here from a plain forward pass (not by
  ``inference.generation``, whose loop also masks the image placeholder);
- q8_0 and q4_k_m load, run and answer every colour right;
- ``infer.py --gguf`` answers from the command line, one question and a batch with confidences;
- bad ``--gguf`` paths are one-line errors.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from commands import export
from commands import infer
from tests.conftest import make_model, save_checkpoint, teach

import llama_cpp  # noqa: F401,E402 (requirements-dev.txt installs it: a missing one fails, never skips)

QUESTION = "What colour is the square?"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
ANSWERS = {name: f"the square is {name}" for name in COLOURS}


@pytest.fixture(scope="module")
def taught(tiny, tokenizer, tmp_path_factory):
    """``(checkpoint, {colour: square image})``: a full fine-tune (with LoRA alone the tied random
    head's logits stay nearly uniform), taught until each colour's answer is certain enough that
    quantization cannot flip it."""
    root = tmp_path_factory.mktemp("gguf-e2e")
    images = {}
    for name, rgb in COLOURS.items():
        images[name] = root / f"{name}.png"
        Image.new("RGB", (32, 32), rgb).save(images[name])  # the tower's own size: no resize either side
    model = make_model(tiny, language="gguf-qwen2", select="full", finetune="full")
    pixels = torch.stack([model.preprocessor(images[name]) for name in COLOURS])
    losses = teach(model, tokenizer, [(QUESTION, ANSWERS[name]) for name in COLOURS], pixels, steps=32, lr=3e-3)
    assert losses[-1] < 0.05, losses
    return save_checkpoint(model, tokenizer, root / "checkpoint"), images


@pytest.fixture(scope="module")
def exports(taught, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """``type -> (export directory, export.py's stderr)``."""
    checkpoint, _ = taught
    root = tmp_path_factory.mktemp("gguf-e2e-exports")
    out = {}
    for kind in ("f32", "q8_0", "q4_k_m"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            argv = ["--checkpoint", str(checkpoint), "--output", str(root / kind), "--format", "gguf", "--quantize", kind]
            assert export.main(argv) == 0
        out[kind] = (root / kind, err.getvalue())
    return out


@pytest.fixture(scope="module")
def ours(taught):
    """Our greedy answers and the first answer token's log-probability per colour."""
    from inference.predictor import Predictor

    checkpoint, images = taught
    predictor = Predictor.from_checkpoint(checkpoint, dtype="float32", device="cpu")
    result = {}
    for name, image in images.items():
        answer = predictor.answer([image], [QUESTION])[0]
        ids, _, pixels = predictor.prepare([image], [QUESTION])
        with torch.inference_mode():
            hidden = predictor.model.decoder(inputs_embeds=predictor.model.embed(ids, pixels)).last_hidden_state
            logprobs = predictor.model.lm_head(hidden[:, -1]).float().log_softmax(-1)[0]
        result[name] = (answer.text, float(logprobs[answer.token_ids[0]]), answer.mean_logprob)
    return result


def test_the_taught_model_answers_every_colour(ours):
    assert {name: text for name, (text, _, _) in ours.items()} == ANSWERS


def test_f32_gguf_matches_our_model(exports, taught, ours, tokenizer):
    from inference.gguf import GGUFPredictor

    def predictor_tokens(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    _, images = taught
    predictor = GGUFPredictor(exports["f32"][0], logprobs=True)
    try:
        for name, image in images.items():
            reply = predictor.complete(predictor.payload(image, QUESTION))
            choice = reply["choices"][0]
            text, first_logprob, confidence = ours[name]
            assert choice["message"]["content"].strip() == text
            assert abs(choice["logprobs"]["content"][0]["logprob"] - first_logprob) < 1e-2
            # the confidence infer.py reports: every answer token and the end of turn, as ours
            assert len(choice["logprobs"]["content"]) == len(predictor_tokens(text)) + 1
            assert abs(predictor.answer([image], [QUESTION])[0].mean_logprob - confidence) < 1e-2
    finally:
        predictor.close()


@pytest.mark.parametrize("kind", ["q8_0", "q4_k_m"])
def test_quantized_ggufs_load_run_and_answer(exports, taught, kind):
    from inference.gguf import GGUFPredictor

    directory, err = exports[kind]
    _, images = taught
    assert "legacy type" not in err  # every row 256 wide: no k-quant fallback
    predictor = GGUFPredictor(directory)
    try:
        file_type = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[kind]
        assert int(predictor.llm.metadata["general.file_type"]) == file_type
        answers = {name: a.text for name, a in zip(images, predictor.answer(list(images.values()), [QUESTION] * 3))}
    finally:
        predictor.close()
    assert answers == ANSWERS
    sizes = {k: next(exports[k][0].glob("model-*.gguf")).stat().st_size for k in ("f32", "q8_0", "q4_k_m")}
    assert sizes["q4_k_m"] < sizes["q8_0"] < sizes["f32"] / 3
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [f"model-{kind}.gguf", "mmproj-f16.gguf", "README.md", "chat_template.jinja", "chat_template.llama-cpp-python.jinja",
         "lineage.json"])


def test_infer_answers_with_the_gguf_export(exports, taught, tmp_path, capsys):
    _, images = taught
    directory = exports["f32"][0]
    assert infer.main(["--gguf", str(directory), "--image", str(images["green"]), "--question", QUESTION]) == 0
    assert capsys.readouterr().out.strip() == ANSWERS["green"]

    output = tmp_path / "answers.jsonl"
    folder = images["red"].parent
    assert infer.main(["--gguf", str(directory / "model-f32.gguf"), "--images", str(folder), "--question", QUESTION,
                       "--output", str(output)]) == 0
    header, *lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert header["produced_by"]["model"]["gguf"] == str((directory / "model-f32.gguf").resolve())
    assert {Path(r["image"]).stem: r["answer"] for r in lines} == ANSWERS
    assert all(r["confidence"] is not None and -0.5 < r["confidence"] <= 0 for r in lines), lines


def test_bad_gguf_paths_are_one_line_errors(exports, taught, tmp_path, capsys, monkeypatch):
    _, images = taught
    two = tmp_path / "two"
    two.mkdir()
    for name in ("model-f32.gguf", "model-q8_0.gguf"):
        (two / name).write_bytes(b"")
    cases = {
        str(tmp_path / "missing"): "no such GGUF export",
        str(tmp_path): "no model-*.gguf in it",
        str(two): "give one of them as --gguf",
    }
    for path, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            infer.main(["--gguf", path, "--image", str(images["red"]), "--question", QUESTION])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    with monkeypatch.context() as patch:  # as if llama-cpp-python were not installed
        patch.setitem(__import__("sys").modules, "llama_cpp", None)
        with pytest.raises(SystemExit):
            infer.main(["--gguf", str(exports["f32"][0]), "--image", str(images["red"]), "--question", QUESTION])
    assert capsys.readouterr().err.strip() == "error: --gguf needs llama-cpp-python: " + \
        "pip install -r requirements-gguf.txt (or: make gguf)"


def test_gui_backend_streams_the_gguf_answer(exports, taught, tmp_path, capsys):
    """gui.py --gguf: the window's backend streams llama.cpp's answer like a checkpoint's; a bad
    export is refused before any window opens."""
    from commands import gui
    from inference.generation import SamplingSettings
    from inference.source import ModelSource
    from ui.controller import BackendError, PredictorBackend

    _, images = taught
    backend = PredictorBackend(ModelSource(gguf=str(exports["q8_0"][0])), SamplingSettings())
    assert backend.description.startswith("GGUF ")
    assert "".join(backend.ask(images["blue"], QUESTION)) == ANSWERS["blue"]
    with pytest.raises(BackendError, match="no such image file"):
        list(backend.ask(images["blue"].with_suffix(".txt"), QUESTION))
    with pytest.raises(SystemExit) as exit_info:
        gui.main(["--gguf", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "no such GGUF export" in capsys.readouterr().err


def test_evaluate_scores_the_gguf_export_like_the_checkpoint(exports, taught, tmp_path, capsys):
    """evaluate.py --gguf on a merged held-out file: the same predictions and metrics as
    evaluate.py --checkpoint (each question's ground truth is the taught answer)."""
    from commands import evaluate
    checkpoint, images = taught
    (tmp_path / "images.json").write_text(json.dumps(
        {str(i): {"path": str(images[name]), "source": "t"} for i, name in enumerate(COLOURS)}))
    records = [{"id": f"t/{name}", "image_id": i, "source": "t", "answers": [ANSWERS[name]] * 10,
                "messages": [{"role": "user", "content": f"<|extra_0|>\n{QUESTION}"},
                             {"role": "assistant", "content": ANSWERS[name]}]}
               for i, name in enumerate(COLOURS)]
    (tmp_path / "qa.json").write_text(json.dumps(records))
    results = {}
    for flag, source in (("--gguf", exports["q4_k_m"][0]), ("--checkpoint", checkpoint)):
        out = tmp_path / flag.strip("-")
        assert evaluate.main([flag, str(source), "--data", str(tmp_path / "qa.json"), "--output", str(out)]) in (0, None)
        predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        results[flag] = ([p["prediction"] for p in predictions], json.loads((out / "metrics.json").read_text()))
    capsys.readouterr()
    (gguf_answers, gguf_metrics), (our_answers, our_metrics) = results["--gguf"], results["--checkpoint"]
    assert gguf_answers == our_answers == [ANSWERS[name] for name in COLOURS]
    assert gguf_metrics["vqa_accuracy"] == our_metrics["vqa_accuracy"] == 1.0
    assert gguf_metrics["gguf"] == str(exports["q4_k_m"][0]) and gguf_metrics["checkpoint"] is None

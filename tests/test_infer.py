"""infer.py end to end: streaming, interactive, resumable batch JSONL, exports, --server, bad input.

The checkpoint is a tiny model fully fine-tuned for a few steps to answer "red" / "blue" about solid
red / blue images, so greedy answers are real, image-dependent words (a freshly initialised tiny
model only repeats newlines). The subprocess tests exercise the real command line; the rest call
``infer.main`` in-process, which is the same code without paying for a torch import each time.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import cli
from commands import infer
from inference.generation import SamplingSettings
from inference.predictor import Predictor
from tests.conftest import COLOUR_QUESTION, OFFLINE_ENV, ROOT, free_port
from tests.fake_openai import FakeOpenAI

QUESTION = COLOUR_QUESTION
MAX_NEW_TOKENS = 8
SETTINGS = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def predictor(trained):
    return Predictor.from_checkpoint(trained.checkpoint)


def reuse(monkeypatch, predictor) -> None:
    """Make every checkpoint load return ``predictor`` (in-process runs; the subprocess tests
    cover loading)."""
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *args, **kwargs: predictor))


@pytest.fixture
def loaded(monkeypatch, predictor):
    reuse(monkeypatch, predictor)


def run_cli(*args, cwd, stdin=None, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "infer.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=OFFLINE_ENV, input=stdin, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    """The answer lines of a batch output, after its first line (what produced them)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert set(lines[0]) == {"produced_by"}, lines[0]
    return lines[1:]


# -- streaming ---------------------------------------------------------------------------------


def test_stream_joins_to_the_batched_greedy_answer(predictor, trained):
    answers = predictor.answer([trained.red, trained.blue], [QUESTION, QUESTION], SETTINGS)
    assert [a.text for a in answers] == ["red", "blue"]  # the checkpoint really learned something
    for path, answer in zip([trained.red, trained.blue], answers):
        pieces = list(predictor.stream(path, QUESTION, SETTINGS))
        assert "".join(pieces) == answer.text


def test_cli_single_question_prints_the_streamed_answer(predictor, trained, tmp_path):
    expected = predictor.answer([trained.blue], [QUESTION], SETTINGS)[0].text
    assert expected
    result = run_cli("--checkpoint", trained.checkpoint.parent, "--image", trained.blue, "--question", QUESTION,
                     "--max-new-tokens", MAX_NEW_TOKENS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert "Traceback" not in result.stderr


def test_interactive_loop_answers_each_line_until_exit(predictor, trained, loaded, monkeypatch, capsys):
    other = "Which colour do you see?"
    expected = [a.text for a in predictor.answer([trained.red, trained.red], [QUESTION, other], SETTINGS)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n  {other}  \nexit\n{QUESTION}\n"))
    assert infer.main(["--checkpoint", str(trained.checkpoint), "--image", str(trained.red),
                       "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    assert capsys.readouterr().out == "".join(f"{t}\n" for t in expected)


# -- batch pre-annotation ------------------------------------------------------------------------


def test_batch_jsonl_answers_flags_resumes_and_repairs(predictor, trained, loaded, tmp_path):
    out = tmp_path / "annotations.jsonl"
    args = ["--checkpoint", trained.checkpoint, "--images", trained.images, "--question", QUESTION, "--output", out,
            "--max-new-tokens", MAX_NEW_TOKENS, "--batch-size", 2, "--review-threshold", -1e9]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = read_jsonl(out)
    by_image = {Path(line["image"]).name: line for line in lines}
    assert sorted(by_image) == ["blue.png", "broken.png", "red.png", "red2.jpg"]  # notes.txt is not an image
    assert len(lines) == 4
    assert "not a readable image" in by_image["broken.png"]["error"] and "answer" not in by_image["broken.png"]
    good = [trained.blue, trained.red, trained.red2]
    expected = predictor.answer(good, [QUESTION] * 3, SETTINGS)
    for path, answer in zip(good, expected):
        line = by_image[path.name]
        assert line["question"] == QUESTION and line["answer"] == answer.text
        assert line["confidence"] == pytest.approx(answer.mean_logprob, abs=1e-4)
        assert line["review"] is False  # the threshold was -1e9
    assert "3 answered, 1 errors" in result.stderr

    # Resume: a second run (in-process, same code) finds everything done and writes nothing.
    before = out.read_bytes()
    in_process = [str(a) for a in args]
    assert infer.main(in_process) == 0
    assert out.read_bytes() == before

    # A crash in the middle of the last line: the next run drops the fragment and redoes that item.
    last = lines[-1]
    out.write_bytes(before[: len(before) - len(json.dumps(last, ensure_ascii=False)) // 2 - 1])
    assert infer.main(in_process[:-2] + ["--review-threshold", "0"]) == 0
    repaired = read_jsonl(out)
    assert len(repaired) == 4 and repaired[:3] == lines[:3]
    assert {k: v for k, v in repaired[3].items() if k not in ("confidence", "review", "flags")} == \
        {k: v for k, v in last.items() if k not in ("confidence", "review", "flags")}
    if "answer" in last:
        assert repaired[3]["review"] is True  # every mean log-prob is below 0
        assert repaired[3]["flags"] == ["low_confidence"] and "flags" not in last
    # Errors are kept as done unless asked to retry them.
    assert infer.main(in_process + ["--retry-errors"]) == 0
    final = read_jsonl(out)
    assert len(final) == 5 and "error" in final[-1] and Path(final[-1]["image"]).name == "broken.png"


def test_batch_resumes_only_answers_of_the_same_model_and_settings(trained, tmp_path, capsys):
    """The first line records the checkpoint's fingerprint and the generation settings; a re-run
    with other settings, another checkpoint or a file without that record is refused before the
    model loads, and --overwrite starts again."""
    import shutil

    out = tmp_path / "answers.jsonl"
    args = ["--checkpoint", str(trained.checkpoint), "--images", str(trained.images / "sub"), "--question", QUESTION,
            "--output", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    assert infer.main(args) == 0
    capsys.readouterr()
    header = json.loads(out.read_text(encoding="utf-8").splitlines()[0])["produced_by"]
    assert header["model"]["fingerprint"].startswith("sha256:")
    assert header["model"]["checkpoint"] == str(trained.checkpoint.resolve())
    assert header["generation"]["max_new_tokens"] == MAX_NEW_TOKENS
    before = out.read_bytes()
    other = tmp_path / "other"
    shutil.copytree(trained.checkpoint, other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")  # another file: another model
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(json.dumps({"image": str(trained.red), "question": QUESTION, "answer": "red"}) + "\n")
    for changed, message in ((args[:-1] + ["9"], "generation.max_new_tokens: 8 -> 9"),
                             (["--checkpoint", str(other), *args[2:]], "model.fingerprint"),
                             (args[:-3] + [str(legacy), *args[-2:]], "without a record of the model")):
        with pytest.raises(SystemExit) as exc:
            infer.main(changed)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert out.read_bytes() == before
    assert infer.main(args[:-1] + ["9", "--overwrite"]) == 0
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[0])["produced_by"]["generation"]["max_new_tokens"] == 9
    assert len(read_jsonl(out)) == 1  # started again: the one image of sub/ answered once


def test_batch_over_a_merged_qa_json_uses_each_records_question(predictor, trained, loaded, tmp_path):
    data = tmp_path / "merged"
    data.mkdir()
    rel = os.path.relpath(trained.images, data)
    (data / "images.json").write_text(json.dumps({
        "0": {"path": f"{rel}/red.png", "source": "t"}, "1": {"path": f"{rel}/blue.png", "source": "t"},
        "2": {"path": f"{rel}/missing.png", "source": "t"},
    }))
    other = "Which colour do you see?"
    records = [
        {"id": "t/a", "image_id": 0, "source": "t", "messages": [
            {"role": "user", "content": f"<|extra_0|>\n{QUESTION}"}, {"role": "assistant", "content": "red"}]},
        {"id": "t/b", "image_id": 1, "source": "t", "messages": [{"role": "user", "content": f"<|extra_0|>\n{other}"}]},
        {"id": "t/c", "image_id": 2, "source": "t", "messages": [{"role": "user", "content": f"<|extra_0|>\n{QUESTION}"}]},
        {"id": "t/d", "image_id": 7, "source": "t", "messages": [{"role": "user", "content": f"<|extra_0|>\n{QUESTION}"}]},
    ]
    (data / "qa.json").write_text(json.dumps(records))
    out = tmp_path / "out.jsonl"
    args = ["--checkpoint", str(trained.checkpoint), "--images", str(data / "qa.json"), "--output", str(out),
            "--max-new-tokens", str(MAX_NEW_TOKENS)]
    assert infer.main(args) == 0
    lines = {line["id"]: line for line in read_jsonl(out)}
    assert sorted(lines) == ["t/a", "t/b", "t/c", "t/d"]
    expected = predictor.answer([trained.red, trained.blue], [QUESTION, other], SETTINGS)
    assert (lines["t/a"]["question"], lines["t/a"]["answer"]) == (QUESTION, expected[0].text)
    assert (lines["t/b"]["question"], lines["t/b"]["answer"]) == (other, expected[1].text)
    assert "no such image file" in lines["t/c"]["error"]
    assert "not in images.json" in lines["t/d"]["error"]
    size = out.stat().st_size
    assert infer.main(args) == 0 and out.stat().st_size == size  # resumed by record id: nothing new


# -- exported LLaVA directories --------------------------------------------------------------------


def hand_made_export(checkpoint: Path, tokenizer, directory: Path) -> Path:
    """A LlavaForConditionalGeneration export written without export.py: LoRA merged, weights
    mapped by hand (tests/test_model.py), tokenizer and SigLIP image processor saved beside."""
    from transformers import SiglipImageProcessor

    from model import VQAModel
    from tests.conftest import llava_from

    model = VQAModel.from_pretrained(checkpoint).eval()
    if hasattr(model.language_model, "merge_and_unload"):  # a LoRA checkpoint: merge the adapter
        model.language_model = model.language_model.merge_and_unload()
    llava = llava_from(model)
    llava.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    pre = model.vision_tower.preprocessor
    SiglipImageProcessor(size={"height": pre.size, "width": pre.size}, image_mean=list(pre.image_mean),
                         image_std=list(pre.image_std)).save_pretrained(directory)
    return directory


def test_export_directory_answers_like_the_checkpoint(predictor, trained, tokenizer, tmp_path, capsys, monkeypatch):
    from model.checkpoints import is_llava_export
    from model.llava_adapter import LlavaAdapter

    images = [trained.red, trained.blue]
    expected = predictor.answer(images, [QUESTION] * 2, SETTINGS)
    exports = [hand_made_export(trained.checkpoint, tokenizer, tmp_path / "by-hand")]
    if (ROOT / "export.py").is_file():  # the real exporter, when present
        from commands import export
        assert export.main(["--checkpoint", str(trained.checkpoint), "--output", str(tmp_path / "exported"),
                            "--dtype", "float32"]) == 0
        exports.append(tmp_path / "exported")
        capsys.readouterr()  # what export.py printed
    for directory in exports:
        assert is_llava_export(directory) and not is_llava_export(trained.checkpoint)
        # infer.py's loader (the CLI's own path), then the CLI itself with that predictor
        loaded = cli.load_predictor(SimpleNamespace(server=None, checkpoint=str(directory), device="cpu", dtype=None))
        assert isinstance(loaded, Predictor) and isinstance(loaded.model, LlavaAdapter)
        got = loaded.answer(images, [QUESTION] * 2, SETTINGS)
        assert [a.token_ids for a in got] == [a.token_ids for a in expected], directory.name
        for a, b in zip(got, expected):
            assert a.mean_logprob == pytest.approx(b.mean_logprob, abs=1e-4)
        with monkeypatch.context() as patch:
            reuse(patch, loaded)
            assert infer.main(["--checkpoint", str(directory), "--image", str(trained.blue), "--question", QUESTION,
                               "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
        assert capsys.readouterr().out == expected[1].text + "\n"


# -- an OpenAI-compatible server (tests/fake_openai.py) --------------------------------------------


def first_pixel_answer(body: dict) -> str:
    """Checks the request's shape and answers "<colour of the image's first pixel> (<question>)"."""
    (message,) = body["messages"]
    image_part, text_part = message["content"]
    assert message["role"] == "user" and image_part["type"] == "image_url" and text_part["type"] == "text"
    prefix = "data:image/png;base64,"
    assert image_part["image_url"]["url"].startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(image_part["image_url"]["url"][len(prefix):])))
    assert image.format == "PNG" and image.mode == "RGB"
    return f"{'red' if image.getpixel((0, 0))[0] > 128 else 'blue'} ({text_part['text']})"


def padded_pieces(answer: str) -> list[str]:
    """Three characters a chunk, with whitespace around the answer that the client must strip."""
    return [" "] + [answer[i:i + 3] for i in range(0, len(answer), 3)] + ["\n"]


@pytest.fixture
def fake_server():
    server = FakeOpenAI(first_pixel_answer, model_id="listed-model", pieces=padded_pieces)
    try:
        yield server
    finally:
        server.close()


def test_server_mode_sends_the_image_and_question(fake_server, trained, tmp_path, capsys):
    from visual.preprocess import load_image

    assert infer.main(["--server", fake_server.url, "--model", "vqa", "--image", str(trained.red),
                       "--question", QUESTION, "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == f"red ({QUESTION})\n"
    body, = fake_server.requests
    assert body["model"] == "vqa" and body["temperature"] == 0 and body["max_tokens"] == 5 and body["stream"]
    sent = Image.open(io.BytesIO(base64.b64decode(body["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)[1])))
    original = load_image(trained.red)
    assert (sent.mode, sent.size, sent.tobytes()) == (original.mode, original.size, original.tobytes())  # losslessly

    fake_server.requests.clear()
    out = tmp_path / "remote.jsonl"
    assert infer.main(["--server", fake_server.url + "/v1", "--images", str(trained.images), "--question", QUESTION,
                       "--output", str(out), "--review-threshold", "-0.9", "--set", "generation.review_words=[Blue]"]) == 0
    lines = {Path(line["image"]).name: line for line in read_jsonl(out)}
    assert lines["red.png"]["flags"] == ["low_confidence"]  # the fake server's log-probs are -1
    assert lines["blue.png"]["flags"] == ["low_confidence", "hedge:Blue"]  # any case, a whole word
    assert lines["red.png"]["answer"] == f"red ({QUESTION})" and lines["blue.png"]["answer"] == f"blue ({QUESTION})"
    assert lines["red.png"]["confidence"] == -1.0 and lines["red.png"]["review"] is True
    assert "error" in lines["broken.png"]
    bodies = fake_server.requests
    assert len(bodies) == 3 and all(b["model"] == "listed-model" and not b["stream"] for b in bodies)

    from inference.remote import RemotePredictor

    fake_server.ignore_stream = True  # a server that does not stream: the whole answer as one piece
    assert list(RemotePredictor(fake_server.url, "m").stream(trained.blue, "Q?")) == ["blue (Q?)"]


@pytest.mark.parametrize("misbehave, message", [
    ("stream_error", "the server reported an error mid-answer: EngineCore encountered an issue"),
    ("no_choices", "held no answer"),
    ("cut", "mid-answer"),
    (500, "HTTP 500: model exploded"),
])
def test_a_server_error_is_never_an_answer(trained, tmp_path, capsys, misbehave, message):
    """Whatever goes wrong on the server's side -- an error object inside the stream, a reply
    without choices, a connection cut half-way, a non-200 status -- one question ends with one line
    and a non-zero exit; a batch and a benchmark write an error line (never an empty answer) that
    the next run asks again; merged-data evaluation counts it as an error, not a wrong answer."""
    kind = {"fail_with": misbehave} if isinstance(misbehave, int) else {"misbehave": misbehave}
    server = FakeOpenAI("red square", **kind)
    try:
        with pytest.raises(SystemExit) as exc:
            infer.main(["--server", server.url, "--image", str(trained.red), "--question", QUESTION])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err

        if misbehave == "stream_error":  # the error object is a streaming reply's; batches do not stream
            return
        out = tmp_path / "answers.jsonl"
        assert infer.main(["--server", server.url, "--images", str(trained.images / "sub"), "--question", QUESTION,
                           "--output", str(out)]) == 0
        line = json.loads(out.read_text().splitlines()[-1])
        assert "answer" not in line and message in line["error"] and line["retry"] is True
        assert "0 answered, 1 errors" in capsys.readouterr().err
        server.misbehave, server.fail_with = None, None  # the server recovers: the next run asks again
        assert infer.main(["--server", server.url, "--images", str(trained.images / "sub"), "--question", QUESTION,
                           "--output", str(out)]) == 0
        assert read_jsonl(out)[-1]["answer"] == "red square"
    finally:
        server.close()


def test_unreachable_server_is_one_line(trained, capsys):
    with pytest.raises(SystemExit) as exc:
        infer.main(["--server", f"http://127.0.0.1:{free_port()}", "--model", "m", "--image", str(trained.red),
                    "--question", QUESTION])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the server" in err


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing-image", "not-an-image", "image-is-a-dir", "no-images-in-dir",
                                  "empty-question", "not-a-checkpoint", "no-such-checkpoint", "no-images-json"])
def test_bad_input_exits_2_with_one_line(trained, tmp_path, case):
    ckpt = trained.checkpoint
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    (tmp_path / "qa.json").write_text("[]")
    args = {
        "missing-image": ["--checkpoint", ckpt, "--image", tmp_path / "nope.png", "--question", QUESTION],
        "not-an-image": ["--checkpoint", ckpt, "--image", trained.images / "notes.txt", "--question", QUESTION],
        "image-is-a-dir": ["--checkpoint", ckpt, "--image", trained.images, "--question", QUESTION],
        "no-images-in-dir": ["--checkpoint", ckpt, "--images", tmp_path / "empty", "--question", QUESTION,
                             "--output", tmp_path / "o.jsonl"],
        "empty-question": ["--checkpoint", ckpt, "--image", trained.red, "--question", "   "],
        "not-a-checkpoint": ["--checkpoint", tmp_path / "empty", "--image", trained.red, "--question", QUESTION],
        "no-such-checkpoint": ["--checkpoint", tmp_path / "nothing", "--image", trained.red, "--question", QUESTION],
        "no-images-json": ["--checkpoint", ckpt, "--images", tmp_path / "qa.json", "--output", tmp_path / "o.jsonl"],
    }[case]
    result = run_cli(*args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "o.jsonl").exists()


def test_checkpoint_without_weights_is_one_line(trained, tmp_path, capsys):
    broken = tmp_path / "checkpoint-5"
    broken.mkdir()
    (broken / "config.json").write_text((trained.checkpoint / "config.json").read_text())
    with pytest.raises(SystemExit) as exc:
        infer.main(["--checkpoint", str(tmp_path), "--image", str(trained.red), "--question", QUESTION])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a checkpoint" in err and "model.safetensors" in err


# -- hardening: names, bytes and sizes a new user runs into ---------------------------------------


def test_batch_writes_file_names_that_are_not_utf8_losslessly(predictor, trained, loaded, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "a_red.png").write_bytes(trained.red.read_bytes())
    latin1 = os.fsencode(folder) + b"/caf\xe9.png"  # a name from an old Latin-1 archive
    with open(latin1, "wb") as f:
        f.write(trained.blue.read_bytes())
    (folder / "z_blue.png").write_bytes(trained.blue.read_bytes())
    out = tmp_path / "answers.jsonl"
    args = ["--checkpoint", str(trained.checkpoint), "--images", str(folder), "--question", QUESTION,
            "--output", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "3"]
    assert infer.main(args) == 0
    lines = read_jsonl(out)  # the file is UTF-8 JSON throughout
    assert len(lines) == 3 and all("answer" in line for line in lines), lines
    assert {os.fsencode(line["image"]) for line in lines} == {
        os.fsencode(folder / "a_red.png"), latin1, os.fsencode(folder / "z_blue.png")}
    cafe = next(line for line in lines if os.fsencode(line["image"]) == latin1)
    assert cafe["answer"] == "blue"
    size = out.stat().st_size
    assert infer.main(args) == 0 and out.stat().st_size == size  # resumed: nothing asked twice


def test_a_run_whose_newest_checkpoint_was_cut_off_uses_the_previous_one_and_says_so(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained.checkpoint, run / "checkpoint-10")
    cut = run / "checkpoint-20"
    shutil.copytree(trained.checkpoint, cut)
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:-1000])
    (cut / "optimizer.pt").write_bytes(b"partial")
    result = run_cli("--checkpoint", run, "--image", trained.blue, "--question", QUESTION,
                     "--max-new-tokens", MAX_NEW_TOKENS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "blue\n"
    assert f"note: using {run / 'checkpoint-10'}, the newest complete checkpoint in {run}" in result.stderr
    assert "skipped, incomplete: checkpoint-20" in result.stderr


@pytest.mark.parametrize("damage", ["truncated", "hundred-bytes", "pickle"])
def test_a_damaged_weights_file_is_one_line_and_never_unpickled(trained, tmp_path, damage):
    import pickle
    import shutil

    ckpt = shutil.copytree(trained.checkpoint, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    marker = tmp_path / "unpickled"

    class Boom:  # unpickling this would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    weights.write_bytes({"truncated": data[: len(data) // 2], "hundred-bytes": data[:100],
                         "pickle": pickle.dumps(Boom())}[damage])
    result = run_cli("--checkpoint", ckpt, "--image", trained.red, "--question", QUESTION, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {weights}: incomplete checkpoint: not a whole safetensors file")
    assert not marker.exists()


def test_a_question_that_is_not_utf8_is_one_line(trained, tmp_path):
    bad = b"What colour is the caf\xe9?"
    for args in ([b"--image", os.fsencode(trained.red)], [b"--images", os.fsencode(trained.images),
                                                           b"--output", os.fsencode(tmp_path / "o.jsonl")]):
        result = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--checkpoint", str(trained.checkpoint),
                                 *args, b"--question", bad], capture_output=True, cwd=tmp_path, env=OFFLINE_ENV,
                                timeout=120)
        err = result.stderr.decode()
        assert result.returncode == 2 and err.count("\n") == 1, err
        assert err.startswith("error: --question: not valid UTF-8 text (byte 0xe9 at position 22)")
    assert not (tmp_path / "o.jsonl").exists()


def test_interactive_mode_reports_a_line_that_is_not_utf8_and_goes_on(predictor, trained, loaded, monkeypatch, capsys):
    import io as _io

    raw = _io.TextIOWrapper(_io.BytesIO(b"caf\xe9?\n" + QUESTION.encode() + b"\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", raw)
    assert infer.main(["--checkpoint", str(trained.checkpoint), "--image", str(trained.red),
                       "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    out = capsys.readouterr()
    assert out.out == "red\n" and "error: not valid UTF-8 text" in out.err


def test_a_question_longer_than_the_model_reads_is_refused_with_the_numbers(predictor, trained, loaded, tmp_path,
                                                                           capsys):
    long_question = "Describe every pixel. " * 2000  # ~10,000 tokens; the tiny Qwen2 reads 4,096
    with pytest.raises(SystemExit) as exc:
        infer.main(["--checkpoint", str(trained.checkpoint), "--image", str(trained.red), "--question", long_question])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the question is too long" in err and "at most 4,096" in err
    # In a batch it is that item's error; the others are answered.
    data = tmp_path / "merged"
    data.mkdir()
    (data / "images.json").write_text(json.dumps({"0": {"path": str(trained.red), "source": "t"}}))
    (data / "qa.json").write_text(json.dumps([
        {"id": "t/long", "image_id": 0, "source": "t", "messages": [{"role": "user", "content": long_question}]},
        {"id": "t/ok", "image_id": 0, "source": "t", "messages": [{"role": "user", "content": QUESTION}]},
    ]))
    out = tmp_path / "answers.jsonl"
    assert infer.main(["--checkpoint", str(trained.checkpoint), "--images", str(data / "qa.json"),
                       "--output", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    lines = {line["id"]: line for line in read_jsonl(out)}
    assert "the question is too long" in lines["t/long"]["error"] and lines["t/ok"]["answer"] == "red"


@pytest.mark.parametrize("args, message", [
    (["--sample", "--temperature", "nan"], "--temperature: 'nan' is not a finite number"),
    (["--top-p", "inf"], "--top-p: 'inf' is not a finite number"),
    (["--set", "generation.temperature=.inf"], "generation.temperature: expected a finite number"),
])
def test_non_finite_numbers_are_refused(trained, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        infer.main(["--checkpoint", str(trained.checkpoint), "--image", str(trained.red), "--question", QUESTION,
                    *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_batch_output_that_cannot_be_written_is_refused_before_any_work(trained, tmp_path):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    for output, message in ((tmp_path / "file.txt" / "out.jsonl", "is a file, not a directory"),
                            (Path("/proc/answers.jsonl"), "not writable")):
        result = run_cli("--checkpoint", trained.checkpoint, "--images", trained.images, "--question", QUESTION,
                         "--output", output, cwd=tmp_path, timeout=120)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr and "answering" not in result.stderr


def test_server_mode_sends_an_exif_rotated_photo_upright(fake_server, trained, tmp_path):
    """What the local model sees (EXIF orientation applied) is what a server is sent."""
    from tests.conftest import random_rgb

    upright = random_rgb(40, 24, seed=5)
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # stored landscape, orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "portrait.jpg"
    stored.save(photo, quality=100, exif=exif.tobytes())
    assert infer.main(["--server", fake_server.url, "--model", "m", "--image", str(photo), "--question", QUESTION]) == 0
    url = fake_server.requests[0]["messages"][0]["content"][0]["image_url"]["url"]
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (24, 40)  # portrait, as the phone showed it
    from visual.preprocess import load_image

    assert sent.tobytes() == load_image(photo).tobytes()


def test_a_checkpoint_whose_base_moved_is_one_line_at_once(trained, tmp_path):
    import shutil
    import time

    ckpt = shutil.copytree(trained.checkpoint, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["vision_model"] = str(tmp_path / "moved" / "tiny-siglip")
    (ckpt / "config.json").write_text(json.dumps(config))
    started = time.monotonic()
    result = run_cli("--checkpoint", ckpt, "--image", trained.red, "--question", QUESTION, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {ckpt / 'config.json'}: vision_model: not found: {tmp_path / 'moved'}")
    assert time.monotonic() - started < 60

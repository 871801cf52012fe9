"""evaluate.py end to end: predictions.jsonl and metrics.json agree with vqa_metric on what was written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from commands import evaluate
from evaluation import vqa_metric
from evaluation.records import evaluate_records, ground_truth
from inference.generation import SamplingSettings
from tests.conftest import COLOUR_QUESTION as QUESTION
from tests.conftest import OFFLINE_ENV, ROOT

MAX_NEW_TOKENS = 8
SETTINGS = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def held_out(trained, tmp_path_factory) -> Path:
    """A merged held-out set: VQA-style records, one scored against its assistant turn, one whose
    image is unreadable, one without any ground truth."""
    data = tmp_path_factory.mktemp("held-out")
    rel = os.path.relpath(trained.images, data)
    (data / "images.json").write_text(json.dumps({
        "0": {"path": f"{rel}/red.png", "source": "t"}, "1": {"path": f"{rel}/blue.png", "source": "t"},
        "2": {"path": f"{rel}/sub/red2.jpg", "source": "t"}, "3": {"path": f"{rel}/broken.png", "source": "t"},
    }))

    def record(rid, image_id, answer=None, **extra):
        messages = [{"role": "user", "content": f"<|extra_0|>\n{QUESTION}"}]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return {"id": rid, "image_id": image_id, "source": "t", "messages": messages, **extra}

    records = [
        record("t/red", 0, "red", answers=["red"] * 10, question_type="what color"),
        record("t/blue", 1, "blue", answers=["blue"] * 7 + ["navy"] * 3, question_type="what color"),
        record("t/red2", 2, "red", answers=["Red"] * 2 + ["crimson"] * 8, question_type="other"),
        record("t/assistant-only", 1, "blue"),
        record("t/broken", 3, "red", answers=["red"] * 10, question_type="other"),
        record("t/no-truth", 0),
    ]
    (data / "qa.json").write_text(json.dumps(records))
    return data / "qa.json"


def test_evaluate_cli_writes_predictions_and_consistent_metrics(trained, held_out, tmp_path):
    from inference.predictor import Predictor

    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--checkpoint", str(trained.checkpoint), "--data", str(held_out),
         "--output", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2"],
        capture_output=True, text=True, cwd=tmp_path, env=OFFLINE_ENV, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "VQA accuracy" in result.stdout
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())

    assert [p["id"] for p in predictions] == ["t/red", "t/blue", "t/red2", "t/assistant-only"]
    assert predictions[3]["answers"] == ["blue"] * 10 and predictions[3]["question_type"] is None
    predictor = Predictor.from_checkpoint(trained.checkpoint)
    expected = predictor.answer([trained.red, trained.blue, trained.red2, trained.blue], [QUESTION] * 4, SETTINGS)
    assert [p["prediction"] for p in predictions] == [a.text for a in expected]
    assert predictions[0]["prediction"] == "red" and predictions[1]["prediction"] == "blue"

    # metrics.json is exactly vqa_metric over the written predictions
    rescored = vqa_metric.score(predictions)
    for key in ("vqa_accuracy", "exact_match", "count", "per_question_type"):
        assert metrics[key] == rescored[key], key
    for p in predictions:
        assert p["vqa_accuracy"] == vqa_metric.vqa_accuracy(p["prediction"], p["answers"])
        assert p["exact_match"] == vqa_metric.exact_match(p["prediction"], p["answers"])
    assert metrics["count"] == 4 and metrics["errors"] == 1 and metrics["skipped"] == 1
    assert "not a readable image" in metrics["error_examples"][0]["error"]
    assert set(metrics["per_question_type"]) == {"what color", "other"}
    assert metrics["per_question_type"]["what color"]["count"] == 2
    assert metrics["vqa_accuracy"] > 0.5 and metrics["generation"]["max_new_tokens"] == MAX_NEW_TOKENS

    # In-process, the same function train.py / the demo call gives the same result.
    records = json.loads(held_out.read_text())
    again, again_metrics = evaluate_records(predictor, records, held_out.parent, SETTINGS, batch_size=3)
    assert [p["prediction"] for p in again] == [p["prediction"] for p in predictions]
    assert again_metrics["vqa_accuracy"] == metrics["vqa_accuracy"]


def test_vqa_accuracy_counts_normalised_answers():
    assert vqa_metric.vqa_accuracy("two", ["2"] * 3 + ["two"] * 7) == 1.0


def test_ground_truth_falls_back_to_ten_copies_of_the_assistant_turn():
    assert ground_truth({"answers": ["a", "b"], "messages": []}) == ["a", "b"]
    rec = {"messages": [{"role": "user", "content": "<|extra_0|>\nq"}, {"role": "assistant", "content": " yes "}]}
    assert ground_truth(rec) == ["yes"] * 10
    assert vqa_metric.vqa_accuracy("yes", ground_truth(rec)) == 1.0  # one answer alone would always be 0
    assert ground_truth({"messages": [{"role": "user", "content": "q"}]}) is None


@pytest.mark.parametrize("case", ["missing-data", "not-a-checkpoint", "no-images-json"])
def test_bad_input_exits_2_with_one_line(trained, held_out, tmp_path, capsys, case):
    (tmp_path / "qa.json").write_text("[]")
    args = {
        "missing-data": ["--checkpoint", str(trained.checkpoint), "--data", str(tmp_path / "nope.json")],
        "not-a-checkpoint": ["--checkpoint", str(tmp_path), "--data", str(held_out)],
        "no-images-json": ["--checkpoint", str(trained.checkpoint), "--data", str(tmp_path / "qa.json")],
    }[case]
    with pytest.raises(SystemExit) as exc:
        evaluate.main(args + ["--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_or_damaged_checkpoint_is_refused_before_answering(trained, held_out, tmp_path):
    import shutil

    (tmp_path / "file.txt").write_text("x")
    damaged = shutil.copytree(trained.checkpoint, tmp_path / "damaged")
    (damaged / "model.safetensors").write_bytes(b"\x00" * 100)
    for checkpoint, output, message in (
        (trained.checkpoint, tmp_path / "file.txt" / "eval", "is a file, not a directory"),
        (trained.checkpoint, Path("/proc/eval"), "not writable"),
        (damaged, tmp_path / "eval", "incomplete checkpoint: not a whole safetensors file"),
    ):
        result = subprocess.run(
            [sys.executable, str(ROOT / "evaluate.py"), "--checkpoint", str(checkpoint), "--data", str(held_out),
             "--output", str(output)], capture_output=True, text=True, cwd=tmp_path, env=OFFLINE_ENV, timeout=300)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr and "evaluating" not in result.stderr
    assert not (tmp_path / "eval").exists()

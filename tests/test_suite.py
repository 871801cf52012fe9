"""evaluate.py --suite llava-1.5 --data-root DIR: every benchmark whose released files are in
DIR/<benchmark>/ is run by one command into its own resumable folder, and the table puts our
numbers beside LLaVA-1.5-7B's published ones; what is missing is a row saying so. The model is the
tiny colour checkpoint (it answers "red" / "blue"), so every expected number is worked out by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from commands import evaluate
from evaluation.benchmarks import BENCHMARKS
from evaluation.suite import SUITES


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)


@pytest.fixture
def data_root(trained, tmp_path) -> Path:
    root = tmp_path / "eval-data"
    # VQAv2: only the val layout is here (the table's test-dev is not), two colour questions.
    vqa = root / "vqav2"
    for i, source in ((1, trained.red), (2, trained.blue)):
        copy(source, vqa / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    write(vqa / "v2_OpenEnded_mscoco_val2014_questions.json", {"data_subtype": "val2014", "questions": [
        {"image_id": i, "question": "What colour is it?", "question_id": i * 10} for i in (1, 2)]})
    write(vqa / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": i * 10, "question_type": "what color", "answer_type": "other",
         "answers": [{"answer": colour} for _ in range(10)]} for i, colour in ((1, "red"), (2, "blue"))]})
    # POPE: each split one "yes" and one "no" question on the red image.
    copy(trained.red, root / "pope" / "val2014" / "COCO_val2014_000000000001.jpg")
    for split in ("random", "popular", "adversarial"):
        write(root / "pope" / f"coco_pope_{split}.json", "\n".join(json.dumps(
            {"question_id": n, "image": "COCO_val2014_000000000001.jpg", "text": "What colour is it?", "label": label})
            for n, label in ((1, "yes"), (2, "no"))) + "\n")
    # MME: one perception subtask, one image, its two questions.
    task = root / "mme" / "MME_Benchmark_release_version" / "color"
    copy(trained.red, task / "images" / "0001.png")
    write(task / "questions_answers_YN" / "0001.txt", "What colour is it?\tYes\nWhat colour is it?\tNo\n")
    # MM-Vet: its files are here, but it is scored by a judge model and none is given.
    copy(trained.red, root / "mmvet" / "images" / "v1_0.png")
    write(root / "mmvet" / "mm-vet.json", {"v1_0": {"imagename": "v1_0.png", "question": "What colour is it?",
                                                    "answer": "red", "capability": ["rec"]}})
    # TextVQA: a folder without the released file.
    (root / "textvqa").mkdir()
    return root


def test_one_command_runs_what_is_there_and_writes_the_table(trained, data_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "table"
    args = ["--checkpoint", str(trained.checkpoint), "--suite", "llava-1.5", "--data-root", str(data_root),
            "--output", str(out), "--prompt-suffix", "", "--max-new-tokens", "8"]
    assert evaluate.main(args) == 0
    captured = capsys.readouterr()
    table = json.loads((out / "table.json").read_text())
    rows = {row["benchmark"]: row for row in table["rows"]}
    assert list(rows) == [c.benchmark for c in SUITES["llava-1.5"].columns]
    # VQAv2 val: "red" and "blue" against ten "red" / ten "blue": 100.0.
    assert rows["vqav2"]["value"] == 100.0 and rows["vqav2"]["split"] == "val2014"
    # POPE: "red" reads as yes (no "no"/"not" in it): per split tp 1, fp 1 -> precision 1/2, recall 1,
    # F1 2/3; the table's POPE is the three F1s averaged, in percent.
    assert rows["pope"]["value"] == pytest.approx(100 * 2 / 3)
    # MME: "red" is neither yes nor no (calculation.py: "other", wrong): acc 0, acc+ 0 -> perception 0.
    assert rows["mme"]["value"] == 0.0
    assert rows["vqav2"]["published"] == 78.5 and rows["mme"]["published"] == 1510.7
    assert "no released files" in rows["textvqa"]["note"] and "TextVQA_0.5.1_val.json" in rows["textvqa"]["note"]
    assert "no released files" in rows["gqa"]["note"] and rows["gqa"]["value"] is None
    assert rows["mmvet"]["note"] == "scored by a judge model: give --judge-server URL --judge-model NAME"
    assert rows["llava_bench"]["note"].startswith("llava_bench: no released files (in-the-wild: questions.jsonl")
    markdown = (out / "table.md").read_text()
    assert "| VQAv2 | test-dev accuracy (EvalAI server) | val2014 | 100.0 | 78.5 |" in markdown
    assert "| POPE |" in markdown and "| 66.7 | 85.9 |" in markdown
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("vqav2", "pope", "mme"):  # each benchmark in its own folder, as a --benchmark run writes it
        assert json.loads((out / name / "metrics.json").read_text())["benchmark"] == name
    assert "gqa: skipped" in captured.err and "llava-1.5: 3 of" in captured.out
    first = markdown

    # Run again: every answer is there, so nothing is asked and the same table comes out.
    from inference.predictor import Predictor

    def never(*args, **kwargs):
        raise AssertionError("a finished suite asked the model again")

    monkeypatch.setattr(Predictor, "answer", never)
    assert evaluate.main(args) == 0
    assert (out / "table.md").read_text() == first


def test_the_suite_is_refused_without_a_data_root_or_with_single_benchmark_flags(trained, tmp_path, capsys):
    for extra, message in ((["--data-root", str(tmp_path / "absent")], "needs --data-root DIR"),
                           (["--data-root", str(tmp_path), "--benchmark", "gqa"], "drop --benchmark"),
                           (["--data-root", str(tmp_path)], "no benchmark of --suite llava-1.5 has its files")):
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--checkpoint", str(trained.checkpoint), "--suite", "llava-1.5", "--output",
                           str(tmp_path / "out"), *extra])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_every_column_of_the_table_is_a_registered_benchmark_with_a_released_layout():
    for column in SUITES["llava-1.5"].columns:
        bench = BENCHMARKS[column.benchmark]()
        assert isinstance(bench.locate(Path("/nonexistent") / column.benchmark), str)  # says what is missing

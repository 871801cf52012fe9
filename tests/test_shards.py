"""evaluate.py --shard I/N and --merge-shards: two shards, merged, equal the unsharded run.

Two CPU shards of a real checkpoint (the session's trained colour model) on held-out merged data
and on a VQAv2 set in its official format; each shard resumes on its own; the merge refuses a
missing or repeated shard and shards of different models.
"""

from __future__ import annotations

import json
import shutil

import pytest

from commands import evaluate
from tests.test_benchmarks import write
from tests.test_evaluate import MAX_NEW_TOKENS, held_out  # noqa: F401 (held_out: a fixture)


def run(args) -> None:
    assert evaluate.main([*args, "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_merged_data_shards_merge_into_the_unsharded_run(trained, held_out, tmp_path, capsys):  # noqa: F811
    common = ["--checkpoint", str(trained.checkpoint), "--data", str(held_out), "--batch-size", "2"]
    run([*common, "--output", str(tmp_path / "whole")])
    for i in (0, 1):
        run([*common, "--shard", f"{i}/2", "--output", str(tmp_path / f"shard{i}")])
    shard0 = lines(tmp_path / "shard0" / "predictions.jsonl")
    assert [p["index"] for p in shard0] == [0, 2]  # every second record from the first (t/broken, 4, errs)
    assert json.loads((tmp_path / "shard1" / "metrics.json").read_text())["produced_by"]["shard"] == "1/2"
    assert evaluate.main(["--merge-shards", str(tmp_path / "shard1"), str(tmp_path / "shard0"), "--data", str(held_out),
                          "--output", str(tmp_path / "merged")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    merged = json.loads((tmp_path / "merged" / "metrics.json").read_text())
    assert lines(tmp_path / "merged" / "predictions.jsonl") == lines(tmp_path / "whole" / "predictions.jsonl")
    for key in ("vqa_accuracy", "exact_match", "count", "per_question_type", "per_answer_type", "errors", "skipped",
                "produced_by", "data"):
        assert merged[key] == whole[key], key
    assert merged["errors"] == 1 and merged["skipped"] == 1  # the broken image, the record without truth

    # refused: a shard missing, a shard twice, shards of different runs
    capsys.readouterr()
    other = tmp_path / "other1"
    assert evaluate.main(["--checkpoint", str(trained.checkpoint), "--data", str(held_out), "--batch-size", "2",
                          "--shard", "1/2", "--output", str(other), "--max-new-tokens", str(MAX_NEW_TOKENS + 1)]) == 0
    for dirs, message in (([tmp_path / "shard0"], "shards 0/2 .. 1/2, each once"),
                          ([tmp_path / "shard0", tmp_path / "shard0"], "each once; got 0/2, 0/2"),
                          ([tmp_path / "shard0", other], "answered by another model or settings"),
                          ([tmp_path / "whole", tmp_path / "shard1"], "not the output of a --shard run")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--merge-shards", *map(str, dirs), "--data", str(held_out), "--output", str(tmp_path / "m2")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1, err


def test_benchmark_shards_resume_and_merge_into_the_unsharded_run(trained, tmp_path):
    coco = tmp_path / "coco"
    coco.mkdir()
    colours = {i: ("red" if i % 3 else "blue") for i in range(1, 8)}
    for i, colour in colours.items():
        shutil.copy(trained.red if colour == "red" else trained.blue, coco / f"COCO_val2014_{i:012d}.jpg")
    questions = write(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [
        {"image_id": i, "question": "What colour is it?", "question_id": i * 10} for i in colours]})
    annotations = write(tmp_path / "a.json", {"annotations": [
        {"question_id": i * 10, "question_type": "what color", "answer_type": "other",
         "answers": [{"answer": "red"}] * 10} for i in colours]})  # every truth "red": the blue ones score 0
    common = ["--checkpoint", str(trained.checkpoint), "--benchmark", "vqav2", "--questions", str(questions),
              "--annotations", str(annotations), "--images", str(coco), "--prompt-suffix", ""]
    run([*common, "--output", str(tmp_path / "whole")])
    run([*common, "--shard", "0/2", "--limit", "5", "--output", str(tmp_path / "shard0"), "--allow-partial"])
    run([*common, "--shard", "0/2", "--output", str(tmp_path / "shard0")])  # resumes: asks only what is left
    run([*common, "--shard", "1/2", "--output", str(tmp_path / "shard1")])
    assert [line["qid"] for line in lines(tmp_path / "shard0" / "predictions.jsonl")[1:]] == ["10", "30", "50", "70"]
    merge = [*common[2:8], "--merge-shards", str(tmp_path / "shard0"), str(tmp_path / "shard1")]
    assert evaluate.main([*merge, "--output", str(tmp_path / "no-images")]) == 0  # images are optional when merging
    assert evaluate.main([*merge, "--images", str(coco), "--output", str(tmp_path / "merged")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    merged = json.loads((tmp_path / "merged" / "metrics.json").read_text())
    for key in ("overall", "count", "perQuestionType", "perAnswerType", "coverage", "produced_by"):
        assert merged[key] == whole[key], key
    assert whole["overall"] == round(100 * 5 / 7, 2)
    assert (tmp_path / "merged" / "predictions.jsonl").read_text() == (tmp_path / "whole" / "predictions.jsonl").read_text()
    assert (tmp_path / "merged" / "scores.jsonl").read_text() == (tmp_path / "whole" / "scores.jsonl").read_text()


def test_batch_pre_annotation_shards_merge_into_the_unsharded_run(trained, tmp_path, capsys):
    from commands import infer

    common = ["--checkpoint", str(trained.checkpoint), "--images", str(trained.images), "--question", "What colour is it?",
              "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2"]
    assert infer.main([*common, "--output", str(tmp_path / "whole.jsonl")]) == 0
    for i in (0, 1):
        assert infer.main([*common, "--shard", f"{i}/2", "--output", str(tmp_path / f"s{i}.jsonl")]) == 0
    assert lines(tmp_path / "s1.jsonl")[0]["produced_by"]["shard"] == "1/2"
    assert infer.main(["--images", str(trained.images), "--question", "What colour is it?", "--merge-shards",
                       str(tmp_path / "s1.jsonl"), str(tmp_path / "s0.jsonl"), "--output", str(tmp_path / "merged.jsonl")]) == 0
    whole, merged = lines(tmp_path / "whole.jsonl"), lines(tmp_path / "merged.jsonl")
    assert len(whole) == len(merged) > 3 and merged[0] == whole[0]  # the same produced_by, no shard
    for a, b in zip(whole[1:], merged[1:]):
        assert {k: v for k, v in a.items() if k != "confidence"} == {k: v for k, v in b.items() if k != "confidence"}
        assert a.get("confidence") == pytest.approx(b.get("confidence"), abs=1e-5)
    assert any("error" in e for e in merged[1:]) and any("answer" in e for e in merged[1:])  # the broken image too
    capsys.readouterr()
    with pytest.raises(SystemExit):
        infer.main(["--images", str(trained.images), "--question", "What colour is it?", "--merge-shards",
                    str(tmp_path / "s0.jsonl"), "--output", str(tmp_path / "m2.jsonl")])
    assert "shards 0/2 .. 1/2, each once" in capsys.readouterr().err


def test_replicas_of_one_served_model_are_one_run_and_benchmark_shards_need_their_files(tmp_path, capsys):
    from dataset.produced_by import common_of_shards
    from errors import UserError

    def header(i, url, model="vqa"):
        return {"benchmark": "pope", "model": {"server": url, "model": model}, "generation": {"max_new_tokens": 8},
                "shard": f"{i}/2"}

    common = common_of_shards([("s0", header(0, "http://gpu0:8000")), ("s1", header(1, "http://gpu1:8000"))])
    assert common["model"]["model"] == "vqa" and "shard" not in common
    with pytest.raises(UserError, match="answered by another model or settings"):
        common_of_shards([("s0", header(0, "http://gpu0:8000")), ("s1", header(1, "http://gpu1:8000", "other"))])
    # benchmark shards merged without --benchmark: one line, not a traceback
    for i in (0, 1):
        write(tmp_path / f"s{i}" / "metrics.json", {"produced_by": header(i, "http://x"), "count": 1})
        write(tmp_path / f"s{i}" / "predictions.jsonl", json.dumps({"produced_by": header(i, "http://x")}) + "\n")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate.main(["--merge-shards", str(tmp_path / "s0"), str(tmp_path / "s1"), "--output", str(tmp_path / "all")])
    assert "shards of the pope benchmark: merge them with --benchmark" in capsys.readouterr().err

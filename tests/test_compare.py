"""evaluate.py --compare: A/B between two evaluation outputs, on constructed results with known differences.

The benchmark runs are real ``evaluate.py --predictions`` outputs (VQAv2 and POPE files in their
official formats, scored by the project's official-equivalent scorers); the merged-data runs are
written as ``evaluate.py --data`` writes them. The statistics are checked against independent
computations written out here: McNemar's exact p-value from the binomial sum, and the bootstrap
interval against the normal approximation of a mean difference.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from commands import evaluate
from evaluation.records import write_results
from evaluation.vqa_metric import vqa_accuracy
from tests.test_benchmarks import write

N = 200


def vqa_benchmark(tmp_path: Path, n: int = N):
    """n questions, each with ten annotators answering "a<i>"; two question types, two answer types."""
    questions = write(tmp_path / "questions.json", {"data_subtype": "val2014", "questions": [
        {"image_id": i, "question": f"What is thing {i}?", "question_id": i} for i in range(1, n + 1)]})
    annotations = write(tmp_path / "annotations.json", {"annotations": [
        {"question_id": i, "image_id": i, "question_type": "what is" if i % 2 else "what colour",
         "answer_type": "other" if i % 4 < 2 else "number",
         "answers": [{"answer": f"a{i}", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]}
        for i in range(1, n + 1)]})
    return questions, annotations


def vqa_run(tmp_path: Path, name: str, right: set[int], n: int = N, extra=()) -> Path:
    """evaluate.py --predictions: answers right (full credit) on ``right``, wrong elsewhere."""
    questions, annotations = vqa_benchmark(tmp_path, n)
    results = write(tmp_path / f"{name}.json", [{"question_id": i, "answer": f"a{i}" if i in right else "wrong"}
                                                for i in range(1, n + 1)])
    out = tmp_path / name
    assert evaluate.main(["--benchmark", "vqav2", "--questions", str(questions), "--annotations", str(annotations),
                          "--predictions", str(results), "--output", str(out), *extra]) == 0
    return out


def compare(a: Path, b: Path, out: Path) -> dict:
    assert evaluate.main(["--compare", str(a), str(b), "--output", str(out)]) == 0
    return json.loads((out / "compare.json").read_text())


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar: twice the smaller binomial tail of Binomial(b + c, 1/2), at most 1."""
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def normal_interval(diffs: list[float]) -> tuple[float, float]:
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean - 1.96 * sd / math.sqrt(n), mean + 1.96 * sd / math.sqrt(n)


def test_a_real_improvement_is_significant_and_its_flips_are_listed(tmp_path, capsys):
    a_right = set(range(1, 101))  # A: 100 of 200
    b_right = set(range(1, 141)) - {7, 8, 9, 10, 11}  # B: gains 41..140 (40), loses 7..11 (5): 135 of 200
    a, b = vqa_run(tmp_path, "a", a_right), vqa_run(tmp_path, "b", b_right)
    capsys.readouterr()
    result = compare(a, b, tmp_path / "cmp")
    overall = result["overall"]
    assert (overall["a"], overall["b"], overall["count"]) == (50.0, 67.5, N)
    assert overall["difference"] == pytest.approx(17.5)
    assert (overall["a_better"], overall["b_better"]) == (5, 40)
    assert overall["p_value"] == pytest.approx(mcnemar_exact(5, 40), rel=1e-9) and overall["p_value"] < 1e-6
    diffs = [100.0 * ((i in b_right) - (i in a_right)) for i in range(1, N + 1)]
    low, high = normal_interval(diffs)
    assert overall["low"] == pytest.approx(low, abs=0.8) and overall["high"] == pytest.approx(high, abs=0.8)
    assert 0 < overall["low"] < 17.5 < overall["high"] and overall["significant"]
    # per type: the same statistics over each type's questions
    odd = [i for i in range(1, N + 1) if i % 2]
    by_type = result["groups"]["question_type"]["what is"]
    assert by_type["count"] == len(odd)
    assert by_type["a_better"] == sum(1 for i in odd if i in a_right and i not in b_right)
    assert by_type["b_better"] == sum(1 for i in odd if i in b_right and i not in a_right)
    assert set(result["groups"]) == {"question_type", "answer_type"}
    # the flips, both ways
    flips = [json.loads(line) for line in (tmp_path / "cmp" / "flips.jsonl").read_text().splitlines()]
    assert sorted(int(f["id"]) for f in flips if f["better"] == "A") == [7, 8, 9, 10, 11]
    assert sorted(int(f["id"]) for f in flips if f["better"] == "B") == list(range(101, 141))
    report = (tmp_path / "cmp" / "compare.md").read_text()
    assert "**B is better**: +17.50 points" in report and "## A scored higher (B regressed): 5 questions" in report
    assert "What is thing 7?" in report and "| wrong (0.00) |" in report
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "vqav2: A 50.00, B 67.50 on 200 paired questions; B is better" in out
    assert result["a"]["model"] == f"results file {tmp_path / 'a.json'}"


def test_no_real_difference_is_not_significant(tmp_path):
    # Same accuracy, 20 questions each way: the interval straddles 0 and p = 1.
    a_right = set(range(1, 101))
    b_right = (a_right - set(range(1, 21))) | set(range(101, 121))
    result = compare(vqa_run(tmp_path, "a", a_right), vqa_run(tmp_path, "b", b_right), tmp_path / "cmp")
    overall = result["overall"]
    assert overall["difference"] == 0 and (overall["a_better"], overall["b_better"]) == (20, 20)
    assert overall["p_value"] == mcnemar_exact(20, 20) == 1.0
    assert overall["low"] < 0 < overall["high"] and not overall["significant"]
    assert "**no significant difference**" in (tmp_path / "cmp" / "compare.md").read_text()
    # A small gain on few questions is not enough either: 6 vs 1 discordant, p = 0.125
    small = compare(vqa_run(tmp_path, "a2", a_right), vqa_run(tmp_path, "b2", (a_right - {1}) | set(range(101, 107))),
                    tmp_path / "cmp2")["overall"]
    assert small["p_value"] == pytest.approx(mcnemar_exact(1, 6)) == pytest.approx(0.125)
    assert not small["significant"]


def test_fractional_vqa_credit_is_paired_by_question(tmp_path):
    """VQA's min(#humans/3, 1): a question can move by a third; the sign of the change is what
    McNemar's (sign) test counts, the bootstrap works on the credit itself."""
    questions = write(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [
        {"image_id": i, "question": f"Q{i}?", "question_id": i} for i in range(1, 4)]})
    annotations = write(tmp_path / "ann.json", {"annotations": [
        {"question_id": i, "image_id": i, "question_type": "t", "answer_type": "other",
         "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": k + 1}
                     for k, x in enumerate(["cat"] * 2 + ["dog"] * 8)]} for i in range(1, 4)]})
    outs = []
    for name, answers in (("a", ["cat", "cat", "dog"]), ("b", ["dog", "cat", "dog"])):
        results = write(tmp_path / f"{name}.json", [{"question_id": i + 1, "answer": x} for i, x in enumerate(answers)])
        assert evaluate.main(["--benchmark", "vqav2", "--questions", str(questions), "--annotations", str(annotations),
                              "--predictions", str(results), "--output", str(tmp_path / name)]) == 0
        outs.append(tmp_path / name)
    overall = compare(*outs, tmp_path / "cmp")["overall"]
    cat, dog = vqa_accuracy("cat", ["cat"] * 2 + ["dog"] * 8), vqa_accuracy("dog", ["cat"] * 2 + ["dog"] * 8)
    assert overall["a"] == pytest.approx(100 * (2 * cat + dog) / 3) and overall["b"] == pytest.approx(100 * (cat + 2 * dog) / 3)
    assert (overall["a_better"], overall["b_better"]) == (0, 1)
    assert overall["difference"] == pytest.approx(100 * (dog - cat) / 3)


def test_pope_compares_per_question_accuracy_and_says_so(tmp_path):
    labels = ["yes", "no"] * 20
    split = write(tmp_path / "coco_pope_random.json", "".join(
        json.dumps({"question_id": n + 1, "image": f"COCO_val2014_{n + 1:012d}.jpg", "text": "Is there a dog?",
                    "label": label}) + "\n" for n, label in enumerate(labels)))
    outs = []
    for name, wrong in (("a", set(range(1, 11))), ("b", {1})):
        answers = write(tmp_path / f"{name}.jsonl", "".join(
            json.dumps({"question_id": n + 1, "text": ({"yes": "no", "no": "yes"}[label] if n + 1 in wrong else label)}) + "\n"
            for n, label in enumerate(labels)))
        assert evaluate.main(["--benchmark", "pope", "--questions", str(split), "--predictions", str(answers),
                              "--output", str(tmp_path / name)]) == 0
        outs.append(tmp_path / name)
    result = compare(*outs, tmp_path / "cmp")
    assert (result["overall"]["a"], result["overall"]["b"]) == (75.0, 97.5)
    assert (result["overall"]["a_better"], result["overall"]["b_better"]) == (0, 9)
    assert result["overall"]["p_value"] == pytest.approx(mcnemar_exact(0, 9))
    assert "F1 and the yes ratio are not means of it" in (tmp_path / "cmp" / "compare.md").read_text()


def merged_run(tmp_path: Path, name: str, right: set[int], images: dict[int, Path]) -> Path:
    """An output folder as evaluate.py --data writes it (predictions.jsonl + metrics.json)."""
    from evaluation.vqa_metric import score

    predictions = []
    for i, path in images.items():
        prediction = "red" if i in right else "blue"
        predictions.append({"id": f"r{i}", "image_id": f"img{i}", "image": str(path), "question": f"Colour {i}?",
                            "prediction": prediction, "answers": ["red"] * 10, "question_type": "colour",
                            "confidence": -0.1, "vqa_accuracy": vqa_accuracy(prediction, ["red"] * 10),
                            "exact_match": float(prediction == "red")})
    metrics = score(predictions)
    metrics.update(errors=0, skipped=0, produced_by={"model": {"checkpoint": f"/runs/{name}", "fingerprint": "f" * 64}})
    write_results(tmp_path / name, predictions, metrics)
    return tmp_path / name


def test_merged_data_runs_compare_with_their_images(tmp_path):
    images = {}
    for i in range(1, 31):
        images[i] = tmp_path / "images" / f"{i}.png"
        images[i].parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (i, 0, 0)).save(images[i])
    a = merged_run(tmp_path, "sft", set(range(1, 21)), images)
    b = merged_run(tmp_path, "dpo", set(range(1, 31)) - {3}, images)
    out = tmp_path / "reports" / "sft-vs-dpo"
    result = compare(a, b, out)
    assert result["kind"] == "merged data" and (result["overall"]["a_better"], result["overall"]["b_better"]) == (1, 10)
    assert "/runs/sft" in result["a"]["model"] and "fingerprint ffffffffffff" in result["a"]["model"]
    report = (out / "compare.md").read_text()
    sources = re.findall(r'<img src="([^"]+)"', report)
    assert len(sources) == 11 and all((out / s).resolve().is_file() for s in sources)  # relative links that resolve
    assert (out / Path(sources[0])).resolve() == images[3].resolve()  # the regression is listed first


def test_runs_that_do_not_pair_are_refused(tmp_path, capsys):
    a = vqa_run(tmp_path, "a", {1, 2})
    fewer = vqa_run(tmp_path, "fewer", {1, 2}, extra=("--limit", "150", "--allow-partial"))
    merged = merged_run(tmp_path, "merged", {1}, {1: tmp_path / "x.png"})
    cases = [((a, fewer), "not over the same questions: 50 only in"),
             ((a, merged), "only runs of the same benchmark compare"),
             ((a, tmp_path / "nothing"), "no metrics.json")]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text((a / "metrics.json").read_text())
    cases.append(((a, tmp_path / "old"), "no scores.jsonl"))
    for (x, y), message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--compare", str(x), str(y), "--output", str(tmp_path / "cmp")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        evaluate.main(["--compare", str(a), str(a), "--checkpoint", "x", "--output", str(tmp_path / "cmp")])
    assert "asks no model; drop --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_a_type_with_a_single_changed_question_has_no_interval_but_compares(tmp_path):
    images = {i: tmp_path / "x.png" for i in range(1, 6)}
    a = merged_run(tmp_path, "a", {1, 2, 3}, images)
    b = merged_run(tmp_path, "b", {1, 2, 3, 4}, images)
    for name in ("a", "b"):  # question 4 is the only one of its type
        path = tmp_path / name / "predictions.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[3]["question_type"] = "how many"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    single = compare(a, b, tmp_path / "cmp")["groups"]["question_type"]["how many"]
    assert single["count"] == 1 and single["low"] == single["high"] == single["difference"] == 100.0
    assert single["p_value"] == 1.0 and not (single["p_value"] < 0.05)

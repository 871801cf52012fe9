"""evaluation/benchmarks: each benchmark read from small files in its official format and scored
exactly as its official evaluation code scores them; every expected number is computed by hand
from that code's definition (in the comments), including the cases where the official code behaves
surprisingly (docs/benchmarks.md lists them per benchmark).

Formats, from the benchmarks' own documentation: VQAv2/OK-VQA (visualqa.org "Input Questions
Format" / "Annotation Format"), VizWiz (vizwiz.org VQA "Dataset" section), TextVQA (textvqa.org
"Dataset" JSON description), GQA (the "Questions" section of the GQA download page), POPE
(RUCAIBox/POPE output/coco/*.json lines), MME (the released MME_Benchmark_release_version layout
and eval_tool/calculation.py). Scoring a results file never reads an image (no --images). The
end-to-end tests answer with the tiny colour checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from commands import evaluate
from evaluation.benchmarks import BENCHMARKS
from evaluation.benchmarks.base import BenchmarkError
from evaluation.benchmarks.gqa import gqa_results_answer
from evaluation.benchmarks.mme import mme_answer
from evaluation.benchmarks.pope import pope_answer
from evaluation.vizwiz_metric import vizwiz_accuracy
from evaluation.vqa_metric import vqa_accuracy


def image(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def score(name, tmp_path, questions, predictions, annotations=None, output="out", extra=()):
    """evaluate.py --benchmark NAME --predictions ... (no --images): the metrics.json it writes."""
    args = ["--benchmark", name, "--predictions", str(predictions), "--output", str(tmp_path / output), *extra]
    for q in questions if isinstance(questions, list) else [questions]:
        args += ["--questions", str(q)]
    if annotations:
        args += ["--annotations", str(annotations)]
    assert evaluate.main(args) == 0
    return json.loads((tmp_path / output / "metrics.json").read_text())


def refused(capsys, *args, **kwargs) -> str:
    """``score(...)`` that must stop with exit status 2 and one line; returns the line."""
    with pytest.raises(SystemExit) as exc:
        score(*args, **kwargs)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def vqa_files(tmp_path: Path, with_answers: bool = True, images: bool = False):
    coco = tmp_path / "coco"
    for i in (1, 2, 3) if images else ():
        image(coco / f"COCO_val2014_{i:012d}.jpg")
    questions = write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "data_subtype": "val2014", "questions": [
            {"image_id": 1, "question": "What color is the bus?", "question_id": 1000},
            {"image_id": 2, "question": "What color is the car?", "question_id": 2000},
            {"image_id": 3, "question": "Is the light on?", "question_id": 3000},
        ]})

    def ann(qid, answers, qtype, atype):
        return {"question_id": qid, "image_id": qid // 1000, "question_type": qtype, "answer_type": atype,
                "multiple_choice_answer": answers[0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)]}

    annotations = write(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": [
        ann(1000, ["red"] * 10, "what color", "other"),
        ann(2000, ["blue"] * 7 + ["navy"] * 3, "what color", "other"),
        ann(3000, ["yes"] * 2 + ["no"] * 8, "is the", "yes/no"),
    ]}) if with_answers else None
    return questions, annotations, coco


def test_vqav2_scores_like_vqaeval(tmp_path):
    questions, annotations, coco = vqa_files(tmp_path)
    assert not coco.exists()  # scoring a results file reads no image
    results = write(tmp_path / "results.json", [{"question_id": 1000, "answer": "Red"},
                                                {"question_id": 2000, "answer": "Blue."},
                                                {"question_id": 3000, "answer": "yes"}])
    m = score("vqav2", tmp_path, questions, results, annotations)
    # 1000: "red" as submitted (EvalAI processing lower-cases) vs ten "red": 1.0.
    # 2000: "blue" vs 7 blue + 3 navy: every leave-one-out subset keeps >= 6 blue: 1.0.
    # 3000: "yes" vs 2 yes + 8 no: a yes left out leaves 1 yes (1/3), a no left out leaves 2 (2/3):
    #       (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    assert m["overall"] == round(100 * (1 + 1 + 0.6) / 3, 2) == 86.67
    assert m["perQuestionType"] == {"is the": 60.0, "what color": 100.0}
    assert m["perAnswerType"] == {"other": 100.0, "yes/no": 60.0}
    assert m["count"] == 3 and m["skipped"] == {} and m["coverage"]["complete"]
    assert (tmp_path / "out" / "report.md").read_text().count("|") > 10 and (tmp_path / "out" / "per_type.png").is_file()


def test_vqav2_test_split_writes_the_server_file_as_given(tmp_path, capsys):
    questions, _, _ = vqa_files(tmp_path, with_answers=False)
    given = [{"question_id": 1000, "answer": "2 dogs"}, {"question_id": 2000, "answer": "it 's red"},
             {"question_id": 3000, "answer": "yes"}]
    results = write(tmp_path / "results.json", given)
    m = score("vqav2", tmp_path, questions, results)
    assert json.loads((tmp_path / "out" / "vqav2_results.json").read_text()) == given
    assert m["submission"]["file"] == "vqav2_results.json" and "eval.ai" in m["submission"]["upload"]
    assert m["submission"]["answers"] == 3 and "overall" not in m
    assert "vqav2_results.json with 3 answers" in capsys.readouterr().out


def test_a_results_file_must_cover_the_question_set(tmp_path, capsys):
    """Like the official VQA API (loadRes asserts the answered ids equal the question ids): a partial
    file, an empty one or one answering unknown ids is refused with the numbers, and scored only with
    --allow-partial, which records the coverage everywhere the score is written."""
    questions, annotations, _ = vqa_files(tmp_path)
    partial = write(tmp_path / "partial.json", [{"question_id": 1000, "answer": "red"},
                                                {"question_id": 2000, "answer": "x"}])
    empty = write(tmp_path / "empty.json", [])
    unknown = write(tmp_path / "unknown.json", [{"question_id": q, "answer": "red"} for q in (1000, 2000, 3000, 4242)])
    assert "answers 2 of 3 questions" in refused(capsys, "vqav2", tmp_path, questions, partial, annotations)
    assert "answers 0 of 3 questions" in refused(capsys, "vqav2", tmp_path, questions, empty, annotations)
    err = refused(capsys, "vqav2", tmp_path, questions, unknown, annotations)
    assert "answers 3 of 3 questions" in err and "1 answer(s) to question ids not in the benchmark (e.g. 4242)" in err
    assert not (tmp_path / "out").exists()  # nothing written for a refused file

    m = score("vqav2", tmp_path, questions, partial, annotations, extra=["--allow-partial"])
    assert m["overall"] == 50.0 and m["count"] == 2  # red: 1.0, x: 0.0 -- over the 2 answered
    assert m["coverage"] == {"questions": 3, "answered": 2, "in_benchmark": 3, "skipped": 0, "unknown": 0,
                             "unknown_example": None, "not_asked": 0, "limit": None, "complete": False}
    assert "PARTIAL: answers 2 of 3 questions" in capsys.readouterr().out
    assert "**partial**" in (tmp_path / "out" / "report.md").read_text()
    m = score("vqav2", tmp_path, questions, unknown, annotations, extra=["--allow-partial"], output="u")
    assert m["count"] == 3 and m["coverage"]["unknown"] == 1  # the unknown id is dropped, and said

    # A test split: the server file is written only with --allow-partial, and says how many answers it holds.
    test_questions, _, _ = vqa_files(tmp_path / "test", with_answers=False)
    assert "answers 2 of 3" in refused(capsys, "vqav2", tmp_path, test_questions, partial, output="t")
    m = score("vqav2", tmp_path, test_questions, partial, output="t", extra=["--allow-partial"])
    assert m["submission"]["answers"] == 2 and len(json.loads((tmp_path / "t" / "vqav2_results.json").read_text())) == 2
    assert "with 2 answers" in capsys.readouterr().out


def test_bad_official_files_are_counted_or_one_line(tmp_path, capsys):
    questions, annotations, _ = vqa_files(tmp_path)
    data = json.loads(annotations.read_text())
    data["annotations"].append(dict(data["annotations"][0], question_id=9999))  # for no question: counted
    write(annotations, data)
    results = write(tmp_path / "results.json", [{"question_id": q, "answer": "red"} for q in (1000, 2000, 3000)])
    m = score("vqav2", tmp_path, questions, results, annotations)
    assert m["skipped"] == {"annotation_for_unknown_question": 1} and m["coverage"]["complete"]
    duplicate = write(tmp_path / "dup.json", [{"question_id": 1000, "answer": "a"}, {"question_id": 1000, "answer": "b"}])
    for bad, message in ((duplicate, "question_id 1000 appears twice"), (annotations, "expected a JSON list")):
        assert message in refused(capsys, "vqav2", tmp_path, questions, bad, annotations, output="bad")
    # the annotations file given as --questions
    assert "not a VQA questions file" in refused(capsys, "vqav2", tmp_path, annotations, results, annotations, output="bad")
    assert not (tmp_path / "bad").exists()  # never a half-written metrics.json

    # A string image_id (no COCO file name can be made) and a string question id in a test split (no
    # EvalAI entry can be written): counted skips, so the run finishes and says so.
    q = json.loads(questions.read_text())
    q["questions"][1]["image_id"] = "COCO_val2014_000000000002.jpg"
    q["questions"][2]["question_id"] = "3000"
    strange = write(tmp_path / "strange_questions.json", q)
    two = write(tmp_path / "two.json", [{"question_id": 1000, "answer": "red"}])
    m = score("vqav2", tmp_path, strange, two, output="strange", extra=["--allow-partial"])
    assert m["skipped"] == {"non_integer_id": 2} and m["coverage"]["skipped"] == 2
    assert json.loads((tmp_path / "strange" / "vqav2_results.json").read_text()) == [{"question_id": 1000, "answer": "red"}]
    err = refused(capsys, "vqav2", tmp_path, strange, two, output="strange2")
    assert "2 of the benchmark's questions were skipped while reading" in err

    # --limit -1 is an argument error, not "holds no records".
    for limit in ("-1", "0"):
        assert "--limit" in refused(capsys, "vqav2", tmp_path, questions, results, annotations, output="lim",
                                    extra=["--limit", limit])
    m = score("vqav2", tmp_path, questions, results, annotations, output="lim", extra=["--limit", "2"])
    assert m["count"] == 2 and m["coverage"]["limit"] == 2 and m["coverage"]["complete"]


def test_vizwiz_is_scored_by_the_vizwiz_api(tmp_path):
    """The VizWiz API processes the prediction always (no VQA gate), never the annotated answers, and
    has its own contraction table (U+2019 apostrophes, with a few ASCII ones)."""

    def q(n, answers, atype):
        return {"image": f"VizWiz_val_{n:08d}.jpg", "question": "What is this?", "answer_type": atype,
                "answerable": int(atype != "unanswerable"),
                "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}

    val = write(tmp_path / "val.json", [
        q(0, ["unanswerable"] * 10, "unanswerable"), q(1, ["red"] * 10, "other"), q(2, ["Red"] * 10, "other"),
        q(3, ["don't"] * 10, "other"), q(4, ["can't"] * 10, "other"), q(5, ["yes"] * 3 + ["no"] * 7, "yes/no")])
    predictions = ["Unanswerable", "Red.", "Red", "dont", "cant", "yes"]
    results = write(tmp_path / "results.json", [{"image": f"VizWiz_val_{n:08d}.jpg", "answer": a}
                                                for n, a in enumerate(predictions)])
    m = score("vizwiz", tmp_path, val, results)
    # 0: "unanswerable" vs ten: 1.0.  1: "Red." -> "red" vs ten "red": 1.0 (the VQA gate would leave
    # "Red." unprocessed against identical answers: 0).  2: "red" vs ten "Red", never processed: 0.
    # 3: "dont" -> "don’t" (U+2019) vs "don't": 0.  4: "cant" -> "can't" (ASCII in the table): 1.0.
    # 5: yes vs 3 yes + 7 no: a yes left out leaves 2 (2/3), a no left out leaves 3 (1): 0.9.
    assert vqa_accuracy("Red.", ["red"] * 10) == 0.0 and vizwiz_accuracy("Red.", ["red"] * 10) == 1.0
    assert vizwiz_accuracy("dont", ["don\u2019t"] * 10) == 1.0
    assert m["overall"] == round(100 * (1 + 1 + 0 + 0 + 1 + 0.9) / 6, 2) == 65.0
    assert m["perAnswerType"] == {"other": 50.0, "unanswerable": 100.0, "yes/no": 90.0}
    assert BENCHMARKS["vizwiz"].prompt_suffix.startswith("When the provided information is insufficient")
    # A model's reply is written into the results file through EvalAI's processor (LLaVA's conversion).
    assert BENCHMARKS["vizwiz"]().results_answer("Two dogs.") == "2 dogs"


def tie_questions(n_right: int, n: int) -> tuple[list[str], list[str]]:
    """``n`` single-answer questions of which the first ``n_right`` are answered right."""
    return ["right"] * n, ["right"] * n_right + ["wrong"] * (n - n_right)


def test_textvqa_normalises_both_sides_and_rounds_the_mean(tmp_path):
    data = write(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"question_id": 1, "question": "What brand?", "image_id": "abc", "answers": ["coca cola"] * 3 + ["coke"] * 7},
        {"question_id": 2, "question": "What word?", "image_id": "def", "answers": ["Coke"] * 10},
        {"question_id": 3, "question": "What?", "image_id": "ghi", "answers": ["a", "b"]},  # m4c asserts 10
    ]})
    results = write(tmp_path / "results.json", [{"question_id": 1, "answer": "Coca Cola"},
                                                {"question_id": 2, "answer": "coke."}])
    m = score("textvqa", tmp_path, data, results, extra=["--allow-partial"])  # question 3 is skipped
    # 1: "coca cola" vs 3 coca cola + 7 coke: a coca cola left out leaves 2 (2/3), a coke left out 3 (1):
    #    (3*2/3 + 7)/10 = 0.9.  2: "coke" vs ten "coke" after EvalAI processing on both sides: 1.0
    #    (the official VQA gate would leave "coke." vs ten identical "Coke" unnormalised: 0).
    assert m["overall"] == 95.0 and m["skipped"] == {"not_ten_answers": 1}

    # LLaVA's eval_textvqa.py prints '{:.2f}'.format(100. * mean): 23 right of 160 is 14.37, where
    # vqaEval's round(100 * sum / n, 2) gives 14.38 (100 * (23 / 160) = 14.374999999999998).
    truth, predicted = tie_questions(23, 160)
    data = write(tmp_path / "tie.json", {"data": [
        {"question_id": n, "question": "q", "image_id": str(n), "answers": [t] * 10} for n, t in enumerate(truth)]})
    results = write(tmp_path / "tie_results.json", [{"question_id": n, "answer": a} for n, a in enumerate(predicted)])
    assert score("textvqa", tmp_path, data, results, output="tie")["overall"] == 14.37
    assert "{:.2f}".format(100. * (23 / 160)) == "14.37" and round(100 * 23 / 160, 2) == 14.38


def test_gqa_compares_the_prediction_exactly(tmp_path):
    def q(answer, structural, semantic, balanced=True):
        return {"imageId": "n1", "question": "?", "answer": answer, "isBalanced": balanced,
                "types": {"structural": structural, "semantic": semantic, "detailed": "x"}}

    questions = write(tmp_path / "testdev_balanced_questions.json", {
        "201": q("yes", "verify", "obj"), "202": q("table", "query", "rel"), "203": q("yes", "logic", "attr"),
        "204": q("no", "verify", "obj", balanced=False)})  # not balanced: eval.py neither needs nor scores it
    results = write(tmp_path / "results.json", [{"questionId": "201", "prediction": "Yes."},
                                                {"questionId": "202", "prediction": "table"},
                                                {"questionId": "203", "prediction": " yes"},
                                                {"questionId": "204", "prediction": "no"}])  # ignored, as eval.py does
    m = score("gqa", tmp_path, questions, results)
    # eval.py: correct = (predicted == gold): "Yes." and " yes" are wrong, "table" right: 1 of 3.
    assert m["overall"] == 33.33 and m["binary"] == 0.0 and m["open"] == 100.0
    assert m["perStructuralType"] == {"logic": 0.0, "query": 100.0, "verify": 0.0}
    assert m["perSemanticType"] == {"attr": 0.0, "obj": 0.0, "rel": 100.0}
    assert m["skipped"] == {"not_balanced": 1} and m["coverage"]["complete"] and m["coverage"]["unknown"] == 0
    # The clean-up belongs to writing the project's own results file: LLaVA strips the reply
    # (model_vqa_loader.py), then rstrip('.') and lower() (convert_gqa_for_eval.py) -- which keeps a
    # space before a final period.
    assert [gqa_results_answer(t) for t in (" Yes. ", "The table..", "Yes .")] == ["yes", "the table", "yes "]

    # eval.py prints "{:.2f}" of avg(scores) * 100: 23 right of 160 is 14.37 (not vqaEval's 14.38).
    truth, predicted = tie_questions(23, 160)
    data = write(tmp_path / "tie.json", {str(n): q(t, "query", "rel") for n, t in enumerate(truth)})
    results = write(tmp_path / "tie_results.json", [{"questionId": str(n), "prediction": a} for n, a in enumerate(predicted)])
    m = score("gqa", tmp_path, data, results, output="tie")
    assert m["overall"] == 14.37 == float("{:.2f}".format(float(23) / 160 * 100))


def test_pope_f1_from_unrounded_precision_and_recall(tmp_path, capsys):
    def lines(labels):
        return "".join(json.dumps({"question_id": n + 1, "image": "COCO_val2014_000000000001.jpg",
                                   "text": "Is there a dog in the image?", "label": label}) + "\n"
                       for n, label in enumerate(labels))

    # random: TP 3, FP 2, TN 1, FN 6 (labels yes x9, no x3).
    labels = ["yes"] * 9 + ["no"] * 3
    replies = ["Yes, there is a dog."] * 3 + ["No."] * 6 + ["yes", "Yes. No dog", "There is no dog."]
    random_split = write(tmp_path / "coco_pope_random.json", lines(labels))
    popular = write(tmp_path / "coco_pope_popular.json", lines(["yes", "no", "no"]))
    answers = [("random", n + 1, t) for n, t in enumerate(replies)] + \
        [("popular", 1, "yes"), ("popular", 2, "no"), ("popular", 3, "No, not at all")]
    results = write(tmp_path / "answers.jsonl", "".join(
        json.dumps({"question_id": qid, "text": text, "split": split}) + "\n" for split, qid, text in answers))
    m = score("pope", tmp_path, [random_split, popular], results)
    row = m["splits"]["random"]
    assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (3, 2, 1, 6)
    # eval_pope.py: precision = 3/5, recall = 3/9, f1 = 2*p*r/(p+r) on the unrounded values = 3/7
    # (0.4286; from precision and recall rounded to 60.00 and 33.33 it would be 42.85).
    precision, recall = 3 / 5, 3 / 9
    assert row["precision"] == precision and row["recall"] == recall and row["accuracy"] == 4 / 12
    assert row["f1"] == 2 * precision * recall / (precision + recall) and round(row["f1"], 4) == 0.4286
    assert row["yes_ratio"] == 5 / 12
    # The summary is eval_pope.py's last line: '%.3f' of f1, acc, precision, recall, yes_ratio.
    assert "random: f1, acc, precision, recall, yes_ratio = 0.429, 0.333, 0.600, 0.333, 0.417" in capsys.readouterr().out
    # popular: TP, TN, TN: precision 1/1, recall 1/1, one "yes" in three answers.
    assert m["splits"]["popular"]["f1"] == 1.0 and m["splits"]["popular"]["yes_ratio"] == 1 / 3
    assert [pope_answer(t) for t in ("Yes.", "No, it is not.", "I do not see one", "There's a cat. No dog", "NO")] == \
        ["yes", "no", "no", "yes", "yes"]
    # No "yes" answer at all: eval_pope.py divides by zero; the value is undefined, not 0.
    never = write(tmp_path / "never.jsonl", "".join(json.dumps({"question_id": n + 1, "text": "no"}) + "\n" for n in range(3)))
    only = score("pope", tmp_path, popular, never, output="never")["splits"]["popular"]
    assert only["precision"] is None and only["f1"] is None and only["recall"] == 0.0
    # A label other than exactly yes/no (eval_pope.py would count "No" as yes) is refused.
    odd = write(tmp_path / "coco_pope_odd.json", lines(["yes", "No"]))
    assert "label must be" in refused(capsys, "pope", tmp_path, odd, never, output="odd")


def test_mme_totals_add_unrounded_subtask_scores(tmp_path, capsys):
    root = tmp_path / "MME_Benchmark_release_version"
    results = tmp_path / "results"
    # existence: 3 images side by side with their question files; count: images/ + questions_answers_YN/.
    for n in range(3):
        image(root / "existence" / f"{n:012d}.jpg")
        write(root / "existence" / f"{n:012d}.txt", "Is there a dog?\tYes\nIs there a cat?\tNo\n")
        image(root / "count" / "images" / f"{n}.jpg")
        write(root / "count" / "questions_answers_YN" / f"{n}.txt", "Are there two?\tYes\nAre there three?\tNo\n")
    image(root / "code_reasoning" / "0001.png")
    write(root / "code_reasoning" / "0001.txt", "Does it print 3?\tYes\nDoes it print 4?\tNo\n")
    # existence: 1 of 6 right, no image with both right.  count: 2 of 6 right, both on image 0.
    existence = [("Yes", "Yes"), ("maybe", "Yes"), ("No", "Yes")]
    count = [("yes", "no"), ("No", "yes"), ("nope", "Yes")]
    write(results / "existence.txt", "".join(f"{n:012d}.jpg\tIs there a dog?\tYes\t{a}\n{n:012d}.jpg\tIs there a cat?\tNo\t{b}\n"
                                             for n, (a, b) in enumerate(existence)))
    write(results / "count.txt", "".join(f"{n}.jpg\tAre there two?\tYes\t{a}\n{n}.jpg\tAre there three?\tNo\t{b}\n"
                                         for n, (a, b) in enumerate(count)))
    write(results / "code_reasoning.txt", "0001.png\tDoes it print 3?\tYes\tYes, 3.\n0001.png\tDoes it print 4?\tNo\tNot 4\n")
    m = score("mme", tmp_path, root, results)
    # calculation.py: task_score = 0 + acc * 100 + acc_plus * 100 with acc = right / total, unrounded;
    # totals add them in its task order (existence, count, ...).
    existence_score = 0 + (1 / 6) * 100 + (0 / 3) * 100
    count_score = 0 + (2 / 6) * 100 + (1 / 3) * 100
    assert m["subtasks"]["existence"]["score"] == existence_score
    assert m["subtasks"]["count"] == {"acc": (2 / 6) * 100, "acc_plus": (1 / 3) * 100, "score": count_score, "count": 6}
    assert m["perception"] == 0 + existence_score + count_score == 83.33333333333331
    # Rounding each subtask first (16.67 + 66.67) would give 83.34.
    assert round(round(existence_score, 2) + round(count_score, 2), 2) == 83.34
    assert m["cognition"] == 200.0  # "Not 4": "not " contains "no" -> no (the official parse), right
    assert "perception total score: 83.33333333333331" in capsys.readouterr().out
    assert [mme_answer(t) for t in ("YES", "No.", "Nothing", "I think yes", "maybe")] == ["yes", "no", "no", "other", "other"]


def test_every_registered_benchmark_is_tested():
    """Here (the first seven) or in a tests/test_bench_*.py of its own, by its registered name."""
    here = {"vqav2", "okvqa", "vizwiz", "textvqa", "gqa", "pope", "mme"}
    assert here <= set(BENCHMARKS)
    others = "".join(p.read_text() for p in Path(__file__).parent.glob("test_bench_*.py"))
    untested = [name for name in set(BENCHMARKS) - here if f'"{name}"' not in others]
    assert not untested, f"no test names these benchmarks: {untested}"
    with pytest.raises(BenchmarkError):
        BENCHMARKS["mme"]().read([Path("/nonexistent")], None, None)


# -- end to end with a model -------------------------------------------------------------------------


def test_a_checkpoint_answers_a_vqav2_set_resumably(trained, tmp_path, monkeypatch, capsys):
    coco = tmp_path / "coco"
    for i, source in ((1, trained.red), (2, trained.blue), (3, trained.red)):
        coco.mkdir(exist_ok=True)
        shutil.copy(source, coco / f"COCO_val2014_{i:012d}.jpg")
    questions = write(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [
        {"image_id": i, "question": "What colour is it?", "question_id": i * 10} for i in (1, 2, 3)]})
    annotations = write(tmp_path / "a.json", {"annotations": [
        {"question_id": i * 10, "question_type": "what color", "answer_type": "other",
         "answers": [{"answer": colour} for _ in range(10)]} for i, colour in ((1, "red"), (2, "blue"), (3, "red"))]})
    out = tmp_path / "eval"
    args = ["--checkpoint", str(trained.checkpoint), "--benchmark", "vqav2", "--questions", str(questions),
            "--annotations", str(annotations), "--images", str(coco), "--output", str(out), "--max-new-tokens", "8",
            "--prompt-suffix", ""]
    assert evaluate.main(args + ["--limit", "2"]) == 0  # a partial run, as if interrupted
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3  # what produced the answers, then two answers
    produced_by = json.loads(lines[0])["produced_by"]
    assert produced_by["benchmark"] == "vqav2" and produced_by["prompt_suffix"] == ""
    assert produced_by["model"]["fingerprint"].startswith("sha256:") and produced_by["generation"]["max_new_tokens"] == 8
    assert evaluate.main(args) == 0  # resumes: asks only the third question
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()[1:]]
    assert [line["qid"] for line in lines] == ["10", "20", "30"]
    assert [line["answer"] for line in lines] == ["red", "blue", "red"]  # the checkpoint really answers
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"] == 100.0 and metrics["count"] == 3 and metrics["produced_by"] == produced_by

    from inference.predictor import Predictor

    def never(*args, **kwargs):
        raise AssertionError("a finished run asked the model again")

    monkeypatch.setattr(Predictor, "answer", never)
    before = (out / "predictions.jsonl").read_bytes()
    assert evaluate.main(args) == 0 and (out / "predictions.jsonl").read_bytes() == before
    # The same checkpoint copied elsewhere is the same model: it resumes.
    copy = tmp_path / "copied-checkpoint"
    shutil.copytree(trained.checkpoint, copy)
    assert evaluate.main([*args[:1], str(copy), *args[2:]]) == 0
    capsys.readouterr()

    # Anything that changes the answers refuses to reuse them, naming what differs.
    other = tmp_path / "other-checkpoint"
    shutil.copytree(trained.checkpoint, other)
    with open(other / "model.safetensors", "r+b") as f:  # one weight changed: another model
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    changes = [([*args[:1], str(other), *args[2:]], "model.fingerprint"),
               (args + ["--max-new-tokens", "9"], "generation.max_new_tokens: 8 -> 9"),
               (args[:-1] + ["Answer briefly."], 'prompt_suffix: "" -> "Answer briefly."'),
               ([a if a != "vqav2" else "okvqa" for a in args], 'benchmark: "vqav2" -> "okvqa"')]
    for changed, message in changes:
        with pytest.raises(SystemExit) as exc:
            evaluate.main(changed)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds answers from another run" in err and message in err, err
    assert (out / "predictions.jsonl").read_bytes() == before  # nothing appended, nothing lost

    # --overwrite starts again with the other model (which answers the same colours).
    monkeypatch.undo()
    assert evaluate.main([*args[:1], str(other), *args[2:], "--overwrite"]) == 0
    header = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])["produced_by"]
    assert header["model"]["fingerprint"] != produced_by["model"]["fingerprint"]
    assert header["model"]["checkpoint"] == str(other.resolve())


def test_model_replies_are_written_as_the_results_file_holds_them(trained, tmp_path):
    """GQA through a checkpoint: each reply goes through LLaVA's clean-up into gqa_results.json
    (test split: no answers), and a model run with questions it could not ask is partial."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(trained.red, images / "n1.jpg")
    shutil.copy(trained.broken, images / "n2.jpg")
    questions = write(tmp_path / "testdev_questions.json", {
        "1": {"imageId": "n1", "question": "What colour is it?", "isBalanced": True},
        "2": {"imageId": "n2", "question": "What colour is it?", "isBalanced": True}})
    out = tmp_path / "gqa"
    args = ["--checkpoint", str(trained.checkpoint), "--benchmark", "gqa", "--questions", str(questions),
            "--images", str(images), "--output", str(out), "--max-new-tokens", "8", "--prompt-suffix", ""]
    with pytest.raises(SystemExit):  # n2.jpg is not an image: 1 of 2 answered, refused without --allow-partial
        evaluate.main(args)
    assert evaluate.main(args + ["--allow-partial"]) == 0
    reply = json.loads((out / "predictions.jsonl").read_text().splitlines()[1])["answer"]
    assert json.loads((out / "gqa_results.json").read_text()) == [{"questionId": "1", "prediction": gqa_results_answer(reply)}]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["coverage"]["not_asked"] == 1 and metrics["errors"] == 1


def test_a_server_failing_on_questions_leaves_them_unanswered_and_asked_again(trained, tmp_path, capsys):
    """evaluate.py --server: a question the server fails on (here: a reply without choices) is an
    error line in predictions.jsonl, never an empty answer scored as wrong; the run is partial and
    refused without --allow-partial; when the server recovers, the same command asks just those."""
    from tests.fake_openai import FakeOpenAI

    questions, annotations, coco = vqa_files(tmp_path, images=True)
    server = FakeOpenAI("red", misbehave="no_choices")
    out = tmp_path / "served"
    args = ["--server", server.url, "--benchmark", "vqav2", "--questions", str(questions), "--annotations",
            str(annotations), "--images", str(coco), "--output", str(out)]
    try:
        with pytest.raises(SystemExit):
            evaluate.main(args)
        assert "answers 0 of 3 questions; 3 could not be asked" in capsys.readouterr().err
        lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()[1:]]
        assert len(lines) == 3 and all("answer" not in line and "held no answer" in line["error"] for line in lines)
        server.misbehave = None
        assert evaluate.main(args) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["count"] == 3 and metrics["coverage"]["complete"] and len(server.requests) == 6
    finally:
        server.close()

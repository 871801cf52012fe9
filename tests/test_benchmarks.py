"""evaluation/benchmarks: each benchmark read from small files in its official format and scored
by its official definition; every expected number is computed by hand in the comments.

Formats, from the benchmarks' own documentation: VQAv2/OK-VQA (visualqa.org "Input Questions
Format" / "Annotation Format"), VizWiz (vizwiz.org VQA "Dataset" section), TextVQA (textvqa.org
"Dataset" JSON description), GQA (the "Questions" section of the GQA download page), POPE
(RUCAIBox/POPE output/coco/*.json lines), MME (the released MME_Benchmark_release_version layout
and eval_tool/calculation.py). The end-to-end tests answer with the tiny colour checkpoint.
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
from evaluation.benchmarks.mme import mme_answer
from evaluation.benchmarks.pope import pope_answer


def image(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def score(name, tmp_path, questions, predictions, annotations=None, images=None, output="out"):
    """evaluate.py --benchmark NAME --predictions ...: the metrics.json it writes."""
    args = ["--benchmark", name, "--predictions", str(predictions), "--output", str(tmp_path / output)]
    for q in questions if isinstance(questions, list) else [questions]:
        args += ["--questions", str(q)]
    if annotations:
        args += ["--annotations", str(annotations)]
    if images:
        args += ["--images", str(images)]
    assert evaluate.main(args) == 0
    return json.loads((tmp_path / output / "metrics.json").read_text())


def vqa_files(tmp_path: Path, with_answers: bool = True):
    coco = tmp_path / "coco"
    for i in (1, 2, 3):
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
    results = write(tmp_path / "results.json", [{"question_id": 1000, "answer": "Red"},
                                                {"question_id": 2000, "answer": "Blue."},
                                                {"question_id": 3000, "answer": "yes"}])
    m = score("vqav2", tmp_path, questions, results, annotations, coco)
    # 1000: "red" as submitted (EvalAI processing lower-cases) vs ten "red": 1.0.
    # 2000: "blue" vs 7 blue + 3 navy: every leave-one-out subset keeps >= 6 blue: 1.0.
    # 3000: "yes" vs 2 yes + 8 no: a yes left out leaves 1 yes (1/3), a no left out leaves 2 (2/3):
    #       (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    assert m["overall"] == round(100 * (1 + 1 + 0.6) / 3, 2) == 86.67
    assert m["perQuestionType"] == {"is the": 60.0, "what color": 100.0}
    assert m["perAnswerType"] == {"other": 100.0, "yes/no": 60.0}
    assert m["count"] == 3 and m["skipped"] == {}
    assert (tmp_path / "out" / "report.md").read_text().count("|") > 10 and (tmp_path / "out" / "per_type.png").is_file()


def test_vqav2_test_split_writes_the_server_file(tmp_path):
    questions, _, coco = vqa_files(tmp_path, with_answers=False)
    results = write(tmp_path / "results.json", [{"question_id": 1000, "answer": "Two dogs."},
                                                {"question_id": 2000, "answer": "It's red"},
                                                {"question_id": 3000, "answer": "yes"}])
    m = score("vqav2", tmp_path, questions, results, None, coco)
    submitted = json.loads((tmp_path / "out" / "vqav2_results.json").read_text())
    assert submitted == [{"question_id": 1000, "answer": "2 dogs"}, {"question_id": 2000, "answer": "it 's red"},
                         {"question_id": 3000, "answer": "yes"}]
    assert m["submission"]["file"] == "vqav2_results.json" and "eval.ai" in m["submission"]["upload"]
    assert "overall" not in m


def test_bad_official_files_are_counted_or_one_line(tmp_path, capsys):
    questions, annotations, coco = vqa_files(tmp_path)
    (coco / "COCO_val2014_000000000003.jpg").unlink()  # a question whose image is missing: counted
    data = json.loads(annotations.read_text())
    data["annotations"].append(dict(data["annotations"][0], question_id=9999))  # for no question: counted
    write(annotations, data)
    results = write(tmp_path / "results.json", [{"question_id": 1000, "answer": "red"}, {"question_id": 2000, "answer": "x"}])
    m = score("vqav2", tmp_path, questions, results, annotations, coco)
    assert m["skipped"] == {"missing_image": 1, "annotation_for_unknown_question": 1}
    assert m["count"] == 2 and m["overall"] == 50.0
    duplicate = write(tmp_path / "dup.json", [{"question_id": 1000, "answer": "a"}, {"question_id": 1000, "answer": "b"}])
    for bad, message in ((duplicate, "question_id 1000 appears twice"), (annotations, "expected a JSON list")):
        with pytest.raises(SystemExit) as exc:
            score("vqav2", tmp_path, questions, bad, annotations, coco, output="bad")
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    with pytest.raises(SystemExit):  # the annotations file given as --questions
        score("vqav2", tmp_path, annotations, results, annotations, coco, output="bad")
    assert "not a VQA questions file" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # never a half-written metrics.json


def test_vizwiz_unanswerable_and_answer_types(tmp_path):
    images = tmp_path / "val"
    for n in range(3):
        image(images / f"VizWiz_val_{n:08d}.jpg")

    def q(n, answers, atype, answerable):
        return {"image": f"VizWiz_val_{n:08d}.jpg", "question": "What is this?", "answer_type": atype,
                "answerable": answerable, "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}

    val = write(tmp_path / "val.json", [q(0, ["unanswerable"] * 10, "unanswerable", 0),
                                        q(1, ["red"] * 6 + ["dark red"] * 4, "other", 1),
                                        q(2, ["yes"] * 3 + ["no"] * 7, "yes/no", 1)])
    results = write(tmp_path / "results.json", [{"image": "VizWiz_val_00000000.jpg", "answer": "Unanswerable"},
                                                {"image": "VizWiz_val_00000001.jpg", "answer": "red"},
                                                {"image": "VizWiz_val_00000002.jpg", "answer": "yes"}])
    m = score("vizwiz", tmp_path, val, results, images=images)
    # 0: "unanswerable" (as submitted) vs ten "unanswerable": 1.0.  1: red vs 6 red + 4 dark red: 1.0.
    # 2: yes vs 3 yes + 7 no: a yes left out leaves 2 (2/3), a no left out leaves 3 (1): (3*2/3 + 7)/10 = 0.9.
    assert m["overall"] == round(100 * 2.9 / 3, 2) == 96.67
    assert m["perAnswerType"] == {"other": 100.0, "unanswerable": 100.0, "yes/no": 90.0}
    assert m["answerability"] == {"answerable": 95.0, "unanswerable": 100.0}
    assert BENCHMARKS["vizwiz"].prompt_suffix.startswith("When the provided information is insufficient")


def test_textvqa_normalises_both_sides_always(tmp_path):
    images = tmp_path / "train_images"
    image(images / "abc.jpg")
    image(images / "def.jpg")
    data = write(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"question_id": 1, "question": "What brand?", "image_id": "abc", "answers": ["coca cola"] * 3 + ["coke"] * 7},
        {"question_id": 2, "question": "What word?", "image_id": "def", "answers": ["Coke"] * 10},
    ]})
    results = write(tmp_path / "results.json", [{"question_id": 1, "answer": "Coca Cola"},
                                                {"question_id": 2, "answer": "coke."}])
    m = score("textvqa", tmp_path, data, results, images=images)
    # 1: "coca cola" vs 3 coca cola + 7 coke: a coca cola left out leaves 2 (2/3), a coke left out 3 (1):
    #    (3*2/3 + 7)/10 = 0.9.  2: "coke" vs ten "coke" after EvalAI processing on both sides: 1.0
    #    (the official VQA gate would leave "coke." vs ten identical "Coke" unnormalised: 0).
    assert m["overall"] == 95.0


def test_gqa_exact_match_per_type(tmp_path):
    images = tmp_path / "images"
    image(images / "n1.jpg")
    questions = write(tmp_path / "testdev_balanced_questions.json", {
        "201": {"imageId": "n1", "question": "Is there a cat?", "answer": "yes",
                "types": {"structural": "verify", "semantic": "obj", "detailed": "existC"}},
        "202": {"imageId": "n1", "question": "What is on the floor?", "answer": "table",
                "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
    })
    results = write(tmp_path / "results.json", [{"questionId": "201", "prediction": "Yes."},
                                                {"questionId": "202", "prediction": "the table"}])
    m = score("gqa", tmp_path, questions, results, images=images)
    assert m["overall"] == 50.0  # "Yes." -> "yes" is right; "the table" is not "table" (exact match)
    assert m["perStructuralType"] == {"query": 0.0, "verify": 100.0}
    assert m["perSemanticType"] == {"obj": 100.0, "rel": 0.0}


def test_pope_per_split(tmp_path):
    images = tmp_path / "val2014"
    image(images / "COCO_val2014_000000000001.jpg")
    lines = lambda labels: "\n".join(json.dumps({"question_id": n + 1, "image": "COCO_val2014_000000000001.jpg",  # noqa: E731
                                                 "text": "Is there a dog in the image?", "label": label})
                                     for n, label in enumerate(labels)) + "\n"
    random_split = write(tmp_path / "coco_pope_random.json", lines(["yes", "yes", "no", "no"]))
    popular = write(tmp_path / "coco_pope_popular.json", lines(["yes", "no", "no"]))
    answers = [("random", 1, "Yes, there is a dog."), ("random", 2, "No."), ("random", 3, "There is no dog."),
               ("random", 4, "yes"), ("popular", 1, "yes"), ("popular", 2, "no"), ("popular", 3, "No, not at all")]
    results = write(tmp_path / "answers.jsonl", "".join(
        json.dumps({"question_id": qid, "text": text, "split": split}) + "\n" for split, qid, text in answers))
    m = score("pope", tmp_path, [random_split, popular], results, images=images)
    # random: yes/yes -> TP, yes/"No." -> FN, no/"There is no dog" -> TN, no/"yes" -> FP.
    assert {k: m["splits"]["random"][k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")} == \
        {"accuracy": 50.0, "precision": 50.0, "recall": 50.0, "f1": 50.0, "yes_ratio": 50.0}
    # popular: TP, TN, TN: precision 1/1, recall 1/1, one "yes" in three answers.
    assert m["splits"]["popular"]["accuracy"] == 100.0 and m["splits"]["popular"]["f1"] == 100.0
    assert m["splits"]["popular"]["yes_ratio"] == 33.33
    assert [pope_answer(t) for t in ("Yes.", "No, it is not.", "I do not see one", "There's a cat. No dog")] == \
        ["yes", "no", "no", "yes"]


def test_mme_scores_acc_and_acc_plus(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    for n in (1, 2):  # existence: images and question files side by side
        image(root / "existence" / f"{n:012d}.jpg")
        write(root / "existence" / f"{n:012d}.txt",
              "Is there a dog in this image? Please answer yes or no.\tYes\nIs there a cat? Please answer yes or no.\tNo\n")
    image(root / "artwork" / "images" / "10002.jpg")  # artwork: images/ + questions_answers_YN/
    write(root / "artwork" / "questions_answers_YN" / "10002.txt", "Is this by Monet?\tYes\nIs this by Dali?\tNo\n")
    image(root / "code_reasoning" / "0001.png")
    write(root / "code_reasoning" / "0001.txt", "Does it print 3?\tYes\nDoes it print 4?\tNo\n")
    results = tmp_path / "results"
    write(results / "existence.txt",
          "000000000001.jpg\tIs there a dog in this image? Please answer yes or no.\tYes\tYes\n"
          "000000000001.jpg\tIs there a cat? Please answer yes or no.\tNo\tNo, there is not.\n"
          "000000000002.jpg\tIs there a dog in this image? Please answer yes or no.\tYes\tyes\n"
          "000000000002.jpg\tIs there a cat? Please answer yes or no.\tNo\tmaybe\n")
    write(results / "artwork.txt", "10002.jpg\tIs this by Monet?\tYes\tYes\n10002.jpg\tIs this by Dali?\tNo\tNo\n")
    write(results / "code_reasoning.txt", "0001.png\tDoes it print 3?\tYes\tYes, 3.\n0001.png\tDoes it print 4?\tNo\tNot 4\n")
    m = score("mme", tmp_path, root, results)
    # existence: 3 of 4 right ("maybe" is "other": wrong) = 75; image 1 both right, image 2 not: acc+ 50.
    assert m["subtasks"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "count": 4}
    assert m["subtasks"]["artwork"]["score"] == 200.0
    # "Not 4": "not " contains "no" -> no (the official parse), right.
    assert m["subtasks"]["code_reasoning"]["score"] == 200.0
    assert m["perception"] == 325.0 and m["cognition"] == 200.0
    assert [mme_answer(t) for t in ("YES", "No.", "Nothing", "I think yes", "maybe")] == ["yes", "no", "no", "other", "other"]


def test_every_registered_benchmark_is_tested_here():
    assert set(BENCHMARKS) == {"vqav2", "okvqa", "vizwiz", "textvqa", "gqa", "pope", "mme"}
    with pytest.raises(BenchmarkError):
        BENCHMARKS["mme"]().read([Path("/nonexistent")], None, None)


# -- end to end with a model -------------------------------------------------------------------------


def test_a_checkpoint_answers_a_vqav2_set_resumably(trained, tmp_path, monkeypatch):
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
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    assert evaluate.main(args) == 0  # resumes: asks only the third question
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["qid"] for line in lines] == ["10", "20", "30"]
    assert [line["answer"] for line in lines] == ["red", "blue", "red"]  # the checkpoint really answers
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"] == 100.0 and metrics["count"] == 3

    from inference.predictor import Predictor

    def never(*args, **kwargs):
        raise AssertionError("a finished run asked the model again")

    monkeypatch.setattr(Predictor, "answer", never)
    before = (out / "predictions.jsonl").read_bytes()
    assert evaluate.main(args) == 0 and (out / "predictions.jsonl").read_bytes() == before

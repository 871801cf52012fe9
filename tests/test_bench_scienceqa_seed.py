"""ScienceQA-IMG and SEED-Bench (image): small files in their released formats, scored as LLaVA's
``llava/eval/eval_science_qa.py`` (+ ScienceQA's ``tools/evaluate_acc.py`` breakdowns) and
``scripts/convert_seed_for_submission.py`` score them; every expected number is computed by hand
from that code's definition (in the comments), on the cases where it surprises.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


from commands import evaluate
from evaluation.benchmarks import BENCHMARKS
from evaluation.benchmarks.base import Files
from evaluation.benchmarks.scienceqa import MULTIPLE_CHOICE, sqa_choice, sqa_letter
from tests.test_benchmarks import refused, score, write


def lines(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# -- ScienceQA ---------------------------------------------------------------------------------------

# pid: (subject, grade, hint, number of choices, answer index, the answers file's text)
SQA = {
    "1": ("natural science", "grade2", "Select the best answer.", 3, 1, "B"),  # right
    "2": ("social science", "grade8", "", 2, 0, "A."),  # FAILED: "A." is neither "A" nor "A. ..."
    "3": ("language science", "grade5", "", 4, 2, "The answer is C."),  # right
    "4": ("natural science", "grade7", "Look.", 3, 0, "A. shiny"),  # right: letter + ". "
    "5": ("natural science", "grade1", "", 5, 4, "E"),  # right: 5 choices
    "7": ("social science", "grade9", "Read.", 3, 2, "E"),  # wrong: E is beyond 3 choices
    "9": ("language science", "grade3", "", 2, 0, "The answer is A"),  # FAILED: the regex's "." needs a character
    "10": ("natural science", "grade11", "Think.", 2, 0, "The answer is A. The answer is A."),  # FAILED: 2 matches
    "11": ("social science", "grade6", "", 4, 2, "C. dog"),  # right
}


def sqa_files(tmp_path: Path, pids=SQA) -> Path:
    base = tmp_path / "scienceqa"
    problems = {pid: {"question": f"Question {pid}?", "choices": [f"choice {k}" for k in range(n)], "answer": answer,
                      "hint": hint, "image": "image.png", "subject": subject, "grade": grade, "split": "test",
                      "lecture": "", "solution": ""}
                for pid, (subject, grade, hint, n, answer, _) in pids.items()}
    problems["6"] = dict(problems["1"], image=None)  # a test question without an image: not ScienceQA-IMG
    problems["8"] = dict(problems["1"], split="train")
    write(base / "problems.json", problems)
    write(base / "pid_splits.json", {"train": ["8"], "val": [], "test": [*pids, "6"], "minival": []})
    return base


def sqa_answers(pids=SQA, prompt=True) -> str:
    rows = [{"question_id": pid, "prompt": f"<image>\nQuestion {pid}?", "text": row[-1]} for pid, row in pids.items()]
    rows.append({"question_id": "6", "prompt": "Question 6?", "text": "A"})  # text-only: ignored
    return lines(rows)


def test_scienceqa_img_accuracy_and_breakdowns(tmp_path, capsys):
    base = sqa_files(tmp_path)
    results = write(tmp_path / "answers.jsonl", sqa_answers())
    m = score("scienceqa", tmp_path, [base / "problems.json", base / "pid_splits.json"], results)
    # Right: 1, 3, 4, 5, 11 -- 5 of the 9 image questions. eval_science_qa.py prints
    # f"{5 / 9 * 100:.2f}" = 55.56 as IMG-Accuracy.
    assert m["overall"] == 55.56 and m["correct"] == 5 and m["count"] == 9
    # evaluate_acc.py, "{:.2f}".format(right / total * 100) per group:
    # natural 1, 4, 5, 10 -> 3/4; social 2, 7, 11 -> 1/3 = 33.33; language 3, 9 -> 1/2.
    assert m["perSubject"] == {"natural science": 75.0, "social science": 33.33, "language science": 50.0}
    # TXT (a hint): 1, 4, 7, 10 -> 2/4; IMG: all 9 -> 55.56; NO (no hint, no image): none here.
    assert m["perContext"] == {"TXT": 50.0, "IMG": 55.56}
    # G1-6: 1, 3, 5, 9, 11 -> 4/5; G7-12: 2, 4, 7, 10 -> 1/4.
    assert m["perGrade"] == {"G1-6": 80.0, "G7-12": 25.0}
    assert m["skipped"] == {"no_image": 1} and m["coverage"]["complete"] and m["coverage"]["unknown"] == 0
    assert "IMG: 9, Correct: 5, IMG-Accuracy: 55.56%" in capsys.readouterr().out

    # The folder (eval_science_qa.py's --base-dir) reads the same.
    assert score("scienceqa", tmp_path, [base], results, output="dir")["overall"] == 55.56


def test_scienceqa_letter_extraction():
    assert [sqa_letter(t) for t in ("A", "A.", "a", " A", "(A)", "A) x", "B. cat", "B.cat", "The answer is B.",
                                    "The answer is B", "The answer is Bx", "The answer is B.\nThe answer is C.",
                                    "the answer is B.", "The answer is F.")] == \
        ["A", "FAILED", "FAILED", "FAILED", "FAILED", "FAILED", "B", "FAILED", "B",
         "FAILED", "B", "FAILED", "FAILED", "F"]
    # get_pred_idx: only the letters of the question's own choices.
    assert [sqa_choice(t, 3) for t in ("C", "D", "The answer is F.", "A.")] == [2, -1, -1, -1]


def test_scienceqa_unanswered_questions_leave_img_accuracy_but_count_wrong_in_breakdowns(tmp_path, capsys):
    """eval_science_qa.py gives a missing answer the prompt "Unknown": not multimodal, so not in
    IMG-Accuracy; but its results holds -1 for it, which evaluate_acc.py counts wrong."""
    base = sqa_files(tmp_path)
    partial = {pid: row for pid, row in SQA.items() if pid != "4"}  # 4 was right
    results = write(tmp_path / "answers.jsonl", sqa_answers(partial))
    questions = [base / "problems.json", base / "pid_splits.json"]
    assert "answers 8 of 9 questions" in refused(capsys, "scienceqa", tmp_path, questions, results)
    m = score("scienceqa", tmp_path, questions, results, extra=["--allow-partial"])
    # IMG-Accuracy: 4 right of the 8 answered = 50.00; IMG breakdown: 4 of 9 = 44.44.
    assert m["overall"] == 50.0 and m["count"] == 8 and m["perContext"]["IMG"] == 44.44
    # natural 1, 4 (unanswered), 5, 10 -> 2/4; G7-12: 2, 4, 7, 10 -> 0/4.
    assert m["perSubject"]["natural science"] == 50.0 and m["perGrade"]["G7-12"] == 0.0


def test_scienceqa_bad_files_are_one_line(tmp_path, capsys):
    base = sqa_files(tmp_path)
    questions = [base / "problems.json", base / "pid_splits.json"]
    numeric = write(tmp_path / "numeric.jsonl", lines([{"question_id": 1, "prompt": "<image>", "text": "B"}]))
    assert "question_id 1 is not a string" in refused(capsys, "scienceqa", tmp_path, questions, numeric)
    no_image = write(tmp_path / "no_image.jsonl", sqa_answers().replace('"<image>\\nQuestion 3?"', '"Question 3?"'))
    assert "the prompt of 3 lacks <image>" in refused(capsys, "scienceqa", tmp_path, questions, no_image)
    twice = write(tmp_path / "twice.jsonl", sqa_answers() + lines([{"question_id": "1", "text": "A"}]))
    assert "question_id 1 appears twice" in refused(capsys, "scienceqa", tmp_path, questions, twice)
    assert "needs problems.json and pid_splits.json" in refused(capsys, "scienceqa", tmp_path, questions[:1], twice)
    # A problem with an answer index beyond its choices is a counted skip.
    problems = json.loads(questions[0].read_text())
    problems["1"]["answer"] = 7
    write(questions[0], problems)
    results = write(tmp_path / "answers.jsonl", sqa_answers())
    m = score("scienceqa", tmp_path, questions, results, extra=["--allow-partial"], output="skip")
    assert m["skipped"] == {"malformed_question": 1, "no_image": 1} and m["count"] == 8
    assert not (tmp_path / "out").exists()


# -- SEED-Bench ----------------------------------------------------------------------------------------

SEED_TYPES = {"Scene Understanding": 1, "Instances Counting": 5, "Text Understanding": 9, "Action Recognition": 10}
# question_id: (dimension, answer, the answers file's text)
SEED = {
    "101": (1, "A", "A"),  # right
    "102": (1, "B", "B."),  # wrong: compared as it is
    "103": (1, "C", "c"),  # wrong
    "104": (5, "D", "D"),  # right
    "105": (5, "A", "A. One"),  # wrong
    "106": (9, "B", "B"),  # right
    "107": (9, "C", "C"),  # right
}


def seed_file(tmp_path: Path, pids=SEED) -> Path:
    def q(qid, dimension, answer):
        return {"answer": answer, "choice_a": "One", "choice_b": "Two", "choice_c": "Three", "choice_d": "Four",
                "data_id": f"{qid}_img.jpg", "data_type": "image", "question": f"How many {qid}?",
                "question_id": qid, "question_type_id": dimension}

    questions = [q(qid, d, a) for qid, (d, a, _) in pids.items()]
    questions.append(dict(q("v1738", 10, "B"), data_id="94328.webm", data_type="video"))
    return write(tmp_path / "seedbench" / "SEED-Bench.json", {"questions": questions, "question_type": SEED_TYPES})


def seed_answers(pids=SEED) -> str:
    rows = [{"question_id": int(qid), "prompt": "", "text": row[-1]} for qid, row in pids.items()]
    return lines(rows + [{"question_id": "v1738", "text": "A"}])  # a video question: ignored


def test_seedbench_exact_letter_per_dimension_and_micro_average(tmp_path, capsys):
    results = write(tmp_path / "merge.jsonl", seed_answers())
    m = score("seedbench", tmp_path, [seed_file(tmp_path)], results)
    # row['text'] == answer: right 101, 104, 106, 107. Per dimension f"{right / total * 100:.2f}":
    # Scene 1/3 = 33.33, Counting 1/2 = 50.00, Text 2/2 = 100.00.
    assert m["perDimension"] == {"Instances Counting": 50.0, "Scene Understanding": 33.33, "Text Understanding": 100.0}
    # image accuracy = (1 + 1 + 2) / (3 + 2 + 2) * 100 = 57.14 (the mean of the dimensions would be 61.11).
    assert m["overall"] == 57.14 and m["correct"] == 4 and m["count"] == 7
    assert m["skipped"] == {"video_question": 1} and m["coverage"]["complete"]
    assert "image accuracy: 57.14%" in capsys.readouterr().out
    assert BENCHMARKS["seedbench"]().table_value(m) == 57.14


def test_seedbench_unanswered_counts_wrong_and_string_ids_are_refused(tmp_path, capsys):
    questions = [seed_file(tmp_path)]
    partial = write(tmp_path / "partial.jsonl", seed_answers({k: v for k, v in SEED.items() if k != "107"}))
    m = score("seedbench", tmp_path, questions, partial, extra=["--allow-partial"])
    # convert_seed_for_submission.py keeps the unanswered 107 in its type's count: 3 / 7 = 42.86,
    # Text 1/2 = 50.00 (not 3/6 = 50.00 and 1/1 over the answered ones).
    assert m["overall"] == 42.86 and m["perDimension"]["Text Understanding"] == 50.0 and m["answered"] == 6
    # A dimension answered wholly wrong: convert_seed_for_submission.py raises KeyError (no
    # correct_counts entry); here it is 0 of 2 = 0.0, and the total 0 of 7.
    wrong = write(tmp_path / "wrong.jsonl", lines([{"question_id": int(qid), "text": "Z"} for qid in SEED]))
    m = score("seedbench", tmp_path, questions, wrong, output="wrong")
    assert m["perDimension"]["Text Understanding"] == 0.0 and m["overall"] == 0.0
    strings = write(tmp_path / "strings.jsonl", lines([{"question_id": qid, "text": "A"} for qid in SEED]))
    assert "question_id '101' is a string" in refused(capsys, "seedbench", tmp_path, questions, strings, output="s")
    not_seed = write(tmp_path / "other.json", {"questions": []})
    assert "not SEED-Bench.json" in refused(capsys, "seedbench", tmp_path, [not_seed], partial, output="s")


# -- the released layout, and a checkpoint answering -------------------------------------------------------


def test_locate_names_what_is_missing(tmp_path):
    sqa_files(tmp_path)  # the json files, no images
    assert "images/test/" in BENCHMARKS["scienceqa"]().locate(tmp_path / "scienceqa")
    assert "problems.json" in BENCHMARKS["scienceqa"]().locate(tmp_path / "nothing")
    assert "SEED-Bench-image/" in BENCHMARKS["seedbench"]().locate(tmp_path / "seedbench")


def run_checkpoint(trained, name, files: Files, out: Path) -> tuple[list[dict], dict]:
    args = ["--checkpoint", str(trained.checkpoint), "--benchmark", name, "--images", str(files.images),
            "--output", str(out), "--max-new-tokens", "8"]
    for q in files.questions:
        args += ["--questions", str(q)]
    assert evaluate.main(args) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["produced_by"]["prompt_suffix"] == MULTIPLE_CHOICE
    return rows[1:], json.loads((out / "metrics.json").read_text())


def test_a_checkpoint_answers_scienceqa_img(trained, tmp_path):
    pids = {pid: SQA[pid] for pid in ("1", "2")}
    base = sqa_files(tmp_path, pids)
    for pid, source in (("1", trained.red), ("2", trained.blue)):
        (base / "images" / "test" / pid).mkdir(parents=True)
        shutil.copy(source, base / "images" / "test" / pid / "image.png")
    files = BENCHMARKS["scienceqa"]().locate(tmp_path / "scienceqa")
    assert files.images == base / "images" / "test" and files.split == "test"
    rows, m = run_checkpoint(trained, "scienceqa", files, tmp_path / "eval")
    assert [r["qid"] for r in rows] == ["1", "2"]
    assert rows[0]["question"] == "Context: Select the best answer.\nQuestion 1?\nA. choice 0\nB. choice 1\nC. choice 2"
    assert rows[1]["question"] == "Question 2?\nA. choice 0\nB. choice 1"  # no hint: no "Context:" line
    right = [sqa_choice(r["answer"].strip(), SQA[r["qid"]][3]) == SQA[r["qid"]][4] for r in rows]
    assert m["count"] == 2 and m["overall"] == round(100 * sum(right) / 2, 2)


def test_a_checkpoint_answers_seedbench(trained, tmp_path):
    seed_file(tmp_path, {qid: SEED[qid] for qid in ("101", "104")})
    images = tmp_path / "seedbench" / "SEED-Bench-image"
    images.mkdir()
    shutil.copy(trained.red, images / "101_img.jpg")
    shutil.copy(trained.blue, images / "104_img.jpg")
    files = BENCHMARKS["seedbench"]().locate(tmp_path / "seedbench")
    assert files.questions == [tmp_path / "seedbench" / "SEED-Bench.json"] and files.images == images
    rows, m = run_checkpoint(trained, "seedbench", files, tmp_path / "eval")
    assert [r["qid"] for r in rows] == ["101", "104"] and m["skipped"] == {"video_question": 1}
    assert rows[0]["question"] == "How many 101?\nA. One\nB. Two\nC. Three\nD. Four"
    right = [r["answer"].strip() == SEED[r["qid"]][1] for r in rows]
    assert m["count"] == 2 and m["overall"] == round(100 * sum(right) / 2, 2)

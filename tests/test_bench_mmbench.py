"""MMBench / MMBench-CN: the released TSV (rotations as rows ``i + k * 1e6``), circular evaluation
and the letter read as VLMEvalKit's ``can_infer`` reads it (commit e8e78f05), LLaVA's prompt and
the server's .xlsx. Every expected number is worked out by hand in the comments, from
``vlmeval/dataset/utils/multiple_choice.py`` (prefetch_circular_group, report_acc) and
``vlmeval/utils/matching_util.py``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from commands import evaluate
from evaluation.benchmarks import BENCHMARKS
from evaluation.benchmarks.base import Files
from evaluation.benchmarks.mmbench import can_infer, group_hit

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "l2-category",
           "comment", "split", "image"]


def png(colour=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def tsv(path: Path, rows: list[dict], answers: bool = True) -> Path:
    """A TSV as MMBench releases it (pandas' to_csv quoting: cells with tabs, quotes or newlines quoted)."""
    columns = [c for c in COLUMNS if answers or c != "answer"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])
    return path


def rotations(index, question, options, answer, category="c1", l2="coarse_perception", hint="", image=None):
    """Question ``index`` and its copies ``index + k * 1e6``, options shifted as MMBench shifts them."""
    rows, image = [], image or png()
    for k in range(len(options)):
        shifted = options[k:] + options[:k]
        letter = "ABCD"[shifted.index(options["ABCD".index(answer)])]
        rows.append({"index": index + k * 1_000_000, "question": question, "hint": hint, "answer": letter,
                     "category": category, "l2-category": l2, "split": "dev", "source": "s", "comment": "",
                     "image": image, **dict(zip("ABCD", shifted))})
    return rows


def jsonl(path: Path, answers: dict[int, str]) -> Path:
    path.write_text("".join(json.dumps({"question_id": i, "round_id": 0, "text": t}) + "\n" for i, t in answers.items()))
    return path


def score(tmp_path, name, questions, predictions, extra=()):
    out = tmp_path / f"out-{predictions.stem}"
    args = ["--benchmark", name, "--questions", str(questions), "--predictions", str(predictions), "--output", str(out),
            *extra]
    assert evaluate.main(args) == 0
    return json.loads((out / "metrics.json").read_text()), out


def refused(capsys, tmp_path, name, questions, predictions) -> str:
    with pytest.raises(SystemExit) as exc:
        score(tmp_path, name, questions, predictions)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


# -- the letter, as can_infer reads it ---------------------------------------------------------


@pytest.mark.parametrize("reply, choices, letter", [
    ("B", {"A": "cat", "B": "dog"}, "B"),
    # The article "A" is the only option letter among the words and within the last four: A, though it says dog.
    ("A dog.", {"A": "cat", "B": "dog"}, "A"),
    # The letter is the 1st of 10 words: index 0 is not > 10 - 5, so no letter; no "answer is"; the reply
    # (48 characters) is longer than 2 * len("red" + "blue") = 14, so no text match either: ChatGPT.
    ("B is right because the bus in the picture is red", {"A": "red", "B": "blue"}, None),
    # No capital letter word; the case-insensitive "answer is a" reads the article as A (though it says cat).
    ("The answer is a cat", {"A": "dog", "B": "cat"}, "A"),
    ("The correct answer is **C**, the bus", {"A": "x", "B": "y", "C": "z"}, "C"),
    # Two letters named ("A or B"): no option letter; "a or b" holds neither "red" nor "blue".
    ("A or B", {"A": "red", "B": "blue"}, None),
    ("(C) blue", {"A": "red", "B": "green", "C": "blue"}, "C"),  # brackets are separators
    ("{B}", {"A": "red", "B": "blue"}, "B"),
    # Within the last four words means index > len(words) - 5: index 0 of 4 words is (0 > -1), of 5 is not (0 > 0);
    # the 5 words' 18 characters are more than 2 * len("red" + "blue") = 14: no text match.
    ("B is the right", {"A": "red", "B": "blue"}, "B"),
    ("B is the right one", {"A": "red", "B": "blue"}, None),
    ("blue", {"A": "red", "B": "blue"}, "B"),  # the option's text
    ("red or blue", {"A": "red", "B": "blue"}, None),  # two options' texts
    ("Z", {"A": "red", "B": "blue"}, "Z"),
    ("Cannot determine the answer", {"A": "red", "B": "blue"}, "Z"),  # a refusal VLMEvalKit knows: wrong
    ("C", {"A": "yes", "B": "no"}, None),  # a letter that is no option of this question
    # The Chinese full stop is no separator: the word is "B。", no option letter; "b。" holds neither text.
    ("B。", {"A": "猫", "B": "狗"}, None),
    ("狗", {"A": "猫", "B": "狗"}, "B"),
])
def test_the_letter_is_read_as_vlmevalkit_reads_it(reply, choices, letter):
    assert can_infer(reply, choices) == letter


def test_a_group_is_right_only_when_every_rotation_is():
    two = {"A": "red", "B": "blue"}
    assert group_hit([("A", "A", two), ("B", "B", two)]) == 1
    assert group_hit([("A", "A", two), ("B", "A", two)]) == 0  # one rotation wrong
    assert group_hit([("A", "A", two), ("B", "hmm", two)]) is None  # one unread, none wrong: ChatGPT's
    assert group_hit([("A", "hmm", two), ("B", "A", two)]) == 0  # unread, then wrong: 0 without ChatGPT
    # "None" is NaN once pandas has read the file, and str(NaN) is "nan", which holds the option text "a".
    assert group_hit([("A", "None", {"A": "a", "B": "b"})]) == 1


# -- circular evaluation of a results file --------------------------------------------------------


def dev_rows():
    return [
        # 0: two options, both rotations right -> hit 1.
        *rotations(0, "What colour is the bus?", ["red", "blue"], "A", "colour", "coarse_perception"),
        # 1: four options, right three times and wrong once -> hit 0.
        *rotations(1, "How many cats?", ["one", "two", "three", "four"], "D", "count", "finegrained_perception (instance-level)"),
        # 2: three options, one reply without a letter VLMEvalKit can read, the others right -> ChatGPT: counted 0.
        *rotations(2, "Which season?", ["winter", "summer", "autumn"], "B", "colour", "coarse_perception",
                   hint="Look at the trees.\nThey have \"no\" leaves."),
        # 3: two options: the copy right, the question's own row wrong -> 0.
        *rotations(3, "Is it day?", ["yes", "no"], "A", "count", "logic_reasoning"),
    ]


DEV_ANSWERS = {0: "A", 1_000_000: "B",
               1: "D", 1_000_001: "C", 2_000_001: "B", 3_000_001: "C",  # "four" is at A in the last
               2: "B", 1_000_002: "I am not sure", 2_000_002: "C",  # summer is A, then C
               3: "B", 1_000_003: "B"}


def test_circular_evaluation_of_llava_answers(tmp_path):
    questions = tsv(tmp_path / "mmbench_dev_20230712.tsv", dev_rows())
    metrics, out = score(tmp_path, "mmbench", questions, jsonl(tmp_path / "answers.jsonl", DEV_ANSWERS))
    # Rotations of question 1: D "four" is at D, C, B, A in rotations 0..3; the replies D, C, B, C: rotation 3 wrong.
    # Question 2: "summer" at B, A, C; rotation 1 unread, none wrong -> ChatGPT, counted 0 (judge_needed 1).
    # Hits 1, 0, 0, 0: overall = 1/4 = 0.25 (report_acc: np.mean, a fraction, unrounded).
    assert metrics["overall"] == 0.25 and metrics["count"] == 4 and metrics["rows"] == 11
    assert metrics["judge_needed"] == 1
    # category: colour = {0: 1, 2: 0} -> 0.5; count = {1: 0, 3: 0} -> 0.0 (sorted names).
    assert metrics["category"] == {"colour": 0.5, "count": 0.0}
    # l2-category, VLMEvalKit's abbreviations: coarse_perception {0, 2} -> CP 0.5; instance-level {1} -> FP-S 0;
    # logic_reasoning {3} -> LR 0; in the order of the sorted full names.
    assert list(metrics["l2-category"].items()) == [("CP", 0.5), ("FP-S", 0.0), ("LR", 0.0)]
    assert BENCHMARKS["mmbench"]().table_value(metrics) == 25.0
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [(s["qid"], s["score"]) for s in scores] == [("0", 1.0), ("1", 0.0), ("2", 0.0), ("3", 0.0)]
    assert "Overall 0.25" in BENCHMARKS["mmbench"]().headline(metrics)


def test_the_submission_xlsx_and_a_tsv_are_read_as_results_files(tmp_path):
    from openpyxl import Workbook

    questions = tsv(tmp_path / "mmbench_dev_cn_20231003.tsv", dev_rows())
    book = Workbook()
    sheet = book.active
    sheet.append(["Index", "question", "A", "B", "Prediction"])  # VLMEvalKit lower-cases the column names
    for index, text in DEV_ANSWERS.items():
        sheet.append([index, "q", "x", "y", text])
    book.save(tmp_path / "results.xlsx")
    metrics, _ = score(tmp_path, "mmbench_cn", questions, tmp_path / "results.xlsx")
    assert metrics["overall"] == 0.25 and metrics["judge_needed"] == 1  # as from LLaVA's answers above
    # Question 0's copy answered "None": NaN once read, "nan", which holds neither "red" nor "blue": ChatGPT's.
    (tmp_path / "results.tsv").write_text("index\tprediction\n" + "".join(
        f"{i}\t{'None' if i == 1_000_000 else t}\n" for i, t in DEV_ANSWERS.items()))
    metrics, _ = score(tmp_path, "mmbench_cn", questions, tmp_path / "results.tsv")
    assert metrics["overall"] == 0.0 and metrics["judge_needed"] == 2


def test_a_rotation_left_unanswered(tmp_path, capsys):
    questions = tsv(tmp_path / "dev.tsv", dev_rows())
    partial = {i: t for i, t in DEV_ANSWERS.items() if i not in (1_000_002, 3)}
    err = refused(capsys, tmp_path, "mmbench", questions, jsonl(tmp_path / "partial.jsonl", partial))
    assert "answers 9 of 11 questions" in err
    metrics, _ = score(tmp_path, "mmbench", questions, tmp_path / "partial.jsonl", ["--allow-partial"])
    # As mcq_circular_eval: question 2's group is its answered rows (both right: hit 1); question 3's own row is
    # unanswered, so it is not scored at all. Hits 1 (q0), 0 (q1), 1 (q2): 2/3.
    assert metrics["overall"] == 2 / 3 and metrics["count"] == 3 and metrics["judge_needed"] == 0


def test_bad_files_are_one_line(tmp_path, capsys):
    questions = tsv(tmp_path / "dev.tsv", dev_rows())
    rounds = tmp_path / "rounds.jsonl"
    rounds.write_text(json.dumps({"question_id": 0, "round_id": 1, "text": "A"}) + "\n")
    assert "round_id 1" in refused(capsys, tmp_path, "mmbench", questions, rounds)
    broken = tmp_path / "broken.tsv"
    broken.write_text("index\tquestion\tA\tB\nx\tq\ta\tb\n")
    assert "index 'x' is not an integer" in refused(capsys, tmp_path, "mmbench", broken, rounds)
    # A row cut short (pandas: NaN cells) has no question: a counted skip, as is a row without an image.
    short = tmp_path / "short.tsv"
    short.write_text(f"index\tquestion\tA\tB\timage\n7\n8\tq\ta\tb\n9\tq\ta\tb\t{png()}\n")
    loaded = BENCHMARKS["mmbench"]().read([short], None, None)
    assert loaded.skipped == {"malformed_question": 1, "missing_image": 1} and [q.qid for q in loaded.questions] == ["9"]
    mixed = dev_rows()[:2]
    mixed[1]["split"] = "test"
    assert "rows of several splits (dev, test)" in refused(capsys, tmp_path, "mmbench", tsv(tmp_path / "mixed.tsv", mixed),
                                                            rounds)
    (tmp_path / "not.xlsx").write_bytes(b"not a zip")
    assert "not a readable .xlsx" in refused(capsys, tmp_path, "mmbench", questions, tmp_path / "not.xlsx")


def test_locate_finds_the_released_files(tmp_path):
    folder = tmp_path / "mmbench"
    folder.mkdir()
    assert "mmbench_dev_20230712.tsv" in BENCHMARKS["mmbench"]().locate(folder)
    tsv(folder / "mmbench_test_en_20231003.tsv", dev_rows()[:2], answers=False)
    assert BENCHMARKS["mmbench"]().locate(folder) == Files([folder / "mmbench_test_en_20231003.tsv"], None, None, "test")
    tsv(folder / "mmbench_dev_20230712.tsv", dev_rows()[:2])
    assert BENCHMARKS["mmbench"]().locate(folder).split == "dev"  # the split LLaVA-1.5's scripts evaluate


# -- a model, end to end -------------------------------------------------------------------------


def colour_rows(trained):
    red = base64.b64encode(trained.red.read_bytes()).decode()
    blue = base64.b64encode(trained.blue.read_bytes()).decode()
    rows = rotations(0, "What colour is it?", ["red", "blue"], "A", image=red)
    rows[1]["image"] = "0"  # VLMEvalKit's re-packed TSVs: a copy names the row whose image it shares
    return rows + rotations(1, "What colour is it?", ["red", "blue"], "B", image=blue)[:1]


def test_a_checkpoint_answers_mmbench_in_llava_prompt(trained, tmp_path):
    questions = tsv(tmp_path / "mmbench_dev_20230712.tsv", colour_rows(trained))
    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(trained.checkpoint), "--benchmark", "mmbench", "--questions",
                          str(questions), "--output", str(out), "--max-new-tokens", "4"]) == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert lines[0]["produced_by"]["prompt_suffix"] == "Answer with the option's letter from the given choices directly."
    assert [line["qid"] for line in lines[1:]] == ["0", "1000000", "1"]
    assert lines[2]["question"] == "What colour is it?\nA. blue\nB. red"  # the copy: options shifted
    # The checkpoint answers the colour; the copy's image is row 0's (red), through the reference.
    assert [line["answer"] for line in lines[1:]] == ["red", "red", "blue"]
    metrics = json.loads((out / "metrics.json").read_text())
    # "red" holds option A's text in row 0 and B's in its copy (both right); "blue" is B in question 1: 2/2.
    assert metrics["count"] == 2 and metrics["rows"] == 3 and metrics["overall"] == 1.0


def test_a_checkpoint_writes_the_mmbench_cn_test_submission(trained, tmp_path):
    from openpyxl import load_workbook

    rows = colour_rows(trained)
    rows[0]["hint"] = "提示"
    questions = tsv(tmp_path / "mmbench_test_cn_20231003.tsv", rows, answers=False)
    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(trained.checkpoint), "--benchmark", "mmbench_cn", "--questions",
                          str(questions), "--output", str(out), "--max-new-tokens", "4"]) == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert lines[0]["produced_by"]["prompt_suffix"] == "请直接回答选项字母。"
    assert lines[1]["question"] == "提示\nWhat colour is it?\nA. red\nB. blue"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "overall" not in metrics and BENCHMARKS["mmbench_cn"]().table_value(metrics) is None
    assert metrics["submission"]["file"] == "mmbench_cn_submission.xlsx" and metrics["submission"]["answers"] == 3
    sheet = load_workbook(out / "mmbench_cn_submission.xlsx").active
    table = [list(r) for r in sheet.iter_rows(values_only=True)]
    # convert_mmbench_for_submission.py: hint, category, source, image, comment, l2-category dropped, prediction
    # inserted as the 7th column; the answers as they were written (stripped replies).
    assert table[0] == ["index", "question", "A", "B", "C", "D", "prediction", "split"]
    assert [r[0] for r in table[1:]] == [0, 1000000, 1]
    assert [r[6] for r in table[1:]] == [line["answer"].strip() for line in lines[1:]]
    assert table[2][2:4] == ["blue", "red"] and table[1][4] is None

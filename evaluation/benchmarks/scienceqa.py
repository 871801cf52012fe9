"""ScienceQA-IMG: the test questions of ScienceQA that have an image, as lettered multiple choice.

Files as released (https://github.com/lupantech/ScienceQA, ``data/scienceqa/``): ``problems.json``
``{pid: {"question", "choices", "answer": index, "hint", "image": "image.png" | null, "subject",
"grade", "split", ...}}`` and ``pid_splits.json`` ``{"train": [pid, ...], "val": [...], "test":
[...]}``; give both as ``--questions`` (or their folder, as eval_science_qa.py's ``--base-dir``).
Images: ``<images>/<pid>/<image>`` -- the released ``test.zip`` unpacked (``images/test``).
``evaluate.py --suite --data-root DIR`` reads ``DIR/scienceqa/{problems.json, pid_splits.json,
images/test/<pid>/image.png}`` (``DIR/scienceqa/test/`` is accepted for the images too).

Asked as LLaVA-1.5 asks it (``llava_test_CQM-A.json`` read by ``llava/eval/model_vqa_science.py
--single-pred-prompt``): ``"Context: <hint>\\n"`` when the hint is not empty, the question, the
choices as ``"A. ..."`` lines, then "Answer with the option's letter from the given choices
directly." on its own line (llava_test_CQM-A.json ships in LLaVA's eval.zip, in no repository; its
entries for pids 4 and 5 read ``"Which figure ...?\\n...\\nA. chiasmus\\nB. apostrophe"`` and
``"<image>\\nContext: People can use ...\\nWhich of the following ...?\\nA. ..."``). The reply is
stripped (model_vqa_science.py) into the answers file.

Scored as ``haotian-liu/LLaVA`` ``llava/eval/eval_science_qa.py`` at
``c121f0432da27facab705978f83c4ada465e46fd`` (the number LLaVA-1.5's table reports, its
``IMG-Accuracy``), with the breakdowns of ScienceQA's ``tools/evaluate_acc.py`` (lupantech/ScienceQA
at ``2cbf8318e07b9ece895bb2ae605e71e38d623264``), which reads eval_science_qa.py's ``results``.
Quirks, each pinned in ``tests/test_bench_scienceqa_seed.py``:

- the letter is read from the answer exactly as written: the whole text one of ``A``..``E``; or
  3+ characters starting with a letter and ``". "`` (``"B. cat"``); or exactly one match of the
  regex ``The answer is ([A-Z]).`` (its ``.`` is any character but a newline, so ``"The answer is
  B"`` at the end of the text fails). Anything else -- ``"A."``, ``"a"``, ``" A"``, ``"(A)"``,
  two "The answer is" -- is ``FAILED`` and wrong;
- a letter beyond the question's choices (``"E"`` with 3 choices, ``"The answer is F."``) is wrong;
- ``IMG-Accuracy`` counts the questions whose recorded prompt holds ``<image>``; an unanswered
  question is given the prompt ``"Unknown"``, so it drops out of IMG-Accuracy (here: the image
  questions of problems.json; a results file whose prompt for one of them lacks ``<image>`` is refused);
- the breakdowns (``perSubject``, ``perContext`` TXT = has a hint / IMG, ``perGrade`` G1-6 / G7-12;
  evaluate_acc.py's definitions, taken over the image questions where it takes the whole test split)
  come from ``results``, where an unanswered question is ``-1``: there it counts as wrong. Within
  the image questions ``NO`` (no context) is empty: evaluate_acc.py's ``-1``, left out here;
- each figure is ``right / total * 100`` printed with ``{:.2f}`` (the division first).

Results files are LLaVA's answers file, JSON lines ``{"question_id": pid (a string), "text", "prompt"}``
(eval_science_qa.py matches a numeric ``question_id`` to no problem: refused here; it raises
``KeyError`` on a line without ``prompt``: such a line is taken as problems.json says). The test split's
text-only questions are not this benchmark; their answers in LLaVA's file are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from evaluation.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    Files,
    Loaded,
    Question,
    load_json,
    load_jsonl,
    percent_of_mean,
)

OPTIONS = ("A", "B", "C", "D", "E")  # eval_science_qa.py's --options default
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
GRADES = {f"grade{n}": "G1-6" if n <= 6 else "G7-12" for n in range(1, 13)}


def sqa_letter(text: str) -> str:
    """eval_science_qa.py's parsed answer: a letter, or ``"FAILED"``."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def sqa_choice(text: str, choices: int) -> int:
    """eval_science_qa.py's ``get_pred_idx``: the chosen index, -1 unless a letter of the first ``choices``."""
    letter = sqa_letter(text)
    return OPTIONS.index(letter) if letter in OPTIONS[:choices] else -1


def sqa_prompt(problem: Mapping) -> str:
    """The question as llava_test_CQM-A.json words it (without the ``<image>`` token)."""
    context = f"Context: {problem['hint']}\n" if problem["hint"] else ""
    lines = [f"{letter}. {choice}" for letter, choice in zip(OPTIONS, problem["choices"])]
    return context + problem["question"] + "\n" + "\n".join(lines)


@dataclass(frozen=True)
class Truth:
    answer: int  # index into the choices
    choices: int  # how many there are


def _usable(problem) -> bool:
    return (isinstance(problem, dict) and isinstance(problem.get("question"), str)
            and isinstance(problem.get("hint"), str) and isinstance(problem.get("choices"), list)
            and 0 < len(problem["choices"]) <= len(OPTIONS) and all(isinstance(c, str) for c in problem["choices"])
            and isinstance(problem.get("answer"), int) and 0 <= problem["answer"] < len(problem["choices"]))


def _accuracy(values: list[float]) -> float:
    """``"{:.2f}".format(right / total * 100)``."""
    return percent_of_mean(values)


class ScienceQA(Benchmark):
    name = "scienceqa"
    prompt_suffix = MULTIPLE_CHOICE

    def locate(self, root: Path) -> Files | str:
        base = root  # DIR/<name>/ (evaluate.py --suite --data-root DIR)
        missing = [n for n in ("problems.json", "pid_splits.json") if not (base / n).is_file()]
        images = next((d for d in (base / "images" / "test", base / "test") if d.is_dir()), None)
        if missing or images is None:
            return f"{self.name}: missing under {base}: " + ", ".join(missing + ["images/test/"] * (images is None))
        return Files(questions=[base / "problems.json", base / "pid_splits.json"], images=images, split="test")

    def results_answer(self, reply: str) -> str:
        return reply.strip()  # model_vqa_science.py: outputs.strip()

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        paths = [questions[0] / "problems.json", questions[0] / "pid_splits.json"] \
            if len(questions) == 1 and questions[0].is_dir() else list(questions)
        files = {p: load_json(p, "ScienceQA file") for p in paths}
        splits = [p for p, d in files.items() if isinstance(d, dict) and isinstance(d.get("test"), list)]
        problems = [p for p in files if p not in splits]
        if len(paths) != 2 or len(splits) != 1 or not isinstance(files[problems[0]], dict):
            raise BenchmarkError(f"{', '.join(map(str, paths))}: ScienceQA needs problems.json and pid_splits.json "
                                 "(a folder holding both, or the two files)")
        data = files[problems[0]]
        loaded = Loaded([])
        for pid in map(str, files[splits[0]]["test"]):
            problem = data.get(pid)
            if problem is None or not _usable(problem):
                loaded.skip("malformed_question" if problem is not None else "not_in_problems_json", pid, qid=pid)
                continue
            if not problem.get("image"):
                # eval_science_qa.py leaves it out of IMG-Accuracy; an answer to it is not unknown
                loaded.skip("no_image", pid, question=False, qid=pid)
                continue
            image = images / pid / str(problem["image"]) if images is not None else None
            if not loaded.admit(pid, image):
                continue
            group = {"subject": str(problem.get("subject")), "context": "TXT" if problem["hint"] else "",
                     "grade": GRADES.get(str(problem.get("grade")), "")}
            loaded.questions.append(Question(pid, image, sqa_prompt(problem),
                                             Truth(problem["answer"], len(problem["choices"])), group))
        return loaded

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        return {q.qid: float(sqa_choice(answers[q.qid], q.truth.choices) == q.truth.answer)
                for q in questions if q.qid in answers}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        scores = self.question_scores(questions, answers)
        # evaluate_acc.py reads eval_science_qa.py's results, where an unanswered question is -1: wrong.
        credit = [(q, scores.get(q.qid, 0.0)) for q in questions]

        def by(key: str, names) -> dict[str, float]:
            return {name: _accuracy([c for q, c in credit if q.group[key] == name]) for name in names
                    if any(q.group[key] == name for q, _ in credit)}

        answered = list(scores.values())  # IMG-Accuracy: an unanswered question is not multimodal
        return {"overall": _accuracy(answered) if answered else None, "correct": int(sum(answered)),
                "count": len(answered),
                "perSubject": by("subject", ("natural science", "social science", "language science")),
                "perContext": {**by("context", ("TXT",)), "IMG": _accuracy([c for _, c in credit])} if credit else {},
                "perGrade": by("grade", ("G1-6", "G7-12"))}

    def headline(self, metrics: Mapping) -> str:
        """eval_science_qa.py's IMG-Accuracy (its Total/Accuracy count the text-only questions too)."""
        if metrics.get("overall") is None:
            return "no answered question"
        return f"IMG: {metrics['count']}, Correct: {metrics['correct']}, IMG-Accuracy: {metrics['overall']:.2f}%"

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        """LLaVA's answers file (model_vqa_science.py): JSON lines ``{"question_id": pid, "text", "prompt"}``."""
        rows = load_json(path, "answers file") if path.suffix == ".json" else load_jsonl(path, "answers file")
        with_image = {q.qid for q in questions}
        answers: dict[str, str] = {}
        for n, row in enumerate(rows if isinstance(rows, list) else [rows]):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "question_id" not in row:
                raise BenchmarkError(f"{path}: entry #{n} needs question_id and a string text: {str(row)[:120]}")
            qid = row["question_id"]
            if not isinstance(qid, str):
                raise BenchmarkError(f"{path}: entry #{n}: question_id {qid!r} is not a string; eval_science_qa.py "
                                     "matches it to no problem (the pids of pid_splits.json are strings)")
            prompt = row.get("prompt")
            if isinstance(prompt, str) and "<image>" not in prompt and qid in with_image:
                raise BenchmarkError(f"{path}: entry #{n}: the prompt of {qid} lacks <image>: eval_science_qa.py would "
                                     "leave this image question out of IMG-Accuracy")
            if qid in answers:
                raise BenchmarkError(f"{path}: question_id {qid} appears twice")
            answers[qid] = row["text"]
        return answers

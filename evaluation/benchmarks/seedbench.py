"""SEED-Bench (image): the 9 image dimensions of SEED-Bench-1, four lettered choices each.

File as released (https://github.com/AILab-CVC/SEED-Bench, ``DATASET.md``; the file from the
HuggingFace dataset ``AILab-CVC/SEED-Bench``): ``SEED-Bench.json`` ``{"questions": [{"question_id",
"question", "choice_a".."choice_d", "answer": "A".."D", "data_id", "data_type": "image" | "video",
"question_type_id"}], "question_type": {name: id}}``, given as ``--questions``. Images:
``<images>/<data_id>`` (the released ``SEED-Bench-image`` folder). ``evaluate.py --suite
--data-root DIR`` reads ``DIR/seedbench/SEED-Bench.json`` and ``DIR/seedbench/SEED-Bench-image/``.

Only ``data_type == "image"`` questions are this benchmark (dimensions 1-9, what LLaVA-1.5's
SEED-IMG column and ``image accuracy`` count); the video questions (dimensions 10-12) are counted
as ``video_question`` skips that are not questions of it, and their answers in LLaVA's file are
ignored. Asked as LLaVA-1.5 asks it (``llava-seed-bench.jsonl`` through ``model_vqa_loader.py``):
the question, ``"A. <choice_a>"`` .. ``"D. <choice_d>"`` lines, then "Answer with the option's letter
from the given choices directly."; the reply is stripped into the answers file.

Scored as ``haotian-liu/LLaVA`` ``scripts/convert_seed_for_submission.py`` at
``c121f0432da27facab705978f83c4ada465e46fd`` (its ``eval_single(..., eval_only_type='image')``).
Quirks, each pinned in ``tests/test_bench_scienceqa_seed.py``:

- right only when the answer text **equals** the answer letter: ``"A"`` is right, ``"A."``,
  ``"a"``, ``"A. cat"`` and ``"The answer is A"`` are wrong (no letter is extracted);
- an unanswered question is wrong and stays in the denominator (so with ``--allow-partial`` the
  figures are over every question scored, not just the answered ones);
- results are looked up by ``int(question_id)`` where SEED's id is numeric: the answers file must
  hold ``101669`` as a JSON number; a string ``"101669"`` would match nothing and count wrong --
  refused here with one line instead;
- per dimension ``right / total * 100`` printed ``{:.2f}``, named by ``question_type``; the image
  accuracy is the sum of right over the sum of totals (a micro average, not the mean of the dimensions);
- a dimension (image or video) whose questions are all answered and none right has no entry in its
  ``correct_counts``, and the script stops with ``KeyError``; here that dimension is ``0.0``.

Results files are LLaVA's answers file: JSON lines ``{"question_id", "text"}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    Files,
    Loaded,
    Question,
    breakdown,
    load_json,
    load_jsonl,
    percent_of_mean,
)
from evaluation.benchmarks.scienceqa import MULTIPLE_CHOICE

LETTERS = ("A", "B", "C", "D")
CHOICES = ("choice_a", "choice_b", "choice_c", "choice_d")


def official_key(question_id):
    """How convert_seed_for_submission.py looks a question up in the results: ``int(id)`` if it can."""
    try:
        return int(question_id)
    except (TypeError, ValueError):
        return question_id


def seed_prompt(q: Mapping) -> str:
    return q["question"] + "\n" + "\n".join(f"{letter}. {q[c]}" for letter, c in zip(LETTERS, CHOICES))


def _usable(q) -> bool:
    return (isinstance(q, dict) and isinstance(q.get("question"), str) and all(isinstance(q.get(c), str) for c in CHOICES)
            and q.get("answer") in LETTERS and isinstance(q.get("data_id"), str)
            and isinstance(q.get("question_type_id"), int) and isinstance(q.get("question_id"), (str, int)))


class SEEDBench(Benchmark):
    name = "seedbench"
    prompt_suffix = MULTIPLE_CHOICE

    def locate(self, root: Path) -> Files | str:
        base = root  # DIR/<name>/ (evaluate.py --suite --data-root DIR)
        missing = [n for n in ("SEED-Bench.json", "SEED-Bench-image/") if not (base / n).exists()]
        if missing:
            return f"{self.name}: missing under {base}: {', '.join(missing)}"
        return Files(questions=[base / "SEED-Bench.json"], images=base / "SEED-Bench-image", split="image")

    def results_answer(self, reply: str) -> str:
        return reply.strip()  # model_vqa_loader.py: outputs.strip()

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (path,) = questions
        data = load_json(path, "SEED-Bench file")
        if not isinstance(data, dict) or not isinstance(data.get("questions"), list) \
                or not isinstance(data.get("question_type"), dict):
            raise BenchmarkError(f"{path}: not SEED-Bench.json (expected {{\"questions\": [...], \"question_type\": {{...}}}})")
        names = {number: name for name, number in data["question_type"].items()}
        loaded = Loaded([])
        for n, q in enumerate(data["questions"]):
            if isinstance(q, dict) and q.get("data_type") != "image" and "question_id" in q:
                loaded.skip("video_question", str(q["question_id"]), question=False, qid=str(q["question_id"]))
                continue
            if not _usable(q):
                loaded.skip("malformed_question", f"{path} question #{n}")
                continue
            qid = str(q["question_id"])
            image = images / q["data_id"] if images is not None else None
            if not loaded.admit(qid, image):
                continue
            dimension = names.get(q["question_type_id"], f"dimension {q['question_type_id']}")
            loaded.questions.append(Question(qid, image, seed_prompt(q), q["answer"], {"dimension": dimension}))
        if not loaded.questions and not loaded.skipped_questions:
            raise BenchmarkError(f"{path}: no image question (data_type \"image\"): not SEED-Bench-1's SEED-Bench.json")
        return loaded

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        return {q.qid: float(answers[q.qid] == q.truth) for q in questions if q.qid in answers}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        # convert_seed_for_submission.py: every question counts, an unanswered one as wrong.
        scores = {q.qid: float(answers.get(q.qid) == q.truth) for q in questions}
        values = list(scores.values())
        return {"overall": percent_of_mean(values), "correct": int(sum(values)), "count": len(values),
                "answered": sum(q.qid in answers for q in questions),
                "perDimension": breakdown(questions, scores, "dimension", percent_of_mean)}

    def headline(self, metrics: Mapping) -> str:
        """convert_seed_for_submission.py's ``image accuracy: ..%`` line."""
        return f"image accuracy: {metrics['overall']:.2f}%" if "overall" in metrics else "no public answers"

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        """LLaVA's answers file (model_vqa_loader.py): JSON lines ``{"question_id", "text"}``."""
        rows = load_json(path, "answers file") if path.suffix == ".json" else load_jsonl(path, "answers file")
        numeric = {official_key(q.qid): q.qid for q in questions if isinstance(official_key(q.qid), int)}
        answers: dict[str, str] = {}
        for n, row in enumerate(rows if isinstance(rows, list) else [rows]):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "question_id" not in row:
                raise BenchmarkError(f"{path}: entry #{n} needs question_id and a string text: {str(row)[:120]}")
            given = row["question_id"]
            if isinstance(given, str) and given in numeric.values():
                raise BenchmarkError(f"{path}: entry #{n}: question_id {given!r} is a string; convert_seed_for_submission.py "
                                     f"looks SEED's numeric ids up as numbers ({int(given)}) and would count it wrong")
            qid = numeric.get(given, str(given)) if isinstance(given, int) and not isinstance(given, bool) else str(given)
            if qid in answers:
                raise BenchmarkError(f"{path}: question_id {given!r} appears twice")
            answers[qid] = row["text"]
        return answers

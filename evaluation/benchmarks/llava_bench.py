"""LLaVA-Bench (In-the-Wild): 60 free-form questions on 24 images, graded by a judge model against
GPT-4's answers, reported as a relative score.

Files as released (https://huggingface.co/datasets/liuhaotian/llava-bench-in-the-wild), layout under
``--data-root DIR`` (``evaluate.py --suite``)::

    DIR/llava_bench/questions.jsonl     {"image", "text", "category": conv|detail|complex, "question_id"}
    DIR/llava_bench/context.jsonl       {"id", "image", "caption"}  (the caption the judge reads)
    DIR/llava_bench/answers_gpt4.jsonl  {"question_id", "text", ...} (Assistant 1, the reference)
    DIR/llava_bench/images/001.jpg ...

``--questions questions.jsonl`` (``--questions context.jsonl`` as a second one, else the
context.jsonl beside it), ``--annotations answers_gpt4.jsonl`` (else the one beside the
questions), ``--images images``. Results file (``--predictions``): LLaVA's answers file, JSON lines
``{"question_id", "text", ...}`` (what ``model_vqa.py`` writes). Asked as LLaVA-1.5 asks it
(``scripts/v1_5/eval/llavabench.sh``: ``model_vqa.py``, the question as it is, no suffix, up to
1024 new tokens).

Scored as haotian-liu/LLaVA at c121f0432da27facab705978f83c4ada465e46fd scores it:
``llava/eval/eval_gpt_review_bench.py`` asks the judge (system "You are a helpful and precise
assistant for checking the quality of the answer.", temperature 0.2, max_tokens 1024) with the
review of ``llava/eval/table/rule.json``'s ``llava_bench_<category>`` prompt and role, GPT-4's
answer as Assistant 1 and ours as Assistant 2; ``llava/eval/summarize_gpt_review.py`` summarises.
Quirks kept:

- L1 ``parse_score``: only the reply's first line (cut at ``\\n``); commas become spaces; it is split
  on single spaces and must give exactly two parts, each read by ``float``. So ``"8 7"`` and
  ``"8,7"`` are (8, 7), but ``"8, 7"`` (three parts), ``"8/10 7/10"``, ``"Scores: 8 7"``, ``" 8 7"``
  and an empty first line give no score.
- L2 A reply without a score is recorded as ``[-1, -1]`` and *counted in the means* (the official
  script asks once; here the same request is asked up to 3 times -- the judge samples at 0.2 --
  before that, and the failures are counted in ``judge.unparsed``).
- L3 Per category (``llava_bench_conv``/``detail``/``complex``) and ``all``: the mean of each
  score column (numpy), each rounded to 3 decimals *first*; then the relative score
  ``round(ours / gpt4 * 100, 1)`` and the two means ``round(mean * 10, 1)``, as it prints them
  (``all 65.4 75.0 49.0``). A zero GPT-4 mean (where it divides by zero) gives ``null``.
- L4 eval_gpt_review_bench.py pairs the three files by line position; here by ``question_id``
  (the released files are in the same order, so the pairs are the same). It reads
  ``answer_id`` from our answers file (a KeyError without it); it is not needed here.
- L5 A question whose image has no context line (a KeyError there) or no GPT-4 answer is a counted
  skip; a category without a rule is an error naming the line (it asserts).

``overall`` (the table's number) is the ``all`` relative score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import Benchmark, BenchmarkError, Layout, Loaded, Question, load_jsonl
from evaluation.judge import Judged, Request

CATEGORIES = ("conv", "detail", "complex")
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
ROLE = "Assistant"  # rule.json's role for all three categories
# rule.json's prompt, the same for llava_bench_conv, llava_bench_detail and llava_bench_complex.
RULE = ("We would like to request your feedback on the performance of two AI assistants in response to the user "
        "question displayed above. The user asks the question on observing an image. For your reference, the visual "
        "content in the image is represented with a few sentences describing the image. \nPlease rate the "
        "helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an overall "
        "score on a scale of 1 to 10, where a higher score indicates better overall performance.\nPlease first output "
        "a single line containing only two values indicating the scores for Assistant 1 and 2, respectively. The two "
        "scores are separated by a space.\nIn the subsequent line, please provide a comprehensive explanation of your "
        "evaluation, avoiding any potential bias and ensuring that the order in which the responses were presented "
        "does not affect your judgment.")
TRIES = 3
FAILED = (-1.0, -1.0)  # what parse_score returns for a reply without a score


def parse_score(review: str) -> tuple[float, float] | None:
    """eval_gpt_review_bench.py's ``parse_score``; None where it prints "error" and gives [-1, -1]."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def review(context: str, question: str, reference: str, answer: str) -> str:
    """The user message eval_gpt_review_bench.py sends the judge."""
    return (f"[Context]\n{context}\n\n[Question]\n{question}\n\n"
            f"[{ROLE} 1]\n{reference}\n\n[End of {ROLE} 1]\n\n[{ROLE} 2]\n{answer}\n\n[End of {ROLE} 2]\n\n"
            f"[System]\n{RULE}\n\n")


def summarize(pairs: Sequence[tuple[float, float]]) -> dict:
    """summarize_gpt_review.py's line for one category: the means rounded to 3 decimals, then the
    relative score and the means on a 100 scale, each rounded to 1."""
    import numpy as np

    gpt4, ours = (round(x, 3) for x in np.asarray(pairs).mean(0).tolist())
    return {"relative": round(ours / gpt4 * 100, 1) if gpt4 else None, "gpt4": round(gpt4 * 10, 1),
            "model": round(ours * 10, 1), "count": len(pairs)}


def _caption(caption) -> str:
    return "\n".join(caption) if isinstance(caption, list) else str(caption)


class LLaVABench(Judged, Benchmark):
    name = "llava_bench"
    layouts = (Layout("in-the-wild", ("questions.jsonl", "context.jsonl"), images="images",
                      annotations="answers_gpt4.jsonl"),)

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        path = questions[0]
        context_path = questions[1] if len(questions) > 1 else path.parent / "context.jsonl"
        reference_path = annotations or path.parent / "answers_gpt4.jsonl"
        for needed, what in ((context_path, "context.jsonl"), (reference_path, "answers_gpt4.jsonl")):
            if not needed.is_file():
                raise BenchmarkError(f"{needed}: no such file (LLaVA-Bench needs its {what} beside questions.jsonl, "
                                     "or named with --questions/--annotations)")
        contexts = {row["image"]: _caption(row.get("caption", "")) for row in load_jsonl(context_path, "context file")
                    if isinstance(row, dict) and "image" in row}
        references = {str(row["question_id"]): row["text"] for row in load_jsonl(reference_path, "GPT-4 answers file")
                      if isinstance(row, dict) and "question_id" in row and isinstance(row.get("text"), str)}
        loaded = Loaded([])
        for n, q in enumerate(load_jsonl(path, "LLaVA-Bench questions file")):
            if not isinstance(q, dict) or not {"question_id", "image", "text", "category"} <= set(q):
                loaded.skip("malformed_question", f"{path} line {n + 1}")
                continue
            if q["category"] not in CATEGORIES:
                raise BenchmarkError(f"{path}: line {n + 1}: category {q['category']!r} has no judge prompt "
                                     f"(rule.json has llava_bench_{'/'.join(CATEGORIES)})")
            qid = str(q["question_id"])
            if q["image"] not in contexts:
                loaded.skip("no_context", f"{qid} ({q['image']} is not in {context_path.name})", qid=qid)
                continue
            if qid not in references:
                loaded.skip("no_reference_answer", f"{qid} (not in {reference_path.name})", qid=qid)
                continue
            image = images / str(q["image"]) if images is not None else None
            if loaded.admit(qid, image):
                loaded.questions.append(Question(qid, image, str(q["text"]), {
                    "reference": references[qid], "context": contexts[q["image"]]}, {"category": q["category"]}))
        return loaded

    def requests(self, question: Question, answer: str) -> list[Request]:
        content = review(question.truth["context"], question.question, question.truth["reference"], answer)
        return [Request((("system", SYSTEM), ("user", content)), 0.2, 1024)] * TRIES

    def parse(self, reply: str) -> tuple[float, float] | None:
        return parse_score(reply)

    def pairs(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, tuple[float, float]]:
        """(GPT-4's score, ours) per answered question; [-1, -1] where no reply held scores (L2)."""
        return {qid: FAILED if grade.value is None else grade.value for qid, grade in self.grades(questions, answers).items()}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        pairs = self.pairs(questions, answers)
        by_category: dict[str, list] = {}
        for q in questions:
            if q.qid in pairs:
                by_category.setdefault(f"llava_bench_{q.group['category']}", []).append(pairs[q.qid])
                by_category.setdefault("all", []).append(pairs[q.qid])
        lines = {name: summarize(values) for name, values in sorted(by_category.items())}
        return {"overall": lines["all"]["relative"] if lines else None,
                "relative": {k.removeprefix("llava_bench_"): v["relative"] for k, v in lines.items() if k != "all"},
                "summary": lines, "count": len(pairs), "judge": self.client().describe()}

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        """The judge's score of our answer over 10 (a failed grading: 0)."""
        return {qid: min(1.0, max(0.0, ours / 10)) for qid, (_, ours) in self.pairs(questions, answers).items()}

    def headline(self, metrics: Mapping) -> str:
        """summarize_gpt_review.py's lines: name, relative score, GPT-4's and ours (x10); then the judge."""
        return ("; ".join(f"{name} {row['relative']} {row['gpt4']} {row['model']}"
                          for name, row in metrics.get("summary", {}).items()) or "no answers") + self.judge_note(metrics)

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        """LLaVA's answers file: JSON lines ``{"question_id", "text", ...}``."""
        answers: dict[str, str] = {}
        for n, row in enumerate(load_jsonl(path, "answers file")):
            if not isinstance(row, dict) or "question_id" not in row or not isinstance(row.get("text"), str):
                raise BenchmarkError(f"{path}: line {n + 1} needs question_id and a string text: {str(row)[:120]}")
            qid = str(row["question_id"])
            if qid in answers:
                raise BenchmarkError(f"{path}: question_id {qid} appears twice")
            answers[qid] = row["text"]
        return answers

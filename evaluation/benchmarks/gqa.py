"""GQA: compositional questions about scene graphs (the balanced splits).

File as downloaded (https://cs.stanford.edu/people/dorarad/gqa/download.html):
``testdev_balanced_questions.json`` ``{qid: {"imageId", "question", "answer", "isBalanced",
"types": {"structural", "semantic", "detailed"}, ...}}``. Images: ``<images>/<imageId>.jpg``.

Scored as GQA's official ``eval.py``: only balanced questions (``isBalanced``; a question without
the key counts as balanced) are scored, the prediction compared **exactly** with the answer (no
lower-casing, no stripping: ``"Yes"`` is wrong against ``"yes"``); ``overall`` (eval.py's
"Accuracy"), ``binary`` and ``open`` (structural type ``query`` is open, every other binary), per
structural and semantic type, each ``avg(scores) * 100`` printed with 2 decimals
(``percent_of_mean``). Validity, plausibility, consistency, grounding and distribution need the
choices / scene-graph files and are not computed.

A model's reply is written into the results file as LLaVA writes it (``model_vqa_loader.py``
strips the reply, ``convert_gqa_for_eval.py`` drops trailing periods and lower-cases); that
clean-up belongs to writing the file, never to scoring a given one. Results files are GQA's
``[{"questionId", "prediction"}]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    Layout,
    Loaded,
    Question,
    Submission,
    breakdown,
    by_key,
    load_json,
    percent_of_mean,
)


def gqa_results_answer(reply: str) -> str:
    """LLaVA's clean-up of a model reply for GQA: ``reply.strip()`` (model_vqa_loader.py), then
    ``.rstrip('.').lower()`` (convert_gqa_for_eval.py)."""
    return reply.strip().rstrip(".").lower()


class GQA(Benchmark):
    name = "gqa"
    layouts = (Layout("testdev-balanced", ("testdev_balanced_questions.json",), "images"),)
    upload = "https://eval.ai/web/challenges/challenge-page/225 (GQA challenge; test-dev is scored offline)"

    def results_answer(self, reply: str) -> str:
        return gqa_results_answer(reply)

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (path,) = questions
        data = load_json(path, "GQA questions file")
        if not isinstance(data, dict):
            raise BenchmarkError(f"{path}: not a GQA questions file (expected an object of question id -> question)")
        loaded = Loaded([])
        for qid, q in data.items():
            if not isinstance(q, dict) or not isinstance(q.get("imageId"), str) or not isinstance(q.get("question"), str):
                loaded.skip("malformed_question", str(qid))
                continue
            if not q.get("isBalanced", True):
                # eval.py scores balanced questions only, and ignores predictions for the others
                loaded.skip("not_balanced", str(qid), question=False, qid=str(qid))
                continue
            image = images / f"{q['imageId']}.jpg" if images is not None else None
            if not loaded.admit(str(qid), image):
                continue
            types = q.get("types") if isinstance(q.get("types"), dict) else {}
            group = {k: str(types[k]) for k in ("structural", "semantic") if k in types}
            if "structural" in types:
                group["answer_type"] = "open" if types["structural"] == "query" else "binary"
            truth = q["answer"] if isinstance(q.get("answer"), str) else None
            loaded.questions.append(Question(str(qid), image, q["question"], truth, group))
        return loaded

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        return {q.qid: float(answers[q.qid] == q.truth) for q in questions if q.qid in answers}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        scores = self.question_scores(questions, answers)
        by_answer_type = breakdown(questions, scores, "answer_type", percent_of_mean)
        return {"overall": percent_of_mean(list(scores.values())), "count": len(scores),
                "binary": by_answer_type.get("binary", 0.0), "open": by_answer_type.get("open", 0.0),
                "perStructuralType": breakdown(questions, scores, "structural", percent_of_mean),
                "perSemanticType": breakdown(questions, scores, "semantic", percent_of_mean)}

    def submission(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Submission:
        content = [{"questionId": q.qid, "prediction": answers[q.qid]} for q in questions if q.qid in answers]
        return Submission("gqa_results.json", content, self.upload)

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        return by_key(load_json(path, "results file"), path, "questionId", "prediction")

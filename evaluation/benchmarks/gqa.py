"""GQA: compositional questions about scene graphs (the balanced splits).

File as downloaded (https://cs.stanford.edu/people/dorarad/gqa/download.html):
``testdev_balanced_questions.json`` ``{qid: {"imageId", "question", "answer", "types":
{"structural", "semantic", "detailed"}, ...}}``. Images: ``<images>/<imageId>.jpg``.

Accuracy is GQA's: exact match after the normalisation LLaVA applies before the official
``eval.py`` (lower-case, strip, a trailing period dropped), overall and per structural and semantic
type, ``round(100 * mean, 2)``. Results files are GQA's ``[{"questionId", "prediction"}]``, written
for splits without answers (the test-dev/challenge submission).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    Loaded,
    Question,
    Submission,
    breakdown,
    by_key,
    load_json,
    percent,
)


def gqa_normalize(answer: str) -> str:
    return answer.strip().rstrip(".").strip().lower()


class GQA(Benchmark):
    name = "gqa"
    upload = "https://eval.ai/web/challenges/challenge-page/225 (GQA challenge; test-dev is scored offline)"

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
            image = images / f"{q['imageId']}.jpg"
            if not loaded.admit(str(qid), image):
                continue
            types = q.get("types") or {}
            group = {k: str(types[k]) for k in ("structural", "semantic") if k in types}
            truth = str(q["answer"]) if "answer" in q else None
            loaded.questions.append(Question(str(qid), image, q["question"], truth, group))
        return loaded

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        scores = {q.qid: float(gqa_normalize(answers[q.qid]) == gqa_normalize(q.truth))
                  for q in questions if q.qid in answers}
        return {"overall": percent(list(scores.values())), "count": len(scores),
                "perStructuralType": breakdown(questions, scores, "structural"),
                "perSemanticType": breakdown(questions, scores, "semantic")}

    def submission(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Submission:
        content = [{"questionId": q.qid, "prediction": gqa_normalize(answers[q.qid])}
                   for q in questions if q.qid in answers]
        return Submission("gqa_results.json", content, self.upload)

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        return by_key(load_json(path, "results file"), path, "questionId", "prediction")

"""VizWiz-VQA: questions blind people asked about their photos; some cannot be answered.

File as downloaded (https://vizwiz.org/tasks-and-datasets/vqa/): ``val.json`` / ``test.json``, a list
of ``{"image": "VizWiz_val_00000000.jpg", "question", "answers": [{"answer", "answer_confidence"}
x 10], "answer_type", "answerable"}`` (no answers in test). Images: ``<images>/<image>``.

Accuracy is the VizWiz-VQA API's (``evaluation.vizwiz_metric``: the prediction always processed,
the annotated answers never, its own contraction table), ``overall`` and ``perAnswerType``
(``yes/no``, ``number``, ``other``, ``unanswerable``), ``round(100 * sum / n, 2)``: what the
evaluation server reports for the same results file. The prompt asks for "Unanswerable" when the
image does not tell (LLaVA-1.5's VizWiz prompt). A model's reply goes into the results file
``[{"image", "answer"}]`` through EvalAI's answer processor, as LLaVA's
``convert_vizwiz_for_submission.py`` writes it; the test split's file is uploaded to EvalAI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import (
    SHORT_ANSWER,
    Benchmark,
    BenchmarkError,
    Layout,
    Loaded,
    Question,
    Submission,
    breakdown,
    by_key,
    load_json,
    percent,
)
from evaluation.vizwiz_metric import vizwiz_accuracy
from evaluation.vqa_metric import evalai_normalize


class VizWiz(Benchmark):
    name = "vizwiz"
    layouts = (Layout("test", ("test.json",), "test"), Layout("val", ("val.json",), "val"))
    prompt_suffix = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER
    upload = "https://eval.ai/web/challenges/challenge-page/2185 (VizWiz VQA, test-standard phase)"

    def results_answer(self, reply: str) -> str:
        return evalai_normalize(reply)

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (path,) = questions
        data = load_json(path, "VizWiz file")
        if not isinstance(data, list):
            raise BenchmarkError(f"{path}: not a VizWiz file (expected a JSON list of questions)")
        loaded = Loaded([])
        for n, q in enumerate(data):
            if not isinstance(q, dict) or not isinstance(q.get("image"), str) or not isinstance(q.get("question"), str):
                loaded.skip("malformed_question", f"{path} #{n}")
                continue
            answers = q.get("answers")
            if answers and not (isinstance(answers, list)
                                and all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)):
                loaded.skip("malformed_question", f"{path} #{n}: answers must be a list of {{'answer': str}}")
                continue
            if not loaded.admit(q["image"], images / q["image"] if images is not None else None):
                continue
            truth = [a["answer"] for a in answers] if answers else None
            group = {"answer_type": str(q.get("answer_type", ""))}
            loaded.questions.append(Question(q["image"], images / q["image"] if images is not None else None,
                                             q["question"], truth, group))
        return loaded

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        return {q.qid: vizwiz_accuracy(answers[q.qid], q.truth) for q in questions if q.qid in answers}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        scores = self.question_scores(questions, answers)
        return {"overall": percent(list(scores.values())), "count": len(scores),
                "perAnswerType": breakdown(questions, scores, "answer_type")}

    def submission(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Submission:
        content = [{"image": q.qid, "answer": answers[q.qid]} for q in questions if q.qid in answers]
        return Submission("vizwiz_results.json", content, self.upload)

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        return by_key(load_json(path, "results file"), path, "image", "answer")

"""VizWiz-VQA: questions blind people asked about their photos; some cannot be answered.

File as downloaded (https://vizwiz.org/tasks-and-datasets/vqa/): ``val.json`` / ``test.json``, a list
of ``{"image": "VizWiz_val_00000000.jpg", "question", "answers": [{"answer", "answer_confidence"}
x 10], "answer_type", "answerable"}`` (no answers in test). Images: ``<images>/<image>``.

Accuracy is VizWiz's evaluation, a port of the official VQA accuracy over the 10 answers (so an
unanswerable question is answered right with "unanswerable", what most of its annotators wrote);
reported overall, per answer type (``yes/no``, ``number``, ``other``, ``unanswerable``) and over
answerable / unanswerable questions. The prompt asks for "Unanswerable" when the image does not
tell (LLaVA-1.5's VizWiz prompt). The test split goes to the EvalAI server as
``[{"image", "answer"}]``, answers through EvalAI's processor, an empty answer as "unanswerable".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import (
    SHORT_ANSWER,
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
from evaluation.benchmarks.vqa import submitted_scores
from evaluation.vqa_metric import evalai_normalize


class VizWiz(Benchmark):
    name = "vizwiz"
    prompt_suffix = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER
    upload = "https://eval.ai/web/challenges/challenge-page/2185 (VizWiz VQA, test-standard phase)"

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
            image = images / q["image"]
            if not loaded.admit(q["image"], image):
                continue
            answers = [str(a["answer"]) for a in q["answers"]] if q.get("answers") else None
            group = {"answer_type": str(q.get("answer_type", "")),
                     "answerable": "answerable" if q.get("answerable", 1) else "unanswerable"}
            loaded.questions.append(Question(q["image"], image, q["question"], answers, group))
        return loaded

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        scores = submitted_scores(questions, answers)
        return {"overall": percent(list(scores.values())), "count": len(scores),
                "perAnswerType": breakdown(questions, scores, "answer_type"),
                "answerability": breakdown(questions, scores, "answerable")}

    def submission(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Submission:
        content = [{"image": q.qid, "answer": evalai_normalize(answers[q.qid]) or "unanswerable"}
                   for q in questions if q.qid in answers]
        return Submission("vizwiz_results.json", content, self.upload)

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        return by_key(load_json(path, "results file"), path, "image", "answer")

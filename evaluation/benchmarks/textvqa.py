"""TextVQA: questions that need reading the text in the image.

File as downloaded (https://textvqa.org/dataset/): ``TextVQA_0.5.1_val.json``
``{"data": [{"question_id", "question", "image_id", "answers": [x 10], ...}]}`` (no answers in
test). Images: ``<images>/<image_id>.jpg`` (``train_val_images/train_images``).

Accuracy as m4c's ``TextVQAAccuracyEvaluator`` computes it (the TextVQA evaluation server; LLaVA's
``eval_textvqa.py``): EvalAI's answer processor on the prediction and on every answer, always, then
the leave-one-out VQA score (``evaluation.vqa_metric.leave_one_out_accuracy``), averaged, then
``100. * accuracy`` printed with 2 decimals (the mean first: ``percent_of_mean``). The evaluator
asserts exactly 10 answers per question; a question with another number is a counted skip. A
model's reply goes into the results file through EvalAI's answer processor (as for VQAv2); the test
split goes to the EvalAI server as ``[{"question_id", "answer"}]``.
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
    is_int,
    load_json,
    percent_of_mean,
)
from evaluation.vqa_metric import evalai_normalize, leave_one_out_accuracy


class TextVQA(Benchmark):
    name = "textvqa"
    layouts = (Layout("val", ("TextVQA_0.5.1_val.json",), "train_images"),)
    upload = "https://eval.ai/web/challenges/challenge-page/874 (TextVQA, test phase)"

    def results_answer(self, reply: str) -> str:
        return evalai_normalize(reply)

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (path,) = questions
        data = load_json(path, "TextVQA file")
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise BenchmarkError(f"{path}: not a TextVQA file (expected an object with a 'data' list)")
        loaded = Loaded([])
        for n, q in enumerate(data["data"]):
            if not isinstance(q, dict) or not {"question_id", "question", "image_id"} <= set(q):
                loaded.skip("malformed_question", f"{path} #{n}")
                continue
            if not is_int(q["question_id"]):
                loaded.skip("non_integer_id", f"{path} #{n}: question_id {q['question_id']!r}")
                continue
            answers = q.get("answers")
            if answers and (not isinstance(answers, list) or len(answers) != 10
                            or not all(isinstance(a, str) for a in answers)):
                loaded.skip("not_ten_answers", f"{path} #{n}: the evaluator needs exactly 10 answers (strings)")
                continue
            qid, image = str(q["question_id"]), images / f"{q['image_id']}.jpg" if images is not None else None
            if not loaded.admit(qid, image):
                continue
            loaded.questions.append(Question(qid, image, str(q["question"]), list(answers) if answers else None))
        return loaded

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        return {q.qid: leave_one_out_accuracy(answers[q.qid], q.truth) for q in questions if q.qid in answers}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        scores = list(self.question_scores(questions, answers).values())
        return {"overall": percent_of_mean(scores), "count": len(scores)}

    def submission(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Submission:
        content = [{"question_id": int(q.qid), "answer": answers[q.qid]} for q in questions if q.qid in answers]
        return Submission("textvqa_results.json", content, self.upload)

"""TextVQA: questions that need reading the text in the image.

File as downloaded (https://textvqa.org/dataset/): ``TextVQA_0.5.1_val.json``
``{"data": [{"question_id", "question", "image_id", "answers": [x 10], ...}]}`` (no answers in
test). Images: ``<images>/<image_id>.jpg`` (``train_val_images/train_images``).

Accuracy as the TextVQA evaluation server computes it (m4c's ``TextVQAAccuracyEvaluator``): EvalAI's
answer processor on the prediction and on every answer, always, then the leave-one-out VQA score
(``evaluation.vqa_metric.leave_one_out_accuracy``); reported ``round(100 * mean, 2)``. The test split
goes to the EvalAI server as ``[{"question_id", "answer"}]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import Benchmark, BenchmarkError, Loaded, Question, Submission, load_json, percent
from evaluation.vqa_metric import evalai_normalize, leave_one_out_accuracy


class TextVQA(Benchmark):
    name = "textvqa"
    upload = "https://eval.ai/web/challenges/challenge-page/874 (TextVQA, test phase)"

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
            qid, image = str(q["question_id"]), images / f"{q['image_id']}.jpg"
            if not loaded.admit(qid, image):
                continue
            answers = [str(a) for a in q["answers"]] if q.get("answers") else None
            loaded.questions.append(Question(qid, image, str(q["question"]), answers))
        return loaded

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        scores = [leave_one_out_accuracy(answers[q.qid], q.truth) for q in questions if q.qid in answers]
        return {"overall": percent(scores), "count": len(scores)}

    def submission(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Submission:
        content = [{"question_id": int(q.qid), "answer": evalai_normalize(answers[q.qid])}
                   for q in questions if q.qid in answers]
        return Submission("textvqa_results.json", content, self.upload)

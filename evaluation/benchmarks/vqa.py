"""VQAv2 and OK-VQA: the official VQA questions/annotations JSON and the official VQA accuracy.

Files as downloaded (https://visualqa.org/download.html, https://okvqa.allenai.org/download.html):
``v2_OpenEnded_mscoco_<subtype>_questions.json`` ``{"data_subtype", "questions": [{image_id,
question, question_id}]}`` and, where the split has them, ``v2_mscoco_<subtype>_annotations.json``
``{"annotations": [{question_id, question_type, answer_type, answers: [{answer, ...} x 10]}]}``
(OK-VQA: ``OpenEnded_mscoco_val2014_questions.json`` / ``mscoco_val2014_annotations.json``). Images
are COCO's ``COCO_<subtype>_<image_id:012>.jpg`` (test-dev questions use the test2015 images).

Scores as ``VQAEval.accuracy`` reports them: ``overall``, ``perQuestionType``, ``perAnswerType``,
each ``round(100 * sum / n, 2)`` of the per-question accuracy of
``evaluation.vqa_metric.vqa_accuracy``, the answer through EvalAI's answer processor first (as the
EvalAI server does; the processor is idempotent, so a file already processed scores the same). A
model's reply is written into the results file through EvalAI's answer processor, as LLaVA's
``convert_vqav2_for_submission.py`` does. Without annotations (test-dev, test) the answers go to the
EvalAI server in its results format, ``[{"question_id": int, "answer": str}]``.

Question ids and image ids must be integers (the official format; COCO file names are built from
the image id): an entry with another id is a counted skip, never an EvalAI file that cannot be
written.
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
    is_int,
    load_json,
    percent,
)
from evaluation.vqa_metric import evalai_normalize, vqa_accuracy


def coco_image(images: Path, subtype: str, image_id: int) -> Path:
    """COCO's file name for an image id, in ``images`` or in its ``<subtype>/`` folder."""
    folder = "test2015" if subtype.startswith("test") else subtype
    name = f"COCO_{folder}_{int(image_id):012d}.jpg"
    nested = images / folder / name
    return nested if nested.is_file() else images / name


def submitted_scores(questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
    """The official VQA accuracy of each answered question, the answer through EvalAI's answer
    processor first (as the EvalAI server scores an uploaded file)."""
    return {q.qid: vqa_accuracy(evalai_normalize(answers[q.qid]), q.truth) for q in questions if q.qid in answers}


class VQAv2(Benchmark):
    name = "vqav2"
    layouts = (Layout("test-dev2015", ("v2_OpenEnded_mscoco_test-dev2015_questions.json",), "test2015"),
               Layout("val2014", ("v2_OpenEnded_mscoco_val2014_questions.json",), "val2014",
                      "v2_mscoco_val2014_annotations.json"))
    needs = ("questions", "annotations", "images")
    upload = "https://eval.ai/web/challenges/challenge-page/830 (VQA Challenge, the matching phase)"

    def results_answer(self, reply: str) -> str:
        return evalai_normalize(reply)

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (path,) = questions
        data = load_json(path, "questions file")
        if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
            raise BenchmarkError(f"{path}: not a VQA questions file (expected an object with a 'questions' list)")
        subtype = str(data.get("data_subtype", ""))
        truth = self._annotations(annotations) if annotations else {}
        loaded = Loaded([])
        for n, q in enumerate(data["questions"]):
            if not isinstance(q, dict) or not {"question_id", "image_id", "question"} <= set(q):
                loaded.skip("malformed_question", f"{path} #{n}")
                continue
            if not is_int(q["question_id"]) or not is_int(q["image_id"]):
                loaded.skip("non_integer_id", f"{path} #{n}: question_id {q['question_id']!r}, image_id {q['image_id']!r}")
                continue
            qid = str(q["question_id"])
            image = coco_image(images, subtype, q["image_id"]) if images is not None else None
            entry = truth.pop(qid, None)
            if not loaded.admit(qid, image):
                continue
            if annotations and entry is None:
                loaded.skip("no_annotation", qid)
                continue
            answers, group = entry if entry else (None, {})
            loaded.questions.append(Question(qid, image, str(q["question"]), answers, group))
        for qid in truth:
            loaded.skip("annotation_for_unknown_question", qid, question=False)
        return loaded

    @staticmethod
    def _annotations(path: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
        data = load_json(path, "annotations file")
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise BenchmarkError(f"{path}: not a VQA annotations file (expected an object with an 'annotations' list)")
        out = {}
        for n, a in enumerate(data["annotations"]):
            try:
                answers = [str(x["answer"]) for x in a["answers"]]
                out[str(a["question_id"])] = (answers, {"question_type": str(a.get("question_type", "")),
                                                        "answer_type": str(a.get("answer_type", ""))})
            except (KeyError, TypeError) as exc:
                raise BenchmarkError(f"{path}: annotation #{n} lacks {exc} (question_id, answers[].answer)") from None
        return out

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        return submitted_scores(questions, answers)

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        scores = self.question_scores(questions, answers)
        return {"overall": percent(list(scores.values())), "count": len(scores),
                "perQuestionType": breakdown(questions, scores, "question_type"),
                "perAnswerType": breakdown(questions, scores, "answer_type")}

    def submission(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Submission | None:
        content = [{"question_id": int(q.qid), "answer": answers[q.qid]} for q in questions if q.qid in answers]
        return Submission(f"{self.name}_results.json", content, self.upload)


class OKVQA(VQAv2):
    name = "okvqa"
    layouts = (Layout("val2014", ("OpenEnded_mscoco_val2014_questions.json",), "val2014",
                      "mscoco_val2014_annotations.json"),)
    upload = ""  # OK-VQA is scored offline on val; there is no evaluation server

    def submission(self, questions, answers):
        return None

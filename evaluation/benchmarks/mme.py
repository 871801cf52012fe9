"""MME: 14 yes/no subtasks, two questions per image (one true, one false).

Layout as released (``MME_Benchmark_release_version/``, give it as ``--questions``): one folder per
subtask; either ``<task>/images/*`` + ``<task>/questions_answers_YN/*.txt`` or the images and the
``.txt`` files side by side in ``<task>/``. Each ``.txt`` is named after its image and holds two
lines ``question<TAB>Yes|No``.

Scored as the official ``eval_tool/calculation.py`` (https://github.com/BradyFU/Awesome-Multimodal-
Large-Language-Models, Evaluation branch): an answer is yes/no when it is exactly that (lower-cased),
else by whether its first 4 characters contain "yes" (then "no"), else it is "other" and wrong; per
subtask ``acc`` = ``right / total * 100`` and ``acc_plus`` = ``images with both right / images *
100``, the subtask score their sum, perception = the sum of the 10 perception subtasks' scores
(max 2000), cognition of the 4 cognition subtasks (max 800), added in calculation.py's order.
Nothing is rounded: calculation.py prints the unrounded sums (``total score: 1510.7071428571428``),
and so do we. Results files are the official tool's layout: a folder of ``<task>.txt`` with
``image<TAB>question<TAB>truth<TAB>answer`` lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import Benchmark, BenchmarkError, Layout, Loaded, Question
from errors import UserError, read_utf8

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def mme_answer(text: str) -> str:
    """calculation.py's parse_pred_ans on the lower-cased answer."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def _pairs(task_dir: Path) -> list[tuple[Path, Path]]:
    """(question file, image) pairs of one subtask folder, in either released layout."""
    qa_dir = task_dir / "questions_answers_YN"
    image_dir = task_dir / "images" if qa_dir.is_dir() else task_dir
    qa_dir = qa_dir if qa_dir.is_dir() else task_dir
    pairs = []
    for txt in sorted(qa_dir.glob("*.txt")):
        image = next((image_dir / (txt.stem + s) for s in IMAGE_SUFFIXES if (image_dir / (txt.stem + s)).is_file()), None)
        pairs.append((txt, image))
    return pairs


class MME(Benchmark):
    name = "mme"
    layouts = (Layout("release", ("MME_Benchmark_release_version",)),)
    needs = ("questions",)

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (root,) = questions
        if not root.is_dir():
            raise BenchmarkError(f"{root}: MME is read from its released folder (MME_Benchmark_release_version/)")
        tasks = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name in PERCEPTION + COGNITION]
        if not tasks:
            raise BenchmarkError(f"{root}: no MME subtask folders ({', '.join(PERCEPTION + COGNITION)})")
        loaded = Loaded([])
        for task in tasks:
            for txt, image in _pairs(task):
                if image is None:
                    loaded.skip("missing_image", f"{task.name}/{txt.stem}")
                    continue
                try:
                    lines = [line for line in read_utf8(txt, "MME question file").splitlines() if line.strip()]
                except UserError as exc:
                    raise BenchmarkError(str(exc)) from None
                for index, line in enumerate(lines):
                    question, sep, answer = line.rpartition("\t")
                    if not sep or answer.strip().lower() not in ("yes", "no"):
                        loaded.skip("malformed_question", f"{txt} line {index + 1}")
                        continue
                    loaded.questions.append(Question(f"{task.name}/{image.name}/{index}", image, question.strip(),
                                                     answer.strip().lower(), {"subtask": task.name,
                                                                              "image": image.name}))
        return loaded

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        return {q.qid: float(mme_answer(answers[q.qid]) == q.truth) for q in questions if q.qid in answers}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        tasks: dict[str, dict] = {}
        for q in questions:
            if q.qid not in answers:
                continue
            t = tasks.setdefault(q.group["subtask"], {"right": 0, "total": 0, "images": {}})
            right = mme_answer(answers[q.qid]) == q.truth
            t["right"] += right
            t["total"] += 1
            t["images"].setdefault(q.group["image"], []).append(right)
        per_task = {}
        for name, t in sorted(tasks.items()):
            # calculation.py: acc = accuracy_score (right / total), acc_plus = pairs right / images, and
            # task_score = 0 + acc * 100 + acc_plus * 100 -- in that order, unrounded.
            acc, acc_plus = t["right"] / t["total"] * 100, sum(all(v) for v in t["images"].values()) / len(t["images"]) * 100
            per_task[name] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "count": t["total"]}
        total = {group: sum(per_task[n]["score"] for n in names if n in per_task)
                 for group, names in (("perception", PERCEPTION), ("cognition", COGNITION))}
        return {**total, "subtasks": per_task, "count": sum(t["count"] for t in per_task.values())}

    def headline(self, metrics: Mapping) -> str:
        """calculation.py's ``total score:`` lines (unrounded)."""
        return f"perception total score: {metrics['perception']!r}, cognition total score: {metrics['cognition']!r}"

    def table_value(self, metrics: Mapping) -> float | None:
        """LLaVA-1.5's MME column: the perception total (1510.7 for LLaVA-1.5-7B)."""
        return metrics.get("perception")

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        if not path.is_dir():
            raise BenchmarkError(f"{path}: MME results are a folder of <task>.txt files (image, question, truth, answer)")
        by_text = {(q.group["subtask"], q.group["image"], q.question): q.qid for q in questions}
        answers: dict[str, str] = {}
        for txt in sorted(path.glob("*.txt")):
            for n, line in enumerate(read_utf8(txt, "MME results file").splitlines()):
                fields = line.split("\t")
                if not line.strip():
                    continue
                if len(fields) != 4:
                    raise BenchmarkError(f"{txt}: line {n + 1} needs image, question, truth, answer (tab-separated)")
                # A line for no question of the benchmark keeps a key of its own, so it counts as unknown.
                qid = by_text.get((txt.stem, fields[0], fields[1].strip()), f"{txt.name} line {n + 1}")
                if qid in answers:
                    raise BenchmarkError(f"{txt}: line {n + 1}: question {qid} appears twice")
                answers[qid] = fields[3]
        return answers

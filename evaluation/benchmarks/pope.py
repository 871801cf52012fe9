"""POPE: "Is there a <object> in the image?" — object hallucination, yes/no.

Files as published (https://github.com/RUCAIBox/POPE, ``output/coco/coco_pope_{random,popular,
adversarial}.json``): JSON lines ``{"question_id", "image", "text", "label": "yes"|"no"}``; give one
``--questions`` per split (the split is named after the file). Images: ``<images>/<image>`` (COCO val2014).

Scored per split as LLaVA's ``llava/eval/eval_pope.py``: the answer read as it reads it (first
sentence; "no"/"No"/"not" among its words -> no, else yes), "yes" as the positive class, and
accuracy, precision, recall, F1 (from the *unrounded* precision and recall) and the share of "yes"
answers as unrounded fractions -- the numbers eval_pope.py prints on its ``Accuracy: ...`` lines.
The summary printed is its last line, ``'%.3f, %.3f, %.3f, %.3f, %.3f' % (f1, acc, precision,
recall, yes_ratio)``. Where eval_pope.py divides by zero (no "yes" answer, or no "yes" label), the
value is ``None``. Labels must be exactly ``yes`` or ``no`` (eval_pope.py would count any other
label as yes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import Benchmark, BenchmarkError, Layout, Loaded, Question, load_json, load_jsonl


def pope_answer(text: str) -> str:
    """LLaVA's eval_pope.py: the first sentence, commas dropped, then yes unless it says no."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def split_name(path: Path) -> str:
    match = re.search(r"pope_(\w+)$", path.stem)
    return match.group(1) if match else path.stem


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def pope_metrics(tp: int, fp: int, tn: int, fn: int) -> dict:
    """eval_pope.py's numbers for one split's counts, unrounded."""
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision is not None and recall is not None \
        and precision + recall else None
    total = tp + fp + tn + fn
    return {"accuracy": _ratio(tp + tn, total), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": _ratio(tp + fp, total), "count": total, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _three(value: float | None) -> str:
    return "undefined" if value is None else "%.3f" % value


class POPE(Benchmark):
    name = "pope"
    layouts = (Layout("coco", tuple(f"coco_pope_{split}.json" for split in ("random", "popular", "adversarial")),
                      "val2014"),)
    prompt_suffix = ""  # LLaVA-1.5 asks POPE's questions as they are ("... in the image?")

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        loaded = Loaded([])
        for path in questions:
            split = split_name(path)
            for n, q in enumerate(load_jsonl(path, "POPE questions file")):
                if not isinstance(q, dict) or not {"question_id", "image", "text"} <= set(q):
                    loaded.skip("malformed_question", f"{path} line {n + 1}")
                    continue
                image = images / str(q["image"]) if images is not None else None
                if not loaded.admit(f"{split}/{q['question_id']}", image):
                    continue
                label = q.get("label")
                if label not in (None, "yes", "no"):
                    raise BenchmarkError(f"{path}: line {n + 1}: label must be \"yes\" or \"no\", got {label!r}")
                loaded.questions.append(Question(f"{split}/{q['question_id']}", image, str(q["text"]), label,
                                                 {"split": split}))
        return loaded

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        return {q.qid: float((pope_answer(answers[q.qid]) == "yes") == (q.truth == "yes"))
                for q in questions if q.qid in answers}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        splits: dict[str, dict] = {}
        for q in questions:
            if q.qid not in answers:
                continue
            c = splits.setdefault(q.group["split"], {"tp": 0, "fp": 0, "tn": 0, "fn": 0})
            predicted_yes = pope_answer(answers[q.qid]) == "yes"
            truth_yes = q.truth == "yes"
            c[("t" if predicted_yes == truth_yes else "f") + ("p" if predicted_yes else "n")] += 1
        out = {split: pope_metrics(**c) for split, c in sorted(splits.items())}
        return {"splits": out, "count": sum(s["count"] for s in out.values())}

    def headline(self, metrics: Mapping) -> str:
        """eval_pope.py's last line per split: f1, accuracy, precision, recall, yes ratio (%.3f)."""
        return "; ".join(f"{split}: f1, acc, precision, recall, yes_ratio = "
                         + ", ".join(_three(row[k]) for k in ("f1", "accuracy", "precision", "recall", "yes_ratio"))
                         for split, row in metrics.get("splits", {}).items()) or "no public answers"

    def table_value(self, metrics: Mapping) -> float | None:
        """LLaVA-1.5's POPE column: the F1 of the random, popular and adversarial splits averaged, in
        percent (85.9 for LLaVA-1.5-7B); None unless all three are scored."""
        f1 = [metrics.get("splits", {}).get(split, {}).get("f1") for split in ("random", "popular", "adversarial")]
        return None if None in f1 else 100 * sum(f1) / 3

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        """LLaVA's answers file: JSON lines ``{"question_id", "text"}`` (``"answer"`` accepted too;
        ``"split"`` when several splits are scored together)."""
        rows = load_jsonl(path, "answers file") if path.suffix == ".jsonl" else load_json(path, "answers file")
        splits = sorted({q.group["split"] for q in questions})
        answers: dict[str, str] = {}
        for n, row in enumerate(rows if isinstance(rows, list) else []):
            text = row.get("text", row.get("answer")) if isinstance(row, dict) else None
            split = row.get("split", splits[0] if len(splits) == 1 else None) if isinstance(row, dict) else None
            if not isinstance(text, str) or "question_id" not in row or split is None:
                raise BenchmarkError(f"{path}: entry #{n} needs question_id, text (and split with several splits)")
            qid = f"{split}/{row['question_id']}"
            if qid in answers:
                raise BenchmarkError(f"{path}: question {qid} appears twice")
            answers[qid] = text
        return answers

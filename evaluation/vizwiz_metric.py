"""VizWiz-VQA accuracy as the VizWiz-VQA Python API computes it (and its evaluation server reports).

Reference: the VizWiz-VQA API's ``vqaEval.py`` (``VQAEval.evaluate``, Qing Li, distributed from
https://vizwiz.org/tasks-and-datasets/vqa/ with the annotations; no public repository or commit to
pin, so the behaviour is written out here and pinned case by case in ``tests/test_benchmarks.py``).
It descends from GT-Vision-Lab's ``vqaEval.py`` (``evaluation.vqa_metric``) but differs from it in
three ways that change scores:

V1  The prediction is **always** processed (``'\\n'``/``'\\t'`` -> space, strip, punctuation, digits
    and articles, contractions); there is no "all answers identical" gate.
V2  The ground-truth answers are **never** processed: they are compared exactly as annotated, so a
    prediction only matches an answer written in lower case, without articles or punctuation
    (``"Red"`` in the annotations never matches anything a prediction can become).
V3  Its contraction table is VQA's with the apostrophe written as U+2019 (``’``) in 112 of its 120
    entries, so ``"dont"`` becomes ``"don’t"`` and no longer equals an annotated ``"don't"``; the
    exceptions are listed below (:data:`CONTRACTIONS`).

Leave-one-out is by position (``i != j``), each answer's accuracy ``min(1, matches / 3)``, a
question's accuracy the mean over its answers; ``overall`` and ``perAnswerType`` are
``round(100 * sum / n, 2)`` (``setAccuracy``), in the order of the annotation file.
"""

from __future__ import annotations

from collections.abc import Sequence

from evaluation.vqa_metric import CONTRACTIONS as VQA_CONTRACTIONS
from evaluation.vqa_metric import clean_whitespace, process_digit_article, process_punctuation

_CURLY = "\u2019"
# The entries of the VizWiz table that kept the ASCII apostrophe: these two keys ...
_ASCII_KEYS = frozenset({"couldn'tve", "hadn'tve"})
# ... and the values of these keys.
_ASCII_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})

CONTRACTIONS: dict[str, str] = {
    (key if key in _ASCII_KEYS else key.replace("'", _CURLY)): (value if key in _ASCII_VALUES else value.replace("'", _CURLY))
    for key, value in VQA_CONTRACTIONS.items()
}


def vizwiz_prediction(text: str) -> str:
    """The prediction as the VizWiz API compares it (V1, V3)."""
    return process_digit_article(process_punctuation(clean_whitespace(text)), CONTRACTIONS)


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's accuracy in ``[0, 1]``: the processed prediction against the raw answers (V2),
    leave-one-out by position. An empty answer list is a ``ValueError`` (the API divides by zero)."""
    if not answers:
        raise ValueError("answers must contain at least one ground-truth answer")
    pred = vizwiz_prediction(prediction)
    accs = [min(1, float(sum(1 for j, a in enumerate(answers) if j != i and a == pred)) / 3)
            for i in range(len(answers))]
    return float(sum(accs)) / len(accs)

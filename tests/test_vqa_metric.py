"""Tests for vqa_metric against the official VQA evaluation semantics.

Reference: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py at
commit a013f0043c1e2cdc995922dfe257f7149aa9af06 (head).  "L<n>" in the comments
is a line of that file.  Every expected value below was worked out by hand from
the official code; none is computed with the code under test.

Optional differential check: set VQA_OFFICIAL_EVAL_PY to a local copy of the
official vqaEval.py to compare against it on random inputs (skipped otherwise;
no network is used).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
from pathlib import Path

import pytest


from evaluation.vqa_metric import (
    exact_match,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    score,
    vqa_accuracy,
)

TEN = 10


def approx(x):
    return pytest.approx(x, abs=1e-12, rel=0)


def mixed(pred_like: str, n_match: int, other: str = "zzz") -> list[str]:
    """n_match copies of pred_like, padded to 10 with a different answer."""
    return [pred_like] * n_match + [other] * (TEN - n_match)


# --------------------------------------------------------------------------
# processPunctuation, L130-L140
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        # L137-L139: a period not followed by a digit is deleted.
        ("yes.", "yes"),
        ("mr. smith", "mr smith"),
        ("st.louis", "stlouis"),  # deleted, not replaced by a space
        # L62: periods followed by a digit survive.
        ("3.5", "3.5"),
        (".5", ".5"),
        # L62 quirk: "(?!<=\d)" is a look-ahead that can never fire, so a period
        # AFTER a digit is still deleted (an intended look-behind would keep it).
        ("3.", "3"),
        ("<=5.", "  5"),  # '<' and '=' are in the list (L64-L66); no space around -> ' '
        # L63 + L133-L134: a digit-comma-digit anywhere -> every mark is deleted.
        ("1,000", "1000"),
        ("red/blue 1,2", "redblue 12"),
        # L133/L136: no adjacent space, no digit,digit -> mark becomes a space.
        ("red,blue", "red blue"),
        ("red/blue", "red blue"),
        ("1/2", "1 2"),
        ("t-shirt", "t shirt"),
        ("yes!", "yes "),
        ("yes?", "yes "),
        ('"yes"', " yes "),
        # L133-L134: mark next to a space -> deleted (all of its occurrences).
        ("red, blue", "red blue"),
        ("1, 000", "1 000"),
        ("a/b c/ d", "ab c d"),
        # Decided per mark: " (" is present so '(' is deleted, but ')' has no
        # adjacent space so it becomes a space.
        ("ab (c)", "ab c "),
        # L64-L66: apostrophe, colon, %, *, #, & are NOT punctuation here.
        ("don't", "don't"),
        ("12:30", "12:30"),
        ("50%", "50%"),
        ("a*b#c&d", "a*b#c&d"),
        # No lower-casing / whitespace collapse in this step.
        ("Yes  No", "Yes  No"),
    ],
)
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


def test_period_strip_count_is_32():
    # L137-L139: re.UNICODE (== 32) is passed as the `count` argument.
    assert process_punctuation("yes" + "." * 32) == "yes"
    assert process_punctuation("yes" + "." * 33) == "yes."
    assert process_punctuation("." * 40) == "." * 8


def test_digits_are_ascii_only():
    # Q8: Python-2 byte patterns without re.UNICODE -> \d is [0-9] only, so an
    # Arabic-Indic digit does not trigger the comma rule nor protect a period.
    assert process_punctuation("\u0663,\u0663") == "\u0663 \u0663"
    assert process_punctuation("3.\u0663") == "3\u0663"


# --------------------------------------------------------------------------
# processDigitArticle, L142-L155
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        # L144: lower-case + whitespace split/join.
        ("Yes", "yes"),
        ("  red   car ", "red car"),
        # L43-L55, L146: whole-token number words, zero..ten and none.
        ("two", "2"),
        ("Two", "2"),
        ("none", "0"),
        ("zero", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("one dog", "1 dog"),
        ("twofold", "twofold"),
        # L56-L59, L147: articles dropped as tokens only.
        ("a dog", "dog"),
        ("A Dog", "dog"),
        ("an apple", "apple"),
        ("the", ""),
        ("banana", "banana"),
        # L21-L42, L151-L153: contractions without apostrophe.
        ("dont", "don't"),
        ("Dont", "don't"),
        ("don't", "don't"),
        ("whats", "what's"),
        ("yall'll", "y'all'll"),
        ("twas", "'twas"),
        ("somebody'd", "somebodyd"),  # reversed entry in the official table
        ("Im", "im"),  # key "Im" has a capital: unreachable after lower()
        ("ive", "ive"),
    ],
)
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


# --------------------------------------------------------------------------
# normalize_answer = L88-L94 cleanup + L100/L102 + L101/L103
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", "yes"),
        ("yes!", "yes"),
        ("Two dogs.", "2 dogs"),
        ("twenty-two", "twenty 2"),
        ("The 1,000 Dogs!", "1000 dogs"),
        ("None.", "0"),
        ("A dog?", "dog"),
        ("\tDont\n", "don't"),
        # Cleanup happens before punctuation: "\n/" becomes " /", so '/' is
        # next to a space and all '/' are deleted (L133) rather than spaced.
        ("x\n/y z/w", "x y zw"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# --------------------------------------------------------------------------
# vqa_accuracy: leave-one-out, L105-L112
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n_match, expected",
    [
        (0, 0.0),
        # 1 match: 9 subsets contain it (1/3 each), 1 does not: 9*(1/3)/10
        (1, 0.3),
        # 2 matches: 8 subsets contain both (2/3), 2 contain one (1/3):
        # (8*(2/3) + 2*(1/3)) / 10 = 0.6
        (2, 0.6),
        # 3 matches: 7*1 + 3*(2/3) = 9 -> 0.9
        (3, 0.9),
        # 4 matches: every subset has >= 3 -> 1.0
        (4, 1.0),
        (7, 1.0),
        (10, 1.0),
    ],
)
def test_leave_one_out_ten_answers(n_match, expected):
    assert vqa_accuracy("cat", mixed("cat", n_match)) == approx(expected)


def test_identical_answers_are_left_out_by_position():
    # L106 compares answer dicts, which differ by answer_id: exactly one answer
    # is removed even when all ten have the same text -> 9 matches -> 1.0.
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0


@pytest.mark.parametrize(
    "pred, answers, expected",
    [
        # One answer: the leave-one-out set is empty -> always 0 (L105-L108).
        ("cat", ["cat"], 0.0),
        # Two answers: pos0 others ["dog"] -> 0; pos1 others ["cat"] -> 1/3.
        ("cat", ["cat", "dog"], (0 + 1 / 3) / 2),
        # Three identical: each subset has 2 matches -> 2/3.
        ("cat", ["cat"] * 3, 2 / 3),
        # Five answers, one match: 4 subsets * 1/3, over 5 -> 4/15.
        ("cat", ["cat", "dog", "dog", "dog", "dog"], 4 / 15),
        # Twelve answers, four matches: every subset has >= 3 -> 1.0.
        ("cat", ["cat"] * 4 + ["dog"] * 8, 1.0),
        # Twelve answers, three matches: 9 subsets with 3 -> 1, 3 with 2 -> 2/3.
        ("cat", ["cat"] * 3 + ["dog"] * 9, (9 + 3 * (2 / 3)) / 12),
    ],
)
def test_any_number_of_answers(pred, answers, expected):
    assert vqa_accuracy(pred, answers) == approx(expected)


def test_empty_answers_raises():
    # L112 divides by len(gtAcc) == 0 in the official code.
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


def test_type_errors():
    with pytest.raises(TypeError):
        vqa_accuracy("cat", "cat")
    with pytest.raises(TypeError):
        vqa_accuracy(None, ["cat"])


# --------------------------------------------------------------------------
# vqa_accuracy: the normalisation gate, L98-L103
# --------------------------------------------------------------------------
def test_gate_all_identical_means_no_normalisation():
    # Ten identical answers: no processing at all, exact case-sensitive match.
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes."] * 10) == 1.0
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy("two", ["two"] * 10) == 1.0


def test_gate_differing_answers_normalise_both_sides():
    # 9 "yes" + 1 "no": both sides normalised (L99-L103), "Yes." -> "yes".
    # positions 0-8: others hold 8 "yes" -> 1; position 9: 9 "yes" -> 1.
    assert vqa_accuracy("Yes.", ["yes"] * 9 + ["no"]) == 1.0
    # Same prediction, gate closed (identical answers) -> 0 (see above).
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 0.0
    # Number words normalised on both sides: "Two" -> "2", "two" -> "2".
    assert vqa_accuracy("2", ["Two"] * 9 + ["3"]) == 1.0
    assert vqa_accuracy("2", ["Two"] * 10) == 0.0


def test_gate_is_decided_on_raw_strings():
    # "yes" vs "Yes" are distinct raw strings -> gate opens; all ten become "yes".
    assert vqa_accuracy("YES", ["yes"] * 9 + ["Yes"]) == 1.0
    assert vqa_accuracy("YES", ["yes"] * 10) == 0.0
    # After normalisation the answers may collapse: ["a dog"]*5 + ["dog"]*5 all
    # become "dog", so "the dog" matches ten -> 1.0.
    assert vqa_accuracy("the dog", ["a dog"] * 5 + ["dog"] * 5) == 1.0


def test_gate_sees_whitespace_cleaned_answers():
    # L87-L90: answers are cleaned before the gate, so "yes\t" == "yes" and the
    # set has a single element -> exact comparison; " yes\n" cleaned to "yes".
    assert vqa_accuracy(" yes\n", ["yes\t"] * 5 + ["yes"] * 5) == 1.0
    # ...and with the gate closed, case still matters.
    assert vqa_accuracy(" Yes\n", ["yes\t"] * 5 + ["yes"] * 5) == 0.0


def test_commas_in_numbers_with_differing_answers():
    # "1,000" -> "1000" (L133-L134) ; 3 of 10 answers are "1000" -> 0.9.
    assert vqa_accuracy("1,000", mixed("1000", 3, "999")) == approx(0.9)
    # "1, 000" -> "1 000" does not match.
    assert vqa_accuracy("1, 000", mixed("1000", 3, "999")) == 0.0


def test_contractions_with_differing_answers():
    # "dont" -> "don't" (L151-L153); "don't" unchanged (apostrophe not in L64-L66).
    answers = ["don't"] * 2 + ["no"] * 8
    assert vqa_accuracy("dont", answers) == approx(0.6)
    assert vqa_accuracy("Don't", answers) == approx(0.6)
    # "do not" is not mapped.
    assert vqa_accuracy("do not", answers) == 0.0


def test_articles_and_numbers_with_differing_answers():
    answers = ["dog"] * 3 + ["cat"] * 7
    assert vqa_accuracy("A dog.", answers) == approx(0.9)
    answers = ["0"] * 4 + ["1"] * 6
    assert vqa_accuracy("None", answers) == 1.0
    assert vqa_accuracy("zero", answers) == 1.0
    assert vqa_accuracy("one", answers) == 1.0


# --------------------------------------------------------------------------
# exact_match (not official; always normalised, any single answer suffices)
# --------------------------------------------------------------------------
def test_exact_match():
    assert exact_match("Two", ["2", "3"]) == 1.0
    assert exact_match("yes", ["yes."] * 10) == 1.0  # vqa_accuracy would be 0.0
    assert exact_match("cat", ["cat"]) == 1.0  # vqa_accuracy would be 0.0
    assert exact_match("cat", ["dog"] * 10) == 0.0
    with pytest.raises(ValueError):
        exact_match("cat", [])


# --------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------
def test_score_aggregates_fractions():
    items = [
        {"prediction": "cat", "answers": mixed("cat", 2), "question_type": "what"},  # 0.6, em 1
        {"prediction": "cat", "answers": mixed("cat", 0), "question_type": "what"},  # 0.0, em 0
        {"prediction": "yes", "answers": ["yes"] * 10, "question_type": "is"},  # 1.0, em 1
        {"prediction": "cat", "answers": mixed("cat", 1)},  # 0.3, em 1, no type
    ]
    out = score(items)
    assert out["count"] == 4
    assert out["vqa_accuracy"] == approx((0.6 + 0.0 + 1.0 + 0.3) / 4)
    assert out["exact_match"] == approx(3 / 4)
    assert set(out["per_question_type"]) == {"what", "is"}
    assert out["per_question_type"]["what"]["count"] == 2
    assert out["per_question_type"]["what"]["vqa_accuracy"] == approx(0.3)
    assert out["per_question_type"]["what"]["exact_match"] == approx(0.5)
    assert out["per_question_type"]["is"] == {"vqa_accuracy": 1.0, "exact_match": 1.0, "count": 1}
    assert out["per_answer_type"] == {}


def test_score_empty():
    out = score([])
    assert out["count"] == 0
    assert out["vqa_accuracy"] == 0.0
    assert out["exact_match"] == 0.0
    assert out["per_question_type"] == {}


# --------------------------------------------------------------------------
# Optional: differential check against a local copy of the official file.
# --------------------------------------------------------------------------
_OFFICIAL = os.environ.get("VQA_OFFICIAL_EVAL_PY")


@pytest.mark.skipif(not _OFFICIAL, reason="set VQA_OFFICIAL_EVAL_PY to the official vqaEval.py")
def test_differential_against_official_file():
    source = Path(_OFFICIAL).read_text(encoding="utf-8")
    source = re.sub(r'print "(.*)"', r'print("\1")', source)  # Python 2 prints
    namespace: dict = {}
    exec(compile(source, _OFFICIAL, "exec"), namespace)
    official_cls = namespace["VQAEval"]

    class _QA:
        def __init__(self, qa):
            self.qa = qa

        def getQuesIds(self):
            return list(self.qa)

    def official(pred, answers):
        gts = {1: {"answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
                   "question_type": "q", "answer_type": "a"}}
        ev = official_cls(_QA(gts), _QA({1: {"answer": pred}}))
        # Python 2 semantics: \d is ASCII-only.
        ev.periodStrip = re.compile(ev.periodStrip.pattern, re.ASCII)
        ev.commaStrip = re.compile(ev.commaStrip.pattern, re.ASCII)
        raw = {}
        ev.setEvalQA = lambda qid, acc: raw.__setitem__(qid, acc)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
        return raw[1]

    atoms = ["yes", "Yes", "no", "2", "two", "Two", "none", "a dog", "dont", "don't", "Im",
             "1,000", "1000", "3.", "3.5", "red/blue", "red, blue", "t-shirt", "yes!", "yes.",
             " yes ", "yes\n", "x\n/y z/w", "12:30", "." * 33, "<=5.", "the", "an apple"]
    rng = random.Random(1234)
    for _ in range(2000):
        pool = rng.sample(atoms, rng.randint(1, 4))
        answers = [rng.choice(pool) for _ in range(rng.choice([1, 2, 3, 10, 10, 12]))]
        pred = rng.choice(pool) if rng.random() < 0.6 else rng.choice(atoms) + rng.choice(["", "s", "."])
        assert vqa_accuracy(pred, answers) == official(pred, answers), (pred, answers)

"""VQA accuracy with exactly the semantics of the official VQA evaluation code.

Reference implementation
------------------------
``GT-Vision-Lab/VQA``, file ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at
the repository head, commit ``a013f0043c1e2cdc995922dfe257f7149aa9af06``
("Fixed processing answers bug", 2021-03-11).  Line numbers quoted below as
``vqaEval.py:L<n>`` refer to that commit.  The code here is an independent,
pure-function rewrite (no mutation of inputs, no printing); the behaviour on any
``(prediction, answers)`` pair is the official one, quirks included.

Summary of the official per-question algorithm (``VQAEval.evaluate``, L86-L122)
-----------------------------------------------------------------------------
1. Every ground-truth answer *and* the prediction have ``'\\n'`` and ``'\\t'``
   replaced by a space and are ``strip()``-ed (L87-L94).  This is always done.
2. If the *cleaned, otherwise raw* ground-truth answers contain more than one
   distinct string (``len(set(gtAnswers)) > 1``, L98), then every ground-truth
   answer and the prediction go through ``processPunctuation`` followed by
   ``processDigitArticle`` (L99-L103).  Otherwise **nothing** is normalised: the
   comparison is an exact, case-sensitive string comparison (see quirk Q1).
3. For each ground-truth answer in turn, the *other* answers are taken
   (leave-one-out, L106), the number of them equal to the prediction is counted
   (L107), and ``min(1, count / 3)`` is recorded (L108).
4. The question's accuracy is the mean of those values (L112).

Quirks reproduced (and where they come from)
--------------------------------------------
Q1  Normalisation gate (L98-L103).  When all ground-truth answers are the same
    string, neither they nor the prediction are normalised: ``"Yes"`` or
    ``"yes."`` scores 0 against ten ``"yes"``.  When they differ, the same
    prediction scores 1.  The gate looks at the answers after step 1 only, so
    ``["yes"] * 9 + ["Yes"]`` counts as two distinct answers.
    History: before a013f00 (e.g. the copy vendored in LAVIS
    ``lavis/common/vqa_tools/vqa_eval.py``) the prediction was *always*
    normalised, the gated ground-truth answers only got ``processPunctuation``
    and were not stripped.  lmms-eval (``tasks/vqav2/utils.py``) always
    normalises the prediction with the EvalAI processor (which also lower-cases
    and deletes every ``,`` and ``?`` first) and gates the ground truth.  The
    TextVQA/m4c evaluator (MMF, LLaVA ``m4c_evaluator.py``) always normalises
    both sides with the EvalAI processor and asserts exactly 10 answers.  None of
    those is reproduced here; this module follows the head of GT-Vision-Lab/VQA.
Q2  Case: the official code lower-cases only inside ``processDigitArticle``
    (L144), i.e. only in the gated branch.  There is no other case folding.
Q3  Leave-one-out (L105-L107) compares answer *dicts* (``item != gtAnsDatum``).
    Official annotations carry a unique ``answer_id`` per answer, so exactly one
    answer is left out each time even when several answers have the same text.
    With plain strings we therefore leave out by *position*.
Q4  Number of answers: the code iterates over whatever answers are given.  With
    ten answers the score is ``0, .3, .6, .9, 1`` for ``0, 1, 2, 3, >=4``
    matches.  With a single answer the leave-one-out set is empty, so the score
    is always 0.  An empty answer list divides by zero in the official code
    (L112); here it raises ``ValueError``.
Q5  ``processPunctuation`` (L130-L140): the punctuation list (L64-L66) is
    ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` -- it does *not* contain the
    apostrophe, colon, ``. * # % & $ ~ |`` or any non-ASCII character.  For each
    listed mark ``p``: if the *original* input contains ``p + " "`` or
    ``" " + p``, **or** the input contains a digit-comma-digit anywhere
    (``commaStrip``, L63, used only as a search, never for substitution), every
    ``p`` is deleted (L134); otherwise every ``p`` is replaced by a space (L136).
    Hence ``"1,000" -> "1000"``, ``"red,blue" -> "red blue"``, but
    ``"red/blue 1,2" -> "redblue 12"``.
Q6  ``periodStrip`` (L62) is ``(?!<=\\d)(\\.)(?!\\d)``.  ``(?!<=\\d)`` is a negative
    *look-ahead* for the text ``"<="`` + digit, not the look-behind that was
    presumably intended; since the next character must be ``.`` it can never
    fire.  The effective rule is: delete every ``.`` not followed by a digit
    (``"3." -> "3"``, ``"3.5"`` and ``".5"`` unchanged, ``"st.louis" ->
    "stlouis"``).  Periods are deleted, never replaced by a space.
Q7  ``periodStrip.sub("", outText, re.UNICODE)`` (L137-L139) passes
    ``re.UNICODE`` (== 32) as the positional *count* argument, so at most the
    first 32 such periods are deleted.
Q8  The official file is Python 2.  Its patterns are byte-string patterns
    compiled without ``re.UNICODE``, so ``\\d`` matches only ``0-9``; we use
    ``[0-9]`` (Python-3 ports such as LAVIS would also treat other Unicode
    digits as digits).  ``lower``/``split``/``strip`` act on ``unicode`` objects
    (``json.load`` returns those in Python 2) and behave like Python 3 ``str``.
Q9  ``processDigitArticle`` (L142-L155): lower-case, split on whitespace, map
    whole tokens ``none/zero..ten`` to digits (L43-L55, L146; nothing above ten,
    no compounds), drop the tokens ``a``/``an``/``the`` (L56-L59, L147), then
    map contractions written without apostrophe (L21-L42, L151-L153), e.g.
    ``"dont" -> "don't"``.  The table has oddities that are kept: the keys
    ``"Im"``, ``"Ive"``, ``"Id've"``, ``"I'dve"`` contain capitals and can never
    match lower-cased tokens; ``"somebody'd"`` maps *to* ``"somebodyd"``.
    Because the apostrophe is not punctuation (Q5), ``"don't"`` is unchanged.
Q10 Side effects not reproduced: the official ``evaluate`` overwrites the
    ground-truth answers in place (a second ``evaluate`` call sees normalised
    answers) and ``manualMap.setdefault`` (L146) grows the number map.  Neither
    changes the result of a single evaluation.
Q11 Reporting (L157-L160): the official code reports ``round(100 * mean, 2)``
    per overall / question type / answer type.  :func:`score` keeps unrounded
    fractions in ``[0, 1]``; the official figure is ``round(100 * x, 2)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "CONTRACTIONS",
    "OFFICIAL_SOURCE",
    "clean_whitespace",
    "evalai_normalize",
    "exact_match",
    "leave_one_out_accuracy",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "score",
    "vqa_accuracy",
]

OFFICIAL_SOURCE = (
    "https://github.com/GT-Vision-Lab/VQA/blob/a013f0043c1e2cdc995922dfe257f7149aa9af06/"
    "PythonEvaluationTools/vqaEvaluation/vqaEval.py"
)

# vqaEval.py:L64-L66.  Order is irrelevant: the keep/delete decision is made on
# the original input and no replacement creates another mark.
_PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)
# vqaEval.py:L63 (only ever used with re.search, L133).  ASCII digits: Q8.
_DIGIT_COMMA_DIGIT = re.compile(r"[0-9],[0-9]")
# vqaEval.py:L62, with the dead "(?!<=\d)" look-ahead dropped (Q6).
_STRIPPABLE_PERIOD = re.compile(r"\.(?![0-9])")
# vqaEval.py:L139 passes re.UNICODE (== 32) as `count` (Q7).
_MAX_PERIODS_STRIPPED = 32

# vqaEval.py:L43-L55.
_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
# vqaEval.py:L56-L59.
_ARTICLES = frozenset({"a", "an", "the"})
# vqaEval.py:L21-L42 (120 entries), re-ordered alphabetically.  The four keys with
# capitals can never match (tokens are lower-cased first) but are kept for
# fidelity; note the reversed entry "somebody'd" -> "somebodyd" (Q9).
CONTRACTIONS: dict[str, str] = {
    "'ow'sat": "'ow's'at", "'ows'at": "'ow's'at", "I'dve": "I'd've", "Id've": "I'd've",
    "Im": "I'm", "Ive": "I've", "aint": "ain't", "arent": "aren't", "cant": "can't",
    "couldn'tve": "couldn't've", "couldnt": "couldn't", "couldnt've": "couldn't've",
    "couldve": "could've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadn'tve": "hadn't've", "hadnt": "hadn't", "hadnt've": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "he'dve": "he'd've", "hed": "he'd", "hed've": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't",
    "it'dve": "it'd've", "itd": "it'd", "itd've": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightn'tve": "mightn't've", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "shant": "shan't",
    "she'dve": "she'd've", "she's": "she's", "shed've": "she'd've",
    "shouldn'tve": "shouldn't've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldve": "should've", "somebody'd": "somebodyd", "somebody'dve": "somebody'd've",
    "somebodyd've": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someone'dve": "someone'd've", "someoned": "someone'd", "someoned've": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "something'dve": "something'd've",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "somethingll": "something'll", "thats": "that's", "there'dve": "there'd've",
    "thered": "there'd", "thered've": "there'd've", "therere": "there're",
    "theres": "there's", "they'dve": "they'd've", "theyd": "they'd",
    "theyd've": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "we'dve": "we'd've", "wed've": "we'd've",
    "werent": "weren't", "weve": "we've", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "who'dve": "who'd've", "whod": "who'd",
    "whod've": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldn'tve": "wouldn't've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldve": "would've", "y'all'dve": "y'all'd've", "y'alld've": "y'all'd've",
    "y'allll": "y'all'll", "yall": "y'all", "yall'd've": "y'all'd've",
    "yall'll": "y'all'll", "you'dve": "you'd've", "youd": "you'd", "youd've": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def clean_whitespace(text: str) -> str:
    """Always-applied cleanup, vqaEval.py:L88-L90 (answers) and L92-L94 (prediction).

    Only ``'\\n'`` and ``'\\t'`` become spaces; other whitespace (``'\\r'``, ...)
    inside the string is left alone, and ``strip()`` then trims both ends.
    """
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation`` (vqaEval.py:L130-L140); see quirks Q5-Q7.

    * A mark from the list at L64-L66 is *deleted* when the input contains it
      next to a space (either side) or contains a digit-comma-digit anywhere
      (L133-L134), and is replaced by a space otherwise (L136).  Both tests look
      at the original input, not at the partially processed text.
    * Then at most 32 periods not followed by an ASCII digit are deleted
      (L137-L139).
    """
    _check_str(text, "text")
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _STRIPPABLE_PERIOD.sub("", out, count=_MAX_PERIODS_STRIPPED)


def process_digit_article(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """Official ``processDigitArticle`` (vqaEval.py:L142-L155); see quirk Q9.

    Lower-case (L144, the only case folding in the official code), split on
    whitespace, map number words ``none``/``zero``..``ten`` (L146), drop
    articles (L147), map apostrophe-less contractions (L151-L153), join with
    single spaces (L154). ``contractions``: the VizWiz API has its own table
    (``evaluation.vizwiz_metric``).
    """
    _check_str(text, "text")
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(contractions.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """The full official processing of one answer string.

    ``'\\n'``/``'\\t'`` -> space and strip (L88-L94), then
    :func:`process_punctuation` (L100/L102), then :func:`process_digit_article`
    (L101/L103).  The whitespace cleanup matters: whether a mark is deleted or
    turned into a space depends on the spaces around it (``"x\\n/y z/w"`` becomes
    ``"x y zw"``, not ``"x y z w"``).

    Note that :func:`vqa_accuracy` applies this only when the ground-truth
    answers are not all identical (quirk Q1).
    """
    return process_digit_article(process_punctuation(clean_whitespace(_check_str(text, "text"))))


def _answers_list(answers: object) -> list[str]:
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Iterable):
        raise TypeError("answers must be a list of str")
    out = [_check_str(a, "every answer") for a in answers]
    if not out:
        # vqaEval.py:L112 would raise ZeroDivisionError (quirk Q4).
        raise ValueError("answers must contain at least one ground-truth answer")
    return out


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction, in ``[0, 1]``, exactly as vqaEval.py@a013f00.

    Steps (quirk numbers refer to the module docstring):

    1. ``'\\n'``/``'\\t'`` -> space and ``strip()`` on every answer and on the
       prediction (L87-L94); always done.
    2. Only if the cleaned answers are not all the same string (L98), run
       :func:`process_punctuation` + :func:`process_digit_article` on every
       answer and on the prediction (L99-L103).  Otherwise compare exactly,
       case-sensitively (Q1, Q2).
    3. For each answer position ``i``: count the *other* positions whose answer
       equals the prediction, ``acc_i = min(1, count / 3)`` (L105-L109; leave-one-out
       by position, Q3).
    4. Return ``sum(acc_i) / len(answers)`` (L112), computed in the same order
       and with the same float operations as the official code.

    With ten answers, 0/1/2/3/>=4 matching answers give 0/0.3/0.6/0.9/1.0.  Any
    number of answers is accepted and iterated over like the official code; a
    single answer always scores 0.0, an empty list raises ``ValueError`` (Q4).
    """
    gts = [clean_whitespace(a) for a in _answers_list(answers)]
    pred = clean_whitespace(_check_str(prediction, "prediction"))
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        pred = process_digit_article(process_punctuation(pred))
    total_matches = sum(1 for a in gts if a == pred)
    # Leaving out position i removes one match iff answer i itself matches.
    accs = [min(1, float(total_matches - (a == pred)) / 3) for a in gts]
    return float(sum(accs)) / len(accs)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals at least one normalised answer, else 0.0.

    This is *not* an official VQA metric; it is a simple companion to
    :func:`vqa_accuracy`.  Both sides always go through :func:`normalize_answer`
    (no identical-answers gate, unlike Q1) and a single matching annotator is
    enough (no leave-one-out, no three-annotator threshold).  So ``"yes"``
    against ten ``"yes."`` has exact match 1.0 but VQA accuracy 0.0, and a
    single-answer list can reach 1.0.
    """
    pred = normalize_answer(prediction)
    return 1.0 if any(normalize_answer(a) == pred for a in _answers_list(answers)) else 0.0


def _summary(vqa_sum: float, em_sum: float, count: int) -> dict:
    if count == 0:
        return {"vqa_accuracy": 0.0, "exact_match": 0.0, "count": 0}
    return {"vqa_accuracy": vqa_sum / count, "exact_match": em_sum / count, "count": count}


def score(predictions: Sequence[Mapping]) -> dict:
    """Aggregate :func:`vqa_accuracy` and :func:`exact_match` over a list of items.

    Each item is a mapping with ``prediction`` (str), ``answers`` (list of str)
    and optionally ``question_type`` and ``answer_type``.  Returns::

        {
          "vqa_accuracy": float,   # mean over items, fraction in [0, 1]
          "exact_match": float,    # mean over items, fraction in [0, 1]
          "count": int,
          "per_question_type": {qtype: {"vqa_accuracy", "exact_match", "count"}},
          "per_answer_type":   {atype: {"vqa_accuracy", "exact_match", "count"}},
        }

    Differences from the official report (``setAccuracy``, L157-L160, quirk
    Q11): values are unrounded fractions, not percentages rounded to two
    decimals -- ``round(100 * result["vqa_accuracy"], 2)`` gives the official
    ``overall`` figure.  Per-type means are plain means of the per-question
    accuracies, as in the official code (L114-L119).  Items without a type (or
    with ``None``) count in the overall figures only; an empty list gives zeros
    with ``count == 0`` (the official code would divide by zero).
    """
    if isinstance(predictions, Mapping):
        raise TypeError("predictions must be a list of dicts")
    vqa_sum = em_sum = 0.0
    count = 0
    groups: dict[str, dict[object, list]] = {"question_type": {}, "answer_type": {}}
    for item in predictions:
        if not isinstance(item, Mapping):
            raise TypeError("every prediction item must be a dict")
        acc = vqa_accuracy(item["prediction"], item["answers"])
        em = exact_match(item["prediction"], item["answers"])
        vqa_sum += acc
        em_sum += em
        count += 1
        for key, table in groups.items():
            group = item.get(key)
            if group is not None:
                table.setdefault(group, [0.0, 0.0, 0])
                table[group][0] += acc
                table[group][1] += em
                table[group][2] += 1
    result = _summary(vqa_sum, em_sum, count)
    result["per_question_type"] = {k: _summary(*v) for k, v in groups["question_type"].items()}
    result["per_answer_type"] = {k: _summary(*v) for k, v in groups["answer_type"].items()}
    return result


def evalai_normalize(text: str) -> str:
    """EvalAI's answer processor (``EvalAIAnswerProcessor``, used by the VQA and TextVQA evaluation
    servers, the TextVQA evaluator and LLaVA's submission conversion): lower-case, drop ``,`` and
    ``?``, split ``'s`` off, then the official whitespace, punctuation and digit/article processing
    (:func:`normalize_answer`). Unlike :func:`vqa_accuracy` it is applied always, not gated."""
    text = _check_str(text, "text").lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(text)


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA's accuracy (m4c ``TextVQAAccuracyEvaluator``): both sides through
    :func:`evalai_normalize`, then the mean over the answers of ``min(1, matches among the
    others / 3)``."""
    answers = [evalai_normalize(a) for a in _answers_list(answers)]
    pred = evalai_normalize(prediction)
    scores = [min(1.0, sum(1 for j, a in enumerate(answers) if j != i and a == pred) / 3) for i in range(len(answers))]
    return sum(scores) / len(scores)

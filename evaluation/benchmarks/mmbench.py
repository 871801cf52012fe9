"""MMBench and MMBench-CN: single-choice questions, scored by circular evaluation.

Files as released (https://github.com/open-compass/MMBench, README "Download"): one TSV per split,
``mmbench_dev_20230712.tsv`` (LLaVA-1.5's English dev file), ``mmbench_dev_en_20231003.tsv``,
``mmbench_test_en_20231003.tsv``, ``mmbench_dev_cn_20231003.tsv``, ``mmbench_test_cn_20231003.tsv``;
give the one file as ``--questions``. Columns: ``index, question, hint, A, B, C, D, answer`` (not in
test), ``category, l2-category, image`` (base64; or, in VLMEvalKit's re-packed TSVs, a cell of at
most 64 characters naming the row whose image it shares), ``source, split, comment``. The TSV
already holds every rotation of a question's options as its own row: the question ``i`` and its
copies ``i + k * 1e6``, each with its options shifted and its answer letter moved with them. Every
row is asked as its own question (qid: the row's ``index``). ``--suite --data-root DIR`` reads
``DIR/mmbench/mmbench_dev_20230712.tsv`` (else ``mmbench_dev_en_20231003.tsv``, else the test file)
and ``DIR/mmbench_cn/mmbench_dev_cn_20231003.tsv`` (else the CN test file): the dev split is the
one LLaVA-1.5's scripts (``scripts/v1_5/eval/mmbench*.sh``) evaluate.

Asked as LLaVA-1.5 asks (haotian-liu/LLaVA ``llava/eval/model_vqa_mmbench.py`` at
c121f0432da27facab705978f83c4ada465e46fd): the
hint on its own line when there is one, the question, then ``A. ...`` per option up to the first
empty one, then "Answer with the option's letter from the given choices directly." (MMBench-CN:
"请直接回答选项字母。"); the reply is stripped, as LLaVA writes it.

Scored as open-compass/VLMEvalKit scores it with its default ``exact_matching`` judge (commit
e8e78f05f3080fe28154f2130321f17951c3be94: ``vlmeval/dataset/utils/multiple_choice.py``
``mcq_circular_eval`` / ``prefetch_circular_group`` / ``report_acc``, ``vlmeval/utils/matching_util.py``
``can_infer``), quirks included:

- A group is the answered rows whose ``int(index % 1e6)`` is the same; it is scored only when its
  first row (``index < 1e6``) is answered. Its hit is 0 as soon as one row's letter is read and is
  not the answer, 1 when every row's letter is read and right; otherwise (some reply read as no
  letter, none wrong) VLMEvalKit asks ChatGPT. We do not: that group counts as wrong (hit 0, as
  ``exact_matching`` counts it) and ``metrics["judge_needed"]`` says how many there were.
- The letter is read by ``can_infer_option`` first: the refusals it knows give ``Z`` (wrong);
  ``.()[],:;!*#{}`` become spaces and the reply is split on whitespace; exactly one option letter
  among the words, and within the last four words, is the answer ("A dog." reads as A); else a
  lone ``Z`` word is Z; else ``(correct )answer is **X**`` case-insensitively ("the answer is a
  cat" reads as A). Chinese punctuation separates nothing ("B。" names no letter); the environment
  variable VERBOSE is taken as unset. Then ``can_infer_text``: the lower-cased reply, if at most
  twice as long as all option texts together, holding exactly one option's lower-cased text (a
  reply with "Failed to obtain answer via API" skips straight to it).
- Options are the letter columns whose cell is not empty, and cells are read as pandas reads them:
  ``NA``, ``None``, ``nan``, ``null``, ``N/A``... are empty (an option "None" is no option), and a
  prediction such a string is the text ``"nan"`` (which holds an option "a"). A row without an
  image, or whose question is empty, is a counted skip (VLMEvalKit drops the first kind).
- ``overall``, ``l2-category`` (VLMEvalKit's abbreviations CP, FP-S, FP-C, LR, RR, AR) and
  ``category``: the mean hit of the questions as a fraction, unrounded (``report_acc`` writes the
  numpy mean as it is); LLaVA-1.5's table shows ``100 * overall`` (``table_value``).

The test split has no answers: its file for the MMBench server is LLaVA's
``scripts/convert_mmbench_for_submission.py`` layout, an ``.xlsx`` of the TSV's columns less hint,
category, source, image, comment and l2-category, with ``prediction`` as the 7th column
(characters Excel cannot hold are dropped). Results files read by ``--predictions``: that ``.xlsx``
(or a ``.tsv``) with ``index`` and ``prediction`` columns -- what the server and VLMEvalKit's
evaluation read -- or LLaVA's answers ``.jsonl`` (``{"question_id", "text"}``, round 0) that the
conversion script turns into it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import io
import re
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    EmbeddedImage,
    Layout,
    Loaded,
    Question,
    Submission,
    is_int,
    load_jsonl,
)

ENGLISH_SUFFIX = "Answer with the option's letter from the given choices directly."
CHINESE_SUFFIX = "请直接回答选项字母。"
UPLOAD = "the MMBench evaluation server, https://mmbench.opencompass.org.cn/mmbench-submission"
# pandas.read_csv / read_excel: the strings read as NaN by default (pandas' STR_NA_VALUES).
NA_STRINGS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
# VLMEvalKit's MMB_abbrs: the l2-category names as report_acc prints them.
L2_ABBREVIATIONS = {"coarse_perception": "CP", "finegrained_perception (instance-level)": "FP-S",
                    "finegrained_perception (cross-instance)": "FP-C", "logic_reasoning": "LR",
                    "relation_reasoning": "RR", "attribute_reasoning": "AR"}
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
# The columns LLaVA's convert_mmbench_for_submission.py drops from the TSV for the server's file.
NOT_SUBMITTED = ("hint", "category", "source", "image", "comment", "l2-category")
ROTATION = 1e6  # a copy's index is the question's index + k * 1e6


# -- reading the letter as VLMEvalKit's can_infer does ------------------------------------------


def can_infer_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """matching_util.can_infer_option (VERBOSE unset): the option letter the reply names, or None."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(refusal in answer for refusal in REFUSALS):
        return "Z"
    words = answer.translate(str.maketrans({c: " " for c in ".()[],:;!*#{}"})).split()
    named = [letter for letter in choices if letter in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - 5:  # among the last four words
        return named[0]
    if not named and "Z" in words:
        return "Z"
    match = VERBOSE_ANSWER.search(answer)
    return match.group(1).upper() if match and match.group(1).upper() in choices else None


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """matching_util.can_infer_text: the one option whose text the (not too long) reply holds."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(text) for text in choices.values()):
        return None
    held = [letter for letter, text in choices.items() if text.lower() in answer]
    return held[0] if len(held) == 1 else None


def can_infer(answer: str, choices: Mapping[str, str]) -> str | None:
    """The letter VLMEvalKit reads before asking ChatGPT (None: it would ask ChatGPT)."""
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def as_pandas_reads(text: str) -> str:
    """A prediction as the official tools see it after pandas has read the file: NA strings are NaN,
    and ``str(NaN)`` is ``"nan"``."""
    return "nan" if text in NA_STRINGS else text


def group_hit(rows: Sequence[tuple[str, str, Mapping[str, str]]]) -> int | None:
    """prefetch_circular_group over one question's rows ``(answer, prediction, choices)`` in index
    order: 0 at the first letter read that is wrong, 1 when all are read and right, None when some
    reply has no letter VLMEvalKit can read without ChatGPT."""
    read = []
    for truth, prediction, choices in rows:
        letter = can_infer(as_pandas_reads(prediction), choices)
        if letter and letter != truth:
            return 0
        read.append(letter)
    return 1 if all(read) else None


# -- the TSV ------------------------------------------------------------------------------------


@dataclass
class MMBenchQuestion(Question):
    """A TSV row: its ``index``, its option letter -> text, and its cells (image left out) for the
    server's file."""

    index: int = 0
    choices: dict[str, str] = field(default_factory=dict)
    row: dict[str, str | None] = field(default_factory=dict)


@contextlib.contextmanager
def _large_fields():
    """csv's field limit raised for the base64 image cells, and put back afterwards."""
    old = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def read_tsv(path: Path, what: str) -> list[dict[str, str | None]]:
    """The rows of a TSV as pandas.read_csv(sep='\\t') reads them: quoted cells, blank lines
    skipped, NA strings as None."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f, _large_fields():
            lines = [line for line in csv.reader(f, delimiter="\t") if line]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BenchmarkError(f"{path}: cannot read the {what}: {exc}") from None
    if not lines:
        raise BenchmarkError(f"{path}: empty {what}")
    header, rows = lines[0], []
    for n, line in enumerate(lines[1:], 2):
        if len(line) > len(header):  # pandas: "Expected N fields in line ..., saw M"
            raise BenchmarkError(f"{path}: row {n} has {len(line)} cells, the header {len(header)}")
        line += [""] * (len(header) - len(line))  # missing trailing cells are NaN
        rows.append({name: (None if cell in NA_STRINGS else cell) for name, cell in zip(header, line)})
    return rows


def prompt(row: Mapping[str, str | None]) -> str:
    """model_vqa_mmbench.py's question: hint line, question, then the options up to the first empty one."""
    def empty(value):  # its is_none: NaN, or the text "nan" / "none" in any case
        return value is None or value.lower() in ("nan", "none")

    text = str(row["question"])
    if not empty(row.get("hint")):
        text = f"{row['hint']}\n{text}"
    for letter in "ABCD":
        if empty(row.get(letter)):
            break
        text += f"\n{letter}. {row[letter]}"
    return text


def _images(rows: list[dict]) -> dict[str, str]:
    """index -> base64 cell; a cell of at most 64 characters names the row whose image it shares
    (VLMEvalKit's image_base.py)."""
    cells = {str(row.get("index")): row.get("image") or "" for row in rows}
    return {key: cells.get(cell, "") if 0 < len(cell) <= 64 else cell for key, cell in cells.items()}


class MMBench(Benchmark):
    name = "mmbench"
    prompt_suffix = ENGLISH_SUFFIX
    needs = ("questions",)
    layouts = (Layout("dev", ("mmbench_dev_20230712.tsv",)), Layout("dev", ("mmbench_dev_en_20231003.tsv",)),
               Layout("test", ("mmbench_test_en_20231003.tsv",)))

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (path,) = questions
        rows = read_tsv(path, "MMBench TSV")
        missing = {"index", "question", "A", "B"} - set(rows[0]) if rows else set()
        if missing:
            raise BenchmarkError(f"{path}: not an MMBench TSV (no {', '.join(sorted(missing))} column)")
        pictures = _images(rows)
        loaded = Loaded([])
        for n, row in enumerate(rows, 2):
            try:
                index = int(row["index"] or "")
            except ValueError:
                raise BenchmarkError(f"{path}: row {n}: index {row['index']!r} is not an integer") from None
            if row.get("question") is None:
                loaded.skip("malformed_question", f"{path} index {index}", qid=str(index))
                continue
            try:
                data = base64.b64decode(pictures[str(index)] or "", validate=False)
            except (binascii.Error, ValueError):
                data = b""
            if not data:
                loaded.skip("missing_image", f"{path} index {index}", qid=str(index))
                continue
            if not loaded.admit(str(index), None):
                continue
            choices = {k: row[k] for k in string.ascii_uppercase if row.get(k) is not None}  # build_choices
            group = {"g_index": str(int(index % ROTATION))}
            group.update({k: row[k] for k in ("category", "l2-category", "split") if row.get(k) is not None})
            loaded.questions.append(MMBenchQuestion(
                str(index), EmbeddedImage(data, f"{path.name}#{index}"), prompt(row), row.get("answer"), group,
                index=index, choices=choices, row={k: v for k, v in row.items() if k != "image"}))
        splits = {q.group.get("split") for q in loaded.questions}
        if len(splits) > 1:
            raise BenchmarkError(f"{path}: rows of several splits ({', '.join(sorted(map(str, splits)))}); "
                                 "a released TSV holds one")
        return loaded

    def results_answer(self, reply: str) -> str:
        return reply.strip()  # model_vqa_mmbench.py: outputs.strip()

    def _hits(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, int | None]:
        """qid of each scored question (answered, index < 1e6) -> its group's hit (None: ChatGPT)."""
        groups: dict[str, list[MMBenchQuestion]] = {}
        for q in sorted((q for q in questions if q.qid in answers), key=lambda q: q.index):
            groups.setdefault(q.group["g_index"], []).append(q)
        return {rows[0].qid: group_hit([(q.truth, answers[q.qid], q.choices) for q in rows])
                for g, rows in groups.items() if rows[0].index == int(g)}

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        return {qid: float(hit or 0) for qid, hit in self._hits(questions, answers).items()}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        hits = self._hits(questions, answers)
        scored = [q for q in questions if q.qid in hits]

        def mean(qs):  # report_acc: np.mean of the hits, a fraction
            return sum(hits[q.qid] or 0 for q in qs) / len(qs)

        metrics: dict = {"overall": mean(scored) if scored else 0.0}
        for key in ("l2-category", "category"):
            names = sorted({q.group[key] for q in scored if key in q.group})
            if names:
                metrics[key] = {L2_ABBREVIATIONS.get(name, name) if key == "l2-category" else name:
                                mean([q for q in scored if q.group.get(key) == name]) for name in names}
        metrics.update(count=len(scored), rows=sum(q.qid in answers for q in questions),
                       judge_needed=sum(hit is None for hit in hits.values()))
        return metrics

    def headline(self, metrics: Mapping) -> str:
        if "overall" not in metrics:
            return "no public answers"
        return (f"Overall {metrics['overall']!r} (circular evaluation; {metrics['judge_needed']} question(s) VLMEvalKit "
                "would match with ChatGPT counted wrong)")

    def table_value(self, metrics: Mapping) -> float | None:
        value = metrics.get("overall")
        return 100 * float(value) if isinstance(value, (int, float)) else None

    def submission(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Submission | None:
        return Submission(f"{self.name}_submission.xlsx", submission_xlsx(questions, answers), UPLOAD)

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        if path.suffix == ".jsonl":
            return _llava_answers(path)
        rows = _xlsx_rows(path) if path.suffix == ".xlsx" else read_tsv(path, "results TSV")
        # VLMEvalKit lower-cases every column name but the option letters.
        rows = [{k if len(k) == 1 and k in string.ascii_uppercase else str(k).lower(): v for k, v in row.items()} for row in rows]
        if not rows or not {"index", "prediction"} <= set(rows[0]):
            raise BenchmarkError(f"{path}: an MMBench results file needs 'index' and 'prediction' columns")
        answers: dict[str, str] = {}
        for n, row in enumerate(rows, 2):
            qid = _index(row["index"])
            if qid is None:
                raise BenchmarkError(f"{path}: row {n}: index {row['index']!r} is not an integer")
            if qid in answers:
                raise BenchmarkError(f"{path}: index {qid} appears twice")
            prediction = row["prediction"]
            answers[qid] = "nan" if prediction is None else str(prediction)
        return answers


class MMBenchCN(MMBench):
    name = "mmbench_cn"
    prompt_suffix = CHINESE_SUFFIX
    layouts = (Layout("dev", ("mmbench_dev_cn_20231003.tsv",)), Layout("test", ("mmbench_test_cn_20231003.tsv",)))


# -- results files ------------------------------------------------------------------------------


def _index(value) -> str | None:
    """A results file's index cell (an int, an integral float, or the text of an int) as a qid."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if is_int(value):
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return str(int(value))
    return None


def _llava_answers(path: Path) -> dict[str, str]:
    """LLaVA's answers file (model_vqa_mmbench.py): ``{"question_id": index, "round_id", "text"}``."""
    answers: dict[str, str] = {}
    for n, row in enumerate(load_jsonl(path, "LLaVA answers file"), 1):
        if not isinstance(row, dict) or not is_int(row.get("question_id")) or not isinstance(row.get("text"), str):
            raise BenchmarkError(f"{path}: line {n} needs an integer question_id and a string text")
        if row.get("round_id", 0) != 0:
            raise BenchmarkError(f"{path}: line {n}: round_id {row['round_id']!r} is LLaVA's own --all-rounds "
                                 "rotation, not a row of the TSV (the TSV holds MMBench's rotations)")
        qid = str(row["question_id"])
        if qid in answers:
            raise BenchmarkError(f"{path}: question_id {qid} appears twice")
        answers[qid] = row["text"]
    return answers


def _xlsx_rows(path: Path) -> list[dict]:
    """The first sheet of an .xlsx as pandas.read_excel reads it: header row, NA strings as None."""
    from openpyxl import load_workbook

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a file that is not an xlsx
        raise BenchmarkError(f"{path}: not a readable .xlsx: {exc}") from None
    try:
        lines = [list(line) for line in book.worksheets[0].iter_rows(values_only=True)]
    finally:
        book.close()
    if not lines:
        return []
    header = [str(name) for name in lines[0]]
    return [{name: None if isinstance(value, str) and value in NA_STRINGS else value
             for name, value in zip(header, line)} for line in lines[1:] if any(v is not None for v in line)]


def submission_xlsx(questions: Sequence[Question], answers: Mapping[str, str]) -> bytes:
    """convert_mmbench_for_submission.py's file: the TSV columns less NOT_SUBMITTED, ``prediction``
    inserted as the 7th column (empty where unanswered), one row per TSV row."""
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    columns = [c for c in questions[0].row if c not in NOT_SUBMITTED] if questions else ["index"]
    columns.insert(min(6, len(columns)), "prediction")
    book = Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append(columns)
    for q in questions:
        cells = {**q.row, "index": q.index, "prediction": answers.get(q.qid)}
        sheet.append([ILLEGAL_CHARACTERS_RE.sub("", v) if isinstance(v, str) else v
                      for v in (cells.get(c) for c in columns)])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()

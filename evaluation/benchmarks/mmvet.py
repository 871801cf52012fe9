"""MM-Vet: 218 free-form questions needing integrated capabilities (recognition, OCR, knowledge,
language generation, spatial awareness, math), graded 0.0-1.0 by a judge model.

Files as released (https://github.com/yuweihao/MM-Vet/releases/download/v1/mm-vet.zip, unzipped),
layout under ``--data-root DIR`` (``evaluate.py --suite``)::

    DIR/mmvet/mm-vet.json    {"v1_0": {"imagename", "capability": [...], "question", "answer"}, ...}
    DIR/mmvet/images/v1_0.png ...

``--questions mm-vet.json --images images``. Results file (``--predictions``): the evaluator's
input, ``{"v1_0": "answer", ...}`` (what LLaVA's ``scripts/convert_mmvet_for_eval.py`` writes).
Asked as LLaVA-1.5 asks it (``scripts/v1_5/eval/mmvet.sh``: ``model_vqa.py``, the question as it
is, no suffix, up to 1024 new tokens).

Scored as yuweihao/MM-Vet's ``mm-vet_evaluator.py`` (and ``mm-vet_evaluator.ipynb``, the same
code) at c7ff270d86fb79c42346214366f4192c0e08b042 with one run (``num_run = 1``, the default):

- M1 The judge gets one user message: the few-shot prompt, a newline, then ``question | ground
  truth | prediction | `` joined by ``" | "`` (ending in ``" | "``), with ``<AND>``/``<OR>`` in
  the ground truth spaced out (``" <AND> "``); temperature 0.0, max_tokens 3.
- M2 A reply scores when its text up to the first space, stripped, is a ``float`` within
  [0.0, 1.0] (``"0.5\\n"`` and ``"1.0 ok"`` score; ``" 0.5"`` -- empty before the first space --,
  ``"1.5"``, ``"0.5."`` do not; any float is taken, ``"0.55"`` too).
- M3 Otherwise it asks again with ``"\\nPredict the correctness of the answer (digit): "``
  appended, at temperatures 0.0, 0.5, 1.0, 1.5 (the temperature rises *after* each retry, so the
  first retry is still at 0.0), then once more at 2.0 whose reply is never read: after 5 replies
  without a score the question scores 0.0, counted in every mean (``judge.unparsed`` counts them).
- M4 Per capability (a question counts once per distinct capability it lists) and per capability
  integration (the *set* of capabilities: ``["ocr", "math"]`` and ``["math", "ocr"]`` are one), and
  ``total``: the scores summed in question order, ``sum / count * 100``, rounded to 1 decimal by
  *numpy* (``round`` of a numpy float: ``rint(x * 10) / 10``, so 0.15 gives 0.2 where Python's
  ``round`` gives 0.1).
- M5 The official integration names join a Python set (their order changes with the hash seed);
  here they join the capabilities sorted (``math_ocr``). Columns are ordered by count, as there.

``overall`` (the table's number) is the total. A results file must answer every question (the
evaluator raises a KeyError otherwise); with ``--allow-partial`` the counts are those of the
answered questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import Benchmark, BenchmarkError, Layout, Loaded, Question, load_json
from evaluation.judge import Judged, Request

PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. \
<AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the \
prediction, and <OR> means it is totally right when any one element in the ground truth is present in the \
prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 \
(totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and \
Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is \
mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these \
countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing \
out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and \
Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is \
mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these \
countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading \
nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is \
mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these \
contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast \
between the names of the countries and their actual physical characteristics. | 1.0
"""
RETRY = "\nPredict the correctness of the answer (digit): "
RETRY_TEMPERATURES = (0.0, 0.5, 1.0, 1.5)  # the retries whose replies are read (M3)
LAST_TEMPERATURE = 2.0  # asked, never read


def parse_correctness(reply: str) -> float | None:
    """The evaluator's reading of a reply (M2): the text before the first space, stripped, as a
    float within [0, 1]; None where it asks again."""
    try:
        score = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return None if score > 1.0 or score < 0.0 else score


def judge_message(question: str, truth: str, prediction: str) -> str:
    """The evaluator's user message (M1)."""
    return PROMPT + "\n" + " | ".join([question, truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "),
                                       prediction, ""])


def percent_1(total: float, count: int) -> float:
    """``round(np.mean(np.array([total]) / count * 100), 1)``: numpy's rounding (M4)."""
    import numpy as np

    return float(round(np.float64(total) / count * 100, 1))


class MMVet(Judged, Benchmark):
    name = "mmvet"
    layouts = (Layout("v1", ("mm-vet.json",), images="images"),)

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (path,) = questions
        data = load_json(path, "MM-Vet questions file")
        if not isinstance(data, dict):
            raise BenchmarkError(f"{path}: expected MM-Vet's {{\"v1_0\": {{imagename, capability, question, answer}}}}")
        loaded = Loaded([])
        for qid, q in data.items():
            caps = q.get("capability") if isinstance(q, dict) else None
            if not (isinstance(caps, list) and caps and all(isinstance(c, str) for c in caps)
                    and all(isinstance(q.get(k), str) for k in ("imagename", "question", "answer"))):
                loaded.skip("malformed_question", f"{path} {qid}")
                continue
            image = images / q["imagename"] if images is not None else None
            if loaded.admit(qid, image):
                integration = "_".join(sorted(set(caps)))
                loaded.questions.append(Question(qid, image, q["question"], {"answer": q["answer"], "capability": caps},
                                                 {"capability_integration": integration}))
        return loaded

    def requests(self, question: Question, answer: str) -> list[Request]:
        message = judge_message(question.question, question.truth["answer"], answer)
        first = Request((("user", message),), 0.0, 3)
        retries = [Request((("user", message + RETRY),), t, 3) for t in RETRY_TEMPERATURES]
        return [first, *retries, Request((("user", message + RETRY),), LAST_TEMPERATURE, 3, scored=False)]

    def parse(self, reply: str) -> float | None:
        return parse_correctness(reply)

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        """The judge's correctness, 0.0 where no reply held one (M3)."""
        return {qid: 0.0 if g.value is None else g.value for qid, g in self.grades(questions, answers).items()}

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        scores = self.question_scores(questions, answers)
        sums: dict[str, dict[str, float]] = {"capabilities": {}, "capability_integrations": {}}
        counts: dict[str, Counter] = {"capabilities": Counter(), "capability_integrations": Counter()}
        total = 0.0
        for q in questions:
            if q.qid not in scores:
                continue
            for table, names in (("capabilities", set(q.truth["capability"])),
                                 ("capability_integrations", [q.group["capability_integration"]])):
                for name in names:
                    sums[table][name] = sums[table].get(name, 0.0) + scores[q.qid]
                    counts[table][name] += 1
            total += scores[q.qid]
        out = {table: {name: percent_1(sums[table][name], n)
                       for name, n in sorted(counts[table].items(), key=lambda item: (-item[1], item[0]))}
               for table in sums}
        return {"overall": percent_1(total, len(scores)) if scores else None, **out, "count": len(scores),
                "judge": self.client().describe()}

    def headline(self, metrics: Mapping) -> str:
        """The evaluator's capability row (total, each capability); then the judge."""
        caps = ", ".join(f"{k} {v}" for k, v in metrics.get("capabilities", {}).items())
        return f"total {metrics.get('overall')} ({caps})" + self.judge_note(metrics)

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        """``{"v1_0": "answer", ...}``, the evaluator's result file."""
        results = load_json(path, "MM-Vet results file")
        if not isinstance(results, dict):
            raise BenchmarkError(f"{path}: an MM-Vet results file is a JSON object {{\"v1_0\": \"answer\", ...}}")
        for qid, answer in results.items():
            if not isinstance(answer, str):
                raise BenchmarkError(f"{path}: {qid}: the answer must be a string, got {str(answer)[:80]}")
        return dict(results)

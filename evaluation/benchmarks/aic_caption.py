"""AI Challenger 2017 image Chinese captioning, validation split, scored as the challenge scored it.

Files as released (``ai_challenger_caption_validation_20170910.zip``): give
``caption_validation_annotations_20170910.json`` as ``--questions`` -- ``[{"url", "image_id":
"<sha1>.jpg", "caption": [five captions]}]``, the record format of the training file
(``dataset/sources/ai_challenger.py``) -- and ``caption_validation_images_20170910/`` as
``--images``. A reference file in the evaluation's own COCO-like format (``{"images": [{"file_name",
"id"}], "annotations": [{"image_id", "caption"}]}`` with segmented captions, like its
``data/id_to_words.json``) is read as it is. ``--suite`` layout: ``DATA_ROOT/aic_caption/`` holding
those two (or the unzipped ``ai_challenger_caption_validation_20170910/`` folder with them inside).

Reproduces ``Evaluation/caption_eval/run_evaluations.py`` of https://github.com/AIChallenger/AI_Challenger_2017
at ``52014e0defbbdd85bf94ab05d308300d5764022f`` (``compute_m1``) with its ``coco_caption`` copy
(``pycxtools/coco.py``'s ``loadRes``, ``pycxevalcap/eval.py``), whose scorers are the COCO ones
(``evaluation/captions.py``) without SPICE:

- a submitted caption is ``caption.strip().replace('。', '')`` segmented by jieba's accurate mode
  (``jieba.cut(..., cut_all=False)``, HMM on; its README requires jieba 0.38, pinned here), the
  words joined by single spaces -- other punctuation (``，``) stays a word, and jieba keeps inner
  spaces as words, so ``"a b"`` becomes ``"a   b"``;
- then, like every caption, the PTB tokenizer (``-lowerCase``, ASCII punctuation dropped);
- Bleu_1..4, METEOR, ROUGE_L, CIDEr over every reference image, unrounded (``print '%s: %.3f'``);
- the whole evaluation fails (``error: 1``) on an empty caption (``!= ''``, checked before the
  strip, so ``"。"`` passes and scores as empty), an unknown image, a missing one or a second
  caption for an image: here a one-line error, or the usual coverage refusal. A model's empty
  reply is written as ``"。"``, so that a run is scored (as the empty caption it is) rather than refused.

The validation references are not published in the evaluation's segmented format; they are built
from the released captions with the same segmentation as submissions (empty ones dropped, as the
training reader does), which is what the evaluation README asks participants to do. The official
code runs on Python 2.7, whose dicts iterate images in hash order; only float sums (ROUGE_L's and
CIDEr's means) depend on that order, in the last bits, below the printed 3 decimals. Results files:
the submission format ``[{"image_id": "<sha1>", "caption": str}]`` (``data/id_to_test_caption.json``;
the name with ``.jpg`` is accepted too). The model is asked its training instruction
"请用一句话描述这张图片。" (``config.yaml`` ``data.question_templates``; the predictor adds the image
placeholder); ``--compare`` pairs per-image CIDEr-D.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import Benchmark, BenchmarkError, Layout, Loaded, Question, load_json
from evaluation.captions import METRICS, ScoreCache, caption_headline, score_captions

PROMPT = "请用一句话描述这张图片。"
RELEASE = "ai_challenger_caption_validation_20170910"


def segment(caption: str) -> str:
    """``loadRes``'s treatment of a submitted caption: strip, drop ``。``, jieba accurate mode, joined by spaces."""
    try:
        import jieba
    except ImportError:
        raise BenchmarkError("AI Challenger captions are segmented with jieba (pip install jieba==0.38)") from None
    logging.getLogger("jieba").setLevel(logging.WARNING)  # not its "Building prefix dict" chatter
    return " ".join(jieba.cut(caption.strip().replace("。", ""), cut_all=False))


def image_key(name: str) -> str:
    """An image's name as the submission format writes it: without ``.jpg``."""
    return name[:-4] if name.endswith(".jpg") else name


def _read_released(path: Path, data: list, images: Path | None, loaded: Loaded) -> None:
    for n, record in enumerate(data):
        name = record.get("image_id") if isinstance(record, dict) else None
        captions = record.get("caption") if isinstance(record, dict) else None
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(name, str) or not name.strip() or not isinstance(captions, list):
            loaded.skip("malformed_record", f"{path} [{n}]")
            continue
        references = [segment(c) for c in captions if isinstance(c, str) and c.strip()]
        loaded.add_references(image_key(name), images / name if images is not None else None, references, PROMPT)


def _read_reference(path: Path, data: dict, images: Path | None, loaded: Loaded) -> None:
    refs: dict = {}
    for ann in data.get("annotations") or []:
        if isinstance(ann, dict) and isinstance(ann.get("caption"), str):
            refs.setdefault(ann.get("image_id"), []).append(ann["caption"])
    seen = set()  # its "images" repeat each image once per caption (id_to_words.json); COCO indexes them by id
    for n, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str):
            loaded.skip("malformed_image_entry", f"{path} images[{n}]")
            continue
        if img.get("id") in seen:
            continue
        seen.add(img.get("id"))
        name = img["file_name"]
        image = None if images is None else images / (name if name.endswith(".jpg") else name + ".jpg")
        loaded.add_references(image_key(name), image, refs.get(img.get("id"), []), PROMPT)


class AICaption(Benchmark):
    name = "aic_caption"
    prompt_suffix = ""  # the instruction is the whole question, as in training
    layouts = (Layout("validation", ("caption_validation_annotations_20170910.json",),
                      "caption_validation_images_20170910"),
               Layout("validation", (f"{RELEASE}/caption_validation_annotations_20170910.json",),
                      f"{RELEASE}/caption_validation_images_20170910"))

    def __init__(self) -> None:
        self.cache = ScoreCache()

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (path,) = questions
        data = load_json(path, "AI Challenger caption annotations")
        loaded = Loaded([])
        if isinstance(data, list):
            _read_released(path, data, images, loaded)
        elif isinstance(data, dict) and isinstance(data.get("images"), list):
            _read_reference(path, data, images, loaded)
        else:
            raise BenchmarkError(f"{path}: not AI Challenger caption annotations (a list of {{\"image_id\", "
                                 "\"caption\"}} records, or the evaluation's {\"images\", \"annotations\"} reference)")
        return loaded

    def results_answer(self, reply: str) -> str:
        """The reply stripped; an empty one is written as ``"。"``, which the evaluation accepts and, dropping
        ``。``, scores as a caption of no words (a literal ``""`` makes it refuse the whole file)."""
        return reply.strip() or "。"

    def _scores(self, questions: Sequence[Question], answers: Mapping[str, str]):
        scored = [q for q in questions if q.qid in answers]
        for q in scored:
            if answers[q.qid] == "":  # loadRes: assert ann['caption'] != '' -- the evaluation fails
                raise BenchmarkError(f"the caption for image {q.qid} is empty; the AI Challenger evaluation refuses "
                                     "a results file with an empty caption")
        key = tuple((q.qid, answers[q.qid]) for q in scored)
        return self.cache.get(key, lambda: score_captions({q.qid: q.truth for q in scored},
                                                          {q.qid: segment(answers[q.qid]) for q in scored}))

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        result = self._scores(questions, answers)
        return {**result.corpus, "count": len(result.per_image)}

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        """Per-image CIDEr-D from the same computation (the corpus CIDEr is their mean)."""
        return {qid: row["CIDEr"] for qid, row in self._scores(questions, answers).per_image.items()}

    def headline(self, metrics: Mapping) -> str:
        return caption_headline(metrics, METRICS)

    def table_value(self, metrics: Mapping) -> float | None:
        """CIDEr x 100, as captioning papers report it."""
        value = metrics.get("CIDEr")
        return 100 * value if isinstance(value, float) else None

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        """``[{"image_id": name, "caption": str}]``; a second caption for an image or a non-string
        field is an error, as in the official evaluation."""
        rows = load_json(path, "results file")
        if not isinstance(rows, list):
            raise BenchmarkError(f"{path}: expected a JSON list of {{\"image_id\", \"caption\"}} entries")
        answers: dict[str, str] = {}
        for n, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("image_id"), str) or not row["image_id"] \
                    or not isinstance(row.get("caption"), str):
                raise BenchmarkError(f"{path}: entry #{n} needs a string \"image_id\" (the image name) and a string "
                                     f"\"caption\": {str(row)[:120]}")
            qid = image_key(row["image_id"])
            if qid in answers:
                raise BenchmarkError(f"{path}: image {qid} has two captions (the evaluation scores one per image)")
            answers[qid] = row["caption"]
        return answers

"""COCO Caption, Karpathy test split: one caption per image, scored by the COCO caption evaluation.

Files as researchers download them (give one as ``--questions``; images ``--images coco/val2014``):

- ``coco_karpathy_test_gt.json``, the COCO-format ground truth of the Karpathy test split that
  BLIP/LAVIS publish (``{"images": [{"id"}], "annotations": [{"image_id", "id", "caption"}]}``); any
  COCO captions file works the same way (``captions_val2014.json``: every val2014 image). The
  image file is ``file_name`` when the entry has one, else ``COCO_val2014_<id, 12 digits>.jpg``.
- ``dataset_coco.json`` of Karpathy's ``caption_datasets.zip`` (``{"images": [{"split", "filepath",
  "filename", "cocoid", "sentences": [{"raw"}]}]}``): its ``split == "test"`` images (5,000), the
  ``raw`` sentences as references, the image ``<images>/<filename>`` (or
  ``<images>/<filepath>/<filename>`` when ``--images`` is the folder above ``val2014/``).

``--suite`` layout: ``DATA_ROOT/coco_caption/coco_karpathy_test_gt.json`` (or ``dataset_coco.json``)
and ``DATA_ROOT/coco_caption/val2014/``.

Scored as ``COCOEvalCap(coco, coco.loadRes(results)).evaluate()`` of pycocoevalcap 1.2 scores a
results file (``evaluation/captions.py`` names the commit and the quirks: PTB tokenization with
lower-casing and punctuation dropped, corpus-level BLEU, CIDEr-D with the scored set's document
frequencies): Bleu_1..4, METEOR, ROUGE_L, CIDEr (SPICE when its Stanford models are installed),
unrounded, printed ``"%s: %0.3f"``. An image without reference captions would fail COCOEvalCap's
assertions; it is a counted skip here. A partial file (``--allow-partial``) is scored over the
images it answers, as BLIP/LAVIS do (``params['image_id'] = coco_result.getImgIds()``).

Results files: the COCO caption results format ``[{"image_id": int, "caption": str}]``. The model is
asked "Provide a one-sentence caption for the provided image." -- the instruction lmms-eval's COCO
caption tasks and InternVL's caption evaluation give LLaVA-style models, so the numbers are
comparable with theirs and the model answers with one COCO-style sentence; its reply is stripped
(the tokenizer ignores surrounding space anyway).
``--compare`` pairs per-image CIDEr-D (the corpus CIDEr is their mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.benchmarks.base import Benchmark, BenchmarkError, Layout, Loaded, Question, is_int, load_json
from evaluation.captions import METRICS, ScoreCache, caption_headline, score_captions

PROMPT = "Provide a one-sentence caption for the provided image."


def _image_path(images: Path | None, *parts: str) -> Path | None:
    """``images/filepath/filename`` when ``images`` holds the ``filepath`` folder, else ``images/filename``."""
    if images is None:
        return None
    nested = images.joinpath(*parts)
    return nested if len(parts) > 1 and (images / parts[0]).is_dir() else images / parts[-1]


def _read_coco_format(path: Path, data: dict, images: Path | None, loaded: Loaded) -> None:
    refs: dict[int, list[str]] = {}
    for n, ann in enumerate(data.get("annotations") or []):
        if not isinstance(ann, dict) or not is_int(ann.get("image_id")) or not isinstance(ann.get("caption"), str):
            loaded.skip("malformed_annotation", f"{path} annotations[{n}]", question=False)
            continue
        refs.setdefault(ann["image_id"], []).append(ann["caption"])
    listed = {img.get("id") for img in data["images"] if isinstance(img, dict)}
    for image_id in refs.keys() - listed:  # COCOEvalCap scores the listed images only
        loaded.skip("caption_for_unknown_image", f"{path} image_id {image_id}", question=False)
    for n, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not is_int(img.get("id")):
            loaded.skip("malformed_image_entry", f"{path} images[{n}]")
            continue
        name = img.get("file_name") if isinstance(img.get("file_name"), str) else f"COCO_val2014_{img['id']:012d}.jpg"
        loaded.add_references(str(img["id"]), _image_path(images, name), refs.get(img["id"], []), PROMPT)


def _read_karpathy(path: Path, data: dict, images: Path | None, loaded: Loaded) -> None:
    for n, img in enumerate(data["images"]):
        if not isinstance(img, dict) or img.get("split") != "test":
            continue
        if not is_int(img.get("cocoid")) or not isinstance(img.get("filename"), str) \
                or not isinstance(img.get("sentences"), list):
            loaded.skip("malformed_image_entry", f"{path} images[{n}]")
            continue
        sentences = [s.get("raw") for s in img["sentences"] if isinstance(s, dict) and isinstance(s.get("raw"), str)]
        parts = (img["filepath"], img["filename"]) if isinstance(img.get("filepath"), str) else (img["filename"],)
        loaded.add_references(str(img["cocoid"]), _image_path(images, *parts), sentences, PROMPT)


class COCOCaption(Benchmark):
    name = "coco_caption"
    prompt_suffix = ""  # the caption instruction is the whole question
    layouts = (Layout("karpathy test", ("coco_karpathy_test_gt.json",), "val2014"),
               Layout("karpathy test", ("dataset_coco.json",), "val2014"))

    def __init__(self) -> None:
        self.cache = ScoreCache()

    def read(self, questions: Sequence[Path], annotations: Path | None, images: Path | None) -> Loaded:
        (path,) = questions
        data = load_json(path, "COCO captions file")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise BenchmarkError(f"{path}: not a COCO captions file (coco_karpathy_test_gt.json) nor Karpathy's "
                                 "dataset_coco.json: expected an object with an \"images\" list")
        loaded = Loaded([])
        if "annotations" in data:
            _read_coco_format(path, data, images, loaded)
        else:
            _read_karpathy(path, data, images, loaded)
        return loaded

    def results_answer(self, reply: str) -> str:
        return reply.strip()

    def _scores(self, questions: Sequence[Question], answers: Mapping[str, str]):
        scored = [q for q in questions if q.qid in answers]
        key = tuple((q.qid, answers[q.qid]) for q in scored)
        return self.cache.get(key, lambda: score_captions({q.qid: q.truth for q in scored},
                                                          {q.qid: answers[q.qid] for q in scored}, spice=True))

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict:
        result = self._scores(questions, answers)
        metrics: dict = {**result.corpus, "count": len(result.per_image)}
        if result.notes:
            metrics["SPICE_not_computed"] = result.notes[0]
        return metrics

    def question_scores(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, float]:
        """Per-image CIDEr-D from the same computation (in [0, 10]; the corpus CIDEr is their mean)."""
        return {qid: row["CIDEr"] for qid, row in self._scores(questions, answers).per_image.items()}

    def headline(self, metrics: Mapping) -> str:
        return caption_headline(metrics, (*METRICS, "SPICE"))

    def table_value(self, metrics: Mapping) -> float | None:
        """CIDEr x 100, as captioning papers report it."""
        value = metrics.get("CIDEr")
        return 100 * value if isinstance(value, float) else None

    def read_predictions(self, path: Path, questions: Sequence[Question]) -> dict[str, str]:
        """``[{"image_id": int, "caption": str}]``; a second caption for an image, a non-integer id
        (loadRes would not match it to the ground truth) or a non-string caption is an error."""
        rows = load_json(path, "results file")
        if not isinstance(rows, list):
            raise BenchmarkError(f"{path}: expected a JSON list of {{\"image_id\", \"caption\"}} entries")
        answers: dict[str, str] = {}
        for n, row in enumerate(rows):
            if not isinstance(row, dict) or not is_int(row.get("image_id")) or not isinstance(row.get("caption"), str):
                raise BenchmarkError(f"{path}: entry #{n} needs an integer \"image_id\" and a string \"caption\": "
                                     f"{str(row)[:120]}")
            qid = str(row["image_id"])
            if qid in answers:
                raise BenchmarkError(f"{path}: image_id {qid} has two captions (COCOEvalCap scores one per image)")
            answers[qid] = row["caption"]
        return answers

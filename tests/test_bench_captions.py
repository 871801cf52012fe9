"""Captioning benchmarks (coco_caption, aic_caption): scored as pycocoevalcap's COCOEvalCap and the AI
Challenger caption evaluation score a results file. Expected numbers are computed by hand from
their definitions (in the comments), and COCO's against COCOEvalCap called directly.

METEOR is a Java jar that loads its paraphrase table for ~17 s per start on two cores: it runs for
real in the COCOEvalCap comparison (one JVM serving both sides), which pins it; elsewhere it is
replaced by a constant (``fast_meteor``) so the file stays fast. The PTB tokenizer (Java, <1 s)
always runs for real.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from commands import evaluate
from evaluation.benchmarks import BENCHMARKS
from evaluation.benchmarks.aic_caption import segment
from evaluation.captions import spice_unavailable


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def score(tmp_path, name, questions, predictions, output="out", extra=()):
    args = ["--benchmark", name, "--questions", str(questions), "--predictions", str(predictions),
            "--output", str(tmp_path / output), *extra]
    assert evaluate.main(args) == 0
    return json.loads((tmp_path / output / "metrics.json").read_text())


def scores_of(tmp_path, output="out") -> dict[str, float]:
    lines = (tmp_path / output / "scores.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["qid"]: row["score"] for row in map(json.loads, lines)}


class ConstantMeteor:
    """Stands in for pycocoevalcap's Meteor (a 17-s JVM start) where METEOR is not what is tested."""

    def compute_score(self, gts, res):
        return 0.25, [0.25] * len(gts)

    def method(self):
        return "METEOR"


@pytest.fixture
def fast_meteor(monkeypatch):
    import pycocoevalcap.meteor.meteor as meteor

    monkeypatch.setattr(meteor, "Meteor", ConstantMeteor)


def bleu1(correct: int, guess: int, testlen: int, reflen: int) -> float:
    """pycocoevalcap's corpus BLEU-1: (correct + 1e-15) / (guess + 1e-9), times exp(1 - 1/ratio)
    when ratio = (testlen + 1e-15) / (reflen + 1e-9) is below 1."""
    value = (correct + 1e-15) / (guess + 1e-9)
    ratio = (testlen + 1e-15) / (reflen + 1e-9)
    return value * math.exp(1 - 1 / ratio) if ratio < 1 else value


# -- COCO ----------------------------------------------------------------------------------------------

COCO_GT = {"images": [{"id": 391895}, {"id": 522418}, {"id": 184613}], "annotations": [
    {"image_id": 391895, "id": 1, "caption": "A man riding a horse."},
    {"image_id": 391895, "id": 2, "caption": "A MAN on a horse!"},
    {"image_id": 522418, "id": 3, "caption": "Two dogs play in the snow."},
    {"image_id": 522418, "id": 4, "caption": "Dogs playing in snow"},
    {"image_id": 184613, "id": 5, "caption": "A red bus."}]}
COCO_RESULTS = [{"image_id": 391895, "caption": "A man (riding) a HORSE."},
                {"image_id": 522418, "caption": "two dogs, in the snow"},
                {"image_id": 184613, "caption": "bus"}]


def cocoevalcap_directly(gt: Path, results: Path) -> tuple[dict, dict]:
    """COCOEvalCap(coco, coco.loadRes(results)).evaluate() as its README runs it; SPICE is left out
    (its Stanford models are a download, and there is no internet here)."""
    import pycocoevalcap.eval as cocoeval
    from pycocotools.coco import COCO

    coco = COCO(str(gt))
    evaluation = cocoeval.COCOEvalCap(coco, coco.loadRes(str(results)))
    evaluation.evaluate()
    return evaluation.eval, evaluation.imgToEval


class NoSpice:
    def compute_score(self, gts, res):
        return float("nan"), [float("nan")] * len(gts)

    def method(self):
        return "SPICE"


def test_coco_scores_equal_cocoevalcap_called_directly(tmp_path, monkeypatch):
    """Our run and COCOEvalCap on the same two files. Both use the real METEOR jar, through one JVM
    (the jar is stateless between EVAL requests) to pay its start once."""
    import pycocoevalcap.eval as cocoeval
    import pycocoevalcap.meteor.meteor as meteor

    shared = meteor.Meteor()
    monkeypatch.setattr(meteor, "Meteor", lambda: shared)
    monkeypatch.setattr(cocoeval, "Meteor", lambda: shared)
    monkeypatch.setattr(cocoeval, "Spice", NoSpice)
    gt = write(tmp_path / "coco_karpathy_test_gt.json", COCO_GT)
    results = write(tmp_path / "results.json", COCO_RESULTS)
    m = score(tmp_path, "coco_caption", gt, results)
    direct, per_image = cocoevalcap_directly(gt, results)
    for metric in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert m[metric] == direct[metric], metric
    assert scores_of(tmp_path) == {str(i): row["CIDEr"] for i, row in per_image.items()}

    # By hand, after PTB tokenization (lower-cased; ". , ! ?" dropped; brackets become -lrb- / -rrb-
    # and are kept, since the punctuation list holds them upper-case):
    #   391895: "a man -lrb- riding -rrb- a horse" (7) vs "a man riding a horse" / "a man on a horse" (5, 5):
    #           clipped unigrams a 2, man 1, riding 1, horse 1 -> 5; closest ref length 5
    #   522418: "two dogs in the snow" (5) vs 6 and 4 tokens: all 5 match; closest length: 6 and 4 tie,
    #           the shorter wins -> 4
    #   184613: "bus" (1) vs "a red bus" (3): 1 match; ref length 3
    # Corpus level: 11 correct of 13, test length 13 >= reference length 12: no brevity penalty (per
    # image, 184613 alone would have one: exp(1 - 3)).
    assert m["Bleu_1"] == bleu1(11, 13, 13, 12) and round(m["Bleu_1"], 9) == round(11 / 13, 9)
    assert m["count"] == 3 and m["coverage"]["complete"]
    bench = BENCHMARKS["coco_caption"]()
    assert bench.table_value(m) == 100 * m["CIDEr"]
    # CIDEr is the mean of the per-image CIDEr-D that --compare pairs
    assert m["CIDEr"] == pytest.approx(sum(scores_of(tmp_path).values()) / 3, rel=1e-12)
    assert bench.headline(m).startswith("Bleu_1: %0.3f, " % m["Bleu_1"])
    if spice_unavailable():  # no Stanford models here: said, not failed
        assert m["SPICE_not_computed"].startswith("SPICE not computed: ") and "SPICE not computed" in bench.headline(m)


def test_coco_karpathy_json_and_cider_of_one_image(tmp_path, fast_meteor):
    """Karpathy's dataset_coco.json: only split "test", references from sentences[].raw. CIDEr's
    document frequencies come from the images scored: with one image every n-gram's idf is
    log(1) - log(1) = 0, so CIDEr is 0 even for a caption equal to a reference."""
    karpathy = write(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        {"split": "train", "filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "cocoid": 9,
         "sentences": [{"raw": "A plate of food."}]},
        {"split": "test", "filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895,
         "sentences": [{"raw": "A man riding a horse.", "tokens": ["a", "man"]}, {"raw": "A man on a horse"}]},
        {"split": "test", "filepath": "val2014", "filename": "COCO_val2014_000000000002.jpg", "cocoid": 2,
         "sentences": []}]})
    results = write(tmp_path / "r.json", [{"image_id": 391895, "caption": "A man riding a horse"}])
    m = score(tmp_path, "coco_caption", karpathy, results, extra=["--allow-partial"])
    assert m["count"] == 1 and m["CIDEr"] == 0.0 and m["Bleu_1"] == bleu1(5, 5, 5, 5) == pytest.approx(1.0)
    # an image without captions (COCOEvalCap would fail its assertion) is a counted skip of the benchmark's
    assert m["skipped"] == {"no_reference_caption": 1} and m["coverage"]["skipped"] == 1

    bench = BENCHMARKS["coco_caption"]()
    (tmp_path / "coco" / "val2014").mkdir(parents=True)  # --images may be the folder above val2014/
    loaded = bench.read([karpathy], None, tmp_path / "coco")
    assert loaded.skipped.get("missing_image") == 1 and "val2014/COCO_val2014_000000391895.jpg" in loaded.examples[0]


def test_coco_bad_results_files_are_one_line(tmp_path, capsys):
    gt = write(tmp_path / "gt.json", COCO_GT)
    stray = dict(COCO_GT, annotations=COCO_GT["annotations"] + [{"image_id": 5, "id": 9, "caption": "x"}])
    loaded = BENCHMARKS["coco_caption"]().read([write(tmp_path / "stray.json", stray)], None, None)
    assert len(loaded.questions) == 3 and loaded.skipped == {"caption_for_unknown_image": 1}
    assert loaded.skipped_questions == 0  # not one of the benchmark's images: the coverage stays complete
    for bad, message in ((COCO_RESULTS + [{"image_id": 184613, "caption": "x"}], "image_id 184613 has two captions"),
                         ([{"image_id": "391895", "caption": "x"}], "entry #0 needs an integer \"image_id\""),
                         ({"391895": "x"}, "expected a JSON list")):
        with pytest.raises(SystemExit) as exc:
            score(tmp_path, "coco_caption", gt, write(tmp_path / "bad.json", bad), output="bad")
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        score(tmp_path, "coco_caption", write(tmp_path / "x.json", [1, 2]), write(tmp_path / "r.json", []), output="bad")
    assert "not a COCO captions file" in capsys.readouterr().err


# -- AI Challenger --------------------------------------------------------------------------------------

AIC_VAL = [
    {"url": "http://example.com/a.jpg", "image_id": "a1.jpg", "caption": ["一个男人站在路上", "一个男人在路上走\n", ""]},
    {"url": "http://example.com/b.jpg", "image_id": "b2.jpg", "caption": ["两只狗在草地上奔跑", "草地上有两只狗"]},
    {"url": "http://example.com/c.jpg", "image_id": "c3.jpg", "caption": []},
]


def test_aic_segments_like_the_challenge_and_scores_by_hand(tmp_path, fast_meteor):
    # loadRes: strip, drop "。", jieba accurate mode, words joined by spaces. "坐在" is one word
    # where a reference's "站在" is two ("站 在"); the full-width comma is a word of its own.
    assert segment(" 一个男人坐在路上。") == "一个 男人 坐在 路上"
    assert segment("一个男人站在路上") == "一个 男人 站 在 路上"
    assert segment("两只小狗，在草地上跑。") == "两只 小狗 ， 在 草地 上 跑"
    assert segment("A Man 在跑步") == "A   Man   在 跑步"  # jieba keeps the spaces as words
    assert segment("打折50%的商品") == "打折 50 % 的 商品"  # jieba 0.38, as the evaluation's README pins; 0.42 keeps "50%"

    val = write(tmp_path / "caption_validation_annotations_20170910.json", AIC_VAL)
    results = write(tmp_path / "submit.json", [{"image_id": "a1", "caption": "一个男人坐在路上。"},
                                               {"image_id": "b2.jpg", "caption": "两只小狗，在草地上跑。"}])
    m = score(tmp_path, "aic_caption", val, results, extra=["--allow-partial"])  # c3 has no caption
    # After PTB (lower-case; only ASCII punctuation dropped, so "，" stays a token):
    #   a1: "一个 男人 坐在 路上" (4) vs "一个 男人 站 在 路上" / "一个 男人 在 路上 走" (5, 5): 一个 男人 路上 -> 3
    #       ("坐在" never matches "在"); closest reference length 5
    #   b2: "两只 小狗 ， 在 草地 上 跑" (7) vs "两只 狗 在 草地 上 奔跑" (6) / "草地 上 有 两只 狗" (5):
    #       两只 在 草地 上 -> 4; closest length 6
    # Corpus: 7 correct of 11; test length 11 = reference length 11, yet ratio (11 + 1e-15) / (11 + 1e-9) < 1,
    # so pycocoevalcap's epsilon brevity penalty exp(1 - 1/ratio) applies (a factor 1 - 9e-11).
    assert m["Bleu_1"] == bleu1(7, 11, 11, 11) and m["Bleu_1"] < 7 / 11
    assert m["skipped"] == {"no_reference_caption": 1} and m["count"] == 2 and m["coverage"]["skipped"] == 1
    assert m["METEOR"] == 0.25 and set(scores_of(tmp_path)) == {"a1", "b2"}
    assert BENCHMARKS["aic_caption"]().table_value(m) == 100 * m["CIDEr"]


def test_aic_reference_format_and_refusals(tmp_path, fast_meteor, capsys):
    """The evaluation's own reference file (id_to_words.json: segmented captions, one "images" entry
    per caption) is read as it is; an empty caption fails the official evaluation, and here too."""
    reference = write(tmp_path / "id_to_words.json", {
        "annotations": [{"caption": "一个 男人 站 在 路上", "id": 1, "image_id": 7},
                        {"caption": "一个 男人 在 路上 走", "id": 2, "image_id": 7},
                        {"caption": "两只 狗 在 草地 上 奔跑", "id": 3, "image_id": 8}],
        "images": [{"file_name": "a1", "id": 7}, {"file_name": "a1", "id": 7}, {"file_name": "b2", "id": 8}],
        "type": "captions"})
    results = [{"image_id": "a1", "caption": "一个男人坐在路上。"}, {"image_id": "b2", "caption": "两只小狗，在草地上跑。"}]
    m = score(tmp_path, "aic_caption", reference, write(tmp_path / "s.json", results))
    # as above, but b2 has only its 6-token reference: reference lengths 5 + 6, still 7 of 11
    assert m["Bleu_1"] == bleu1(7, 11, 11, 11) and m["count"] == 2 and m["skipped"] == {}

    results[1]["caption"] = ""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        score(tmp_path, "aic_caption", reference, write(tmp_path / "e.json", results), output="empty")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "caption for image b2 is empty" in err
    results[1]["caption"] = "。"  # passes the official != '' check, then scores as an empty caption
    assert score(tmp_path, "aic_caption", reference, write(tmp_path / "p.json", results), output="period")["count"] == 2


# -- end to end ---------------------------------------------------------------------------------------


def test_coco_caption_asks_the_checkpoint(trained, tmp_path, fast_meteor):
    root = tmp_path / "data" / "coco_caption"
    val2014 = root / "val2014"
    val2014.mkdir(parents=True)
    shutil.copy(trained.red, val2014 / "COCO_val2014_000000000001.jpg")
    shutil.copy(trained.blue, val2014 / "COCO_val2014_000000000002.jpg")
    gt = write(root / "coco_karpathy_test_gt.json", {"images": [{"id": 1}, {"id": 2}], "annotations": [
        {"image_id": 1, "id": 10, "caption": "A red square."}, {"image_id": 2, "id": 20, "caption": "A blue square."}]})
    files = BENCHMARKS["coco_caption"]().locate(root)  # the --suite layout
    assert files.questions == [gt] and files.images == val2014 and files.split == "karpathy test"
    out = tmp_path / "run"
    assert evaluate.main(["--checkpoint", str(trained.checkpoint), "--benchmark", "coco_caption", "--questions", str(gt),
                          "--images", str(val2014), "--output", str(out), "--max-new-tokens", "8"]) == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert lines[0]["produced_by"]["benchmark"] == "coco_caption" and [a["qid"] for a in lines[1:]] == ["1", "2"]
    assert lines[1]["question"] == "Provide a one-sentence caption for the provided image."
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == 2 and isinstance(metrics["CIDEr"], float) and set(scores_of(tmp_path, "run")) == {"1", "2"}


def test_aic_caption_asks_the_checkpoint(trained, tmp_path, fast_meteor):
    images = tmp_path / "caption_validation_images_20170910"
    images.mkdir()
    shutil.copy(trained.red, images / "r1.jpg")
    shutil.copy(trained.blue, images / "b1.jpg")
    root = tmp_path / "data" / "aic_caption"
    val = write(root / "caption_validation_annotations_20170910.json", [
        {"url": "u", "image_id": "r1.jpg", "caption": ["红色的方块"]}, {"url": "u", "image_id": "b1.jpg", "caption": ["蓝色的方块"]}])
    shutil.move(str(images), str(root / images.name))
    files = BENCHMARKS["aic_caption"]().locate(root)  # the --suite layout
    assert files.questions == [val] and files.images == root / images.name
    out = tmp_path / "run"
    assert evaluate.main(["--checkpoint", str(trained.checkpoint), "--benchmark", "aic_caption", "--questions", str(val),
                          "--images", str(files.images), "--output", str(out), "--max-new-tokens", "8"]) == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [a["qid"] for a in lines[1:]] == ["r1", "b1"] and lines[1]["question"] == "请用一句话描述这张图片。"
    assert json.loads((out / "metrics.json").read_text())["count"] == 2
    # the results file holds each reply stripped, an empty one as "。" (scored as no words, not refused)
    scored = {row["qid"]: row["answer"] for row in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    assert scored == {a["qid"]: a["answer"].strip() or "。" for a in lines[1:]}

"""Tests for tools/make_demo_data.py: the synthetic VQA data set of the offline demo."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _load_module():
    spec = importlib.util.spec_from_file_location(
        "make_demo_data", ROOT / "tools" / "make_demo_data.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mdd = _load_module()

ARGS = dict(num_train=600, num_eval=200, image_size=64, seed=0, num_captions=40)

COLOR_RE = re.compile(r"\b(red|green|blue|yellow)\b")
SHAPE_RE = re.compile(r"\b(circle|square|triangle)s?\b")
TYPES = {"color", "shape", "count", "exists", "position"}
VOCAB = {
    "color": {"red", "green", "blue", "yellow"},
    "shape": {"circle", "square", "triangle"},
    "count": {"1", "2", "3"},
    "exists": {"yes", "no"},
    "position": {"left", "middle", "right"},
}
ALL_ANSWERS = set().union(*VOCAB.values())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "data"
    info = mdd.build_demo_data(out, **ARGS)
    return info


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _tree_bytes(root: Path):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------------------------
# Pixel-only scene recovery: independent of the generator's scene spec.
# ----------------------------------------------------------------------------------------------


def _components(mask):
    """4-connected components of a boolean mask -> list of (ys, xs) arrays."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack = [(y0, x0)]
        seen[y0, x0] = True
        pts = []
        while stack:
            y, x = stack.pop()
            pts.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = np.array(pts).T
        comps.append((ys, xs))
    return comps


def scene_from_pixels(path, palette, background):
    """Recover [{color, shape, position, bbox}] from the rendered image alone."""
    a = np.asarray(Image.open(path).convert("RGB"))
    size = a.shape[1]
    known = np.all(a == np.array(background, dtype=np.uint8), axis=-1)
    objs = []
    for name, rgb in palette.items():
        mask = np.all(a == np.array(rgb, dtype=np.uint8), axis=-1)
        known |= mask
        for ys, xs in _components(mask):
            h = ys.max() - ys.min() + 1
            w = xs.max() - xs.min() + 1
            fill = len(ys) / float(h * w)
            shape = "square" if fill > 0.92 else "circle" if fill > 0.63 else "triangle"
            cx = (xs.min() + xs.max()) / 2.0
            objs.append(
                {
                    "color": name,
                    "shape": shape,
                    "position": ("left", "middle", "right")[min(2, int(3 * cx / size))],
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
                }
            )
    assert known.all(), f"{path}: pixels outside background+palette (anti-aliasing?)"
    return sorted(objs, key=lambda o: o["bbox"][0])


def derive_answer(objs, qtype, question):
    """Answer a question about a list of objects; the question is parsed from its text."""
    colors = COLOR_RE.findall(question)
    shapes = SHAPE_RE.findall(question)
    if qtype == "count":
        assert not colors and not shapes
        return str(len(objs))
    if qtype == "color":
        assert len(shapes) == 1 and not colors
        sel = [o for o in objs if o["shape"] == shapes[0]]
        assert len(sel) == 1, "colour question must name a unique shape"
        return sel[0]["color"]
    if qtype == "shape":
        assert len(colors) == 1 and not shapes
        sel = [o for o in objs if o["color"] == colors[0]]
        assert len(sel) == 1, "shape question must name a unique colour"
        return sel[0]["shape"]
    assert len(colors) == 1 and len(shapes) == 1
    sel = [o for o in objs if o["color"] == colors[0] and o["shape"] == shapes[0]]
    if qtype == "exists":
        return "yes" if sel else "no"
    assert qtype == "position"
    assert len(sel) == 1, "position question must name a unique colour+shape"
    return sel[0]["position"]


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def test_layout_and_counts(built):
    root = Path(built["out_dir"])
    for rel in (
        "raw/ai_challenger_captions.json",
        "raw/llava_train.json",
        "raw/llava_eval.json",
        "scenes.json",
    ):
        assert (root / rel).is_file(), rel
    pngs = sorted((root / "images").glob("*.png"))
    assert len(pngs) == built["num_images"]
    assert built["num_train_questions"] == ARGS["num_train"]
    assert built["num_eval"] == ARGS["num_eval"]
    assert built["num_captions"] == ARGS["num_captions"]
    assert built["num_images"] == (
        built["num_train_records"] + built["num_eval"] + built["num_captions"]
    )
    with Image.open(pngs[0]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"


def test_deterministic_byte_identical(built, tmp_path):
    again = mdd.build_demo_data(tmp_path / "again", **ARGS)
    assert again["num_images"] == built["num_images"]
    a = _tree_bytes(Path(built["out_dir"]))
    b = _tree_bytes(Path(again["out_dir"]))
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    # a different seed gives different data
    other = mdd.build_demo_data(tmp_path / "other", **{**ARGS, "seed": 1})
    assert Path(other["llava_eval"]).read_bytes() != Path(built["llava_eval"]).read_bytes()


def test_eval_split_independent_of_train_size(built, tmp_path):
    small = mdd.build_demo_data(tmp_path / "small", **{**ARGS, "num_train": 50})
    assert Path(small["llava_eval"]).read_bytes() == Path(built["llava_eval"]).read_bytes()


def test_rebuild_in_place_removes_stale_images(tmp_path):
    out = tmp_path / "d"
    mdd.build_demo_data(out, num_train=60, num_eval=20, image_size=64, seed=0)
    info = mdd.build_demo_data(out, num_train=20, num_eval=10, image_size=64, seed=0)
    assert len(list((out / "images").glob("*.png"))) == info["num_images"]


def test_ai_challenger_caption_format(built):
    recs = _load(built["captions"])
    assert isinstance(recs, list) and len(recs) == ARGS["num_captions"]
    images = Path(built["images_dir"])
    for r in recs:
        assert set(r) == {"url", "image_id", "caption"}
        assert isinstance(r["url"], str) and r["url"]
        assert re.fullmatch(r"[0-9a-f]{40}\.png", r["image_id"])
        data = (images / r["image_id"]).read_bytes()
        assert hashlib.sha1(data).hexdigest() + ".png" == r["image_id"]
        caps = r["caption"]
        assert isinstance(caps, list) and len(caps) == 5 and len(set(caps)) == 5
        for c in caps:
            assert isinstance(c, str) and re.search(r"[\u4e00-\u9fff]", c)
            assert re.search(r"(红|绿|蓝|黄)色", c) or "图形" in c


def test_captions_describe_the_image(built):
    recs = _load(built["captions"])
    scenes = _load(built["scenes"])
    meta = scenes["meta"]
    zh_color = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
    zh_shape = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
    for r in recs:
        objs = scene_from_pixels(
            Path(built["images_dir"]) / r["image_id"], meta["palette"], meta["background"]
        )
        first = r["caption"][0]
        for o in objs:
            assert f"{zh_color[o['color']]}的{zh_shape[o['shape']]}" in first
        for name, zh in zh_color.items():
            if name not in {o["color"] for o in objs}:
                assert all(zh not in c for c in r["caption"])


def _check_conversation(conv):
    assert isinstance(conv, list) and len(conv) >= 2 and len(conv) % 2 == 0
    for j, turn in enumerate(conv):
        assert set(turn) == {"from", "value"}
        assert turn["from"] == ("human" if j % 2 == 0 else "gpt")
        assert isinstance(turn["value"], str) and turn["value"]
    assert conv[0]["value"].startswith("<image>\n")
    assert all("<image>" not in t["value"] for t in conv[1:])
    for t in conv[1::2]:
        assert t["value"] in ALL_ANSWERS, t["value"]


def test_llava_train_format(built):
    recs = _load(built["llava_train"])
    assert len(recs) == built["num_train_records"]
    images = Path(built["images_dir"])
    ids = set()
    turns = Counter()
    answers = Counter()
    for r in recs:
        assert set(r) == {"id", "image", "conversations"}
        assert r["id"] not in ids
        ids.add(r["id"])
        assert (images / r["image"]).is_file()
        _check_conversation(r["conversations"])
        turns[len(r["conversations"]) // 2] += 1
        answers.update(t["value"] for t in r["conversations"][1::2])
    assert sum(n * k for n, k in turns.items()) == ARGS["num_train"]
    assert turns[1] > turns[2] + turns[3] > 0  # mostly single-turn, some multi-turn
    assert set(turns) <= {1, 2, 3}
    assert set(answers) == ALL_ANSWERS  # every answer word is taught


def test_train_answers_consistent_with_scenes(built):
    recs = _load(built["llava_train"])
    scenes = _load(built["scenes"])["scenes"]
    for r in recs:
        objs = scenes[r["image"]]["objects"]
        conv = r["conversations"]
        for q, a in zip(conv[0::2], conv[1::2]):
            qtype = next(t for t in mdd.QUESTION_TYPES if a["value"] in VOCAB[t])
            assert derive_answer(objs, qtype, q["value"]) == a["value"]


def test_llava_eval_format(built):
    recs = _load(built["llava_eval"])
    assert len(recs) == ARGS["num_eval"]
    images = Path(built["images_dir"])
    assert len({r["id"] for r in recs}) == len(recs)
    assert len({r["image"] for r in recs}) == len(recs)
    for r in recs:
        assert set(r) == {"id", "image", "conversations", "answers", "question_type"}
        assert (images / r["image"]).is_file()
        conv = r["conversations"]
        assert len(conv) == 2  # ONE question per record
        _check_conversation(conv)
        ans = conv[1]["value"]
        assert r["question_type"] in TYPES
        assert ans in VOCAB[r["question_type"]]
        assert len(ans.split()) == 1
        assert r["answers"] == [ans] * 10


def test_eval_answers_match_scene_spec_and_pixels(built):
    recs = _load(built["llava_eval"])
    scenes_doc = _load(built["scenes"])
    meta, scenes = scenes_doc["meta"], scenes_doc["scenes"]
    palette = {k: tuple(v) for k, v in meta["palette"].items()}
    images = Path(built["images_dir"])
    for r in recs:
        question = r["conversations"][0]["value"][len("<image>\n"):]
        answer = r["conversations"][1]["value"]
        qtype = r["question_type"]
        spec = scenes[r["image"]]["objects"]
        # 1. re-derived from the scene spec
        assert derive_answer(spec, qtype, question) == answer
        assert mdd.answer_question(scenes[r["image"]], qtype, _params(question)) == answer
        # 2. re-derived from the pixels alone; the recovered scene equals the spec
        pix = scene_from_pixels(images / r["image"], meta["palette"], meta["background"])
        assert derive_answer(pix, qtype, question) == answer
        assert [(o["color"], o["shape"], o["position"], o["bbox"]) for o in pix] == [
            (o["color"], o["shape"], o["position"], o["bbox"]) for o in spec
        ]
        # 3. pixel colour at every shape's centre is its palette colour; for colour questions,
        #    the shape the question names has the colour the answer names
        a = np.asarray(Image.open(images / r["image"]).convert("RGB"))
        for o in spec:
            x, y = o["center"]
            assert tuple(int(v) for v in a[y, x]) == palette[o["color"]]
        if qtype == "color":
            (target,) = [o for o in spec if o["shape"] == SHAPE_RE.search(question).group(1)]
            x, y = target["center"]
            assert tuple(int(v) for v in a[y, x]) == palette[answer]


def _params(question):
    p = {}
    c, s = COLOR_RE.search(question), SHAPE_RE.search(question)
    if c:
        p["color"] = c.group(1)
    if s:
        p["shape"] = s.group(1)
    return p


def test_eval_types_and_answers_balanced(built):
    recs = _load(built["llava_eval"])
    by_type = Counter(r["question_type"] for r in recs)
    assert set(by_type) == TYPES
    assert max(by_type.values()) - min(by_type.values()) <= 1
    for t in TYPES:
        ans = Counter(r["answers"][0] for r in recs if r["question_type"] == t)
        assert set(ans) == VOCAB[t], (t, ans)
        assert max(ans.values()) - min(ans.values()) <= 1, (t, ans)
    assert set(built["chance"]) == TYPES
    assert built["chance"]["exists"] == 0.5 and built["chance"]["color"] == 0.25


def test_training_answers_roughly_balanced(built):
    recs = _load(built["llava_train"])
    for t in TYPES:
        ans = Counter()
        for r in recs:
            for g in r["conversations"][1::2]:
                if g["value"] in VOCAB[t]:
                    ans[g["value"]] += 1
        share = min(ans.values()) / max(ans.values())
        assert share > 0.6, (t, ans)


def test_counts_one_to_three_present(built):
    scenes = _load(built["scenes"])["scenes"]
    eval_names = {r["image"] for r in _load(built["llava_eval"])}
    train_names = {r["image"] for r in _load(built["llava_train"])}
    for names in (eval_names, train_names):
        n = Counter(len(scenes[k]["objects"]) for k in names)
        assert set(n) == {1, 2, 3}


def test_heldout_images_distinct_from_training(built):
    images = Path(built["images_dir"])
    eval_names = {r["image"] for r in _load(built["llava_eval"])}
    other = {r["image"] for r in _load(built["llava_train"])}
    other |= {r["image_id"] for r in _load(built["captions"])}
    assert not eval_names & other

    def digest(name):
        return hashlib.sha1((images / name).read_bytes()).hexdigest()

    eval_hashes = {digest(n) for n in eval_names}
    assert len(eval_hashes) == len(eval_names)
    assert not eval_hashes & {digest(n) for n in other}


@pytest.mark.parametrize("size", [48, 96])
def test_other_image_sizes_render_unambiguously(tmp_path, size):
    info = mdd.build_demo_data(tmp_path, num_train=30, num_eval=40, image_size=size, seed=3)
    doc = _load(info["scenes"])
    for r in _load(info["llava_eval"]):
        pix = scene_from_pixels(
            Path(info["images_dir"]) / r["image"], doc["meta"]["palette"], doc["meta"]["background"]
        )
        question = r["conversations"][0]["value"]
        assert derive_answer(pix, r["question_type"], question) == r["answers"][0]
        with Image.open(Path(info["images_dir"]) / r["image"]) as im:
            assert im.size == (size, size)


def test_rejects_tiny_images(tmp_path):
    with pytest.raises(ValueError):
        mdd.build_demo_data(tmp_path, num_train=1, num_eval=1, image_size=16, seed=0)


def test_cli(tmp_path, capsys):
    rc = mdd.main(
        ["--out", str(tmp_path / "cli"), "--num-train", "20", "--num-eval", "10",
         "--image-size", "64", "--seed", "0"]
    )
    assert rc == 0
    assert "20 training questions" in capsys.readouterr().out
    assert len(_load(tmp_path / "cli" / "raw" / "llava_eval.json")) == 10


def test_grid_layout_one_shape_per_patch_and_heldout_never_trained_on(tmp_path):
    # 3,000 questions need ~200 one-shape training scenes, more than the 108 the grid has: the
    # generator must reuse training scenes, and never a held-out one.
    info = mdd.build_demo_data(tmp_path, num_train=3000, num_eval=150, image_size=48, seed=0,
                               num_captions=20, layout="grid")
    doc = _load(info["scenes"])
    assert doc["meta"]["layout"] == "grid"
    images = Path(info["images_dir"])
    for name, scene in doc["scenes"].items():
        for o in scene["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            assert (x1 - x0 + 1, y1 - y0 + 1) == (13, 13)
            # inside one 16-px cell, in the cell column that its position names
            assert x0 // 16 == x1 // 16 == mdd.POSITIONS.index(o["position"]) and y0 // 16 == y1 // 16
    for r in _load(info["llava_eval"]):
        pix = scene_from_pixels(images / r["image"], doc["meta"]["palette"], doc["meta"]["background"])
        assert derive_answer(pix, r["question_type"], r["conversations"][0]["value"]) == r["answers"][0]
    key = lambda name: mdd.scene_key(doc["scenes"][name])  # noqa: E731
    train = [r["image"] for r in _load(info["llava_train"])]
    heldout = {key(r["image"]) for r in _load(info["llava_eval"])}
    trained = {key(n) for n in train} | {key(r["image_id"]) for r in _load(info["captions"])}
    assert len(heldout) == info["num_eval"] and not heldout & trained
    assert len({key(n) for n in train}) < len(train)  # training scenes were reused
    n = Counter(len(doc["scenes"][name]["objects"]) for name in train)
    assert set(n) == {1, 2, 3}


def test_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        mdd.build_demo_data(tmp_path, num_train=1, num_eval=1, image_size=48, seed=0, layout="rows")


def _question_type(question: str) -> str:
    """The type of a question, from the template it was written with."""
    for qtype, templates in mdd.TEMPLATES.items():
        for template in templates:
            pattern = re.escape(template).replace(r"\{color\}", r"\w+").replace(r"\{shape\}", r"\w+")
            if re.fullmatch(pattern, question):
                return qtype
    raise AssertionError(f"no template matches {question!r}")


def test_train_weights_change_the_training_mix_only(tmp_path):
    plain = mdd.build_demo_data(tmp_path / "plain", num_train=700, num_eval=50, image_size=48, seed=0,
                                num_captions=5, layout="grid")
    weighted = mdd.build_demo_data(tmp_path / "weighted", num_train=700, num_eval=50, image_size=48, seed=0,
                                   num_captions=5, layout="grid", train_weights={"position": 3})

    def first_types(info):
        records = _load(info["llava_train"])
        return Counter(_question_type(r["conversations"][0]["value"].removeprefix("<image>\n")) for r in records)

    even, heavy = first_types(plain), first_types(weighted)
    # equal weights: one fifth each (within the records' rounding); position=3: 3 of 7 parts
    assert max(even.values()) - min(even.values()) <= 0.05 * sum(even.values())
    assert abs(heavy["position"] / sum(heavy.values()) - 3 / 7) < 0.03
    # the held-out split does not depend on the training mix
    assert Path(plain["llava_eval"]).read_bytes() == Path(weighted["llava_eval"]).read_bytes()


@pytest.mark.parametrize("weights, message", [({"colour": 2}, "unknown question type 'colour'"),
                                              ({"position": 0}, "must be > 0")])
def test_rejects_bad_train_weights(tmp_path, weights, message):
    with pytest.raises(ValueError, match=message):
        mdd.build_demo_data(tmp_path, num_train=5, num_eval=5, image_size=48, seed=0, layout="grid",
                            train_weights=weights)


def test_cli_train_weight(tmp_path, capsys):
    assert mdd.main(["--out", str(tmp_path / "a"), "--num-train", "70", "--num-eval", "5", "--image-size", "48",
                     "--layout", "grid", "--train-weight", "position=6"]) == 0
    records = _load(tmp_path / "a" / "raw" / "llava_train.json")
    firsts = Counter(_question_type(r["conversations"][0]["value"].removeprefix("<image>\n")) for r in records)
    assert firsts.most_common(1)[0][0] == "position"
    with pytest.raises(SystemExit):
        mdd.main(["--out", str(tmp_path / "b"), "--train-weight", "position"])
    assert "expects TYPE=NUMBER" in capsys.readouterr().err

#!/usr/bin/env python
"""Build the deterministic synthetic VQA data set used by the offline demo.

Each image shows ONE TO THREE flat shapes on a white background. The image is divided into
three equal vertical columns (left / middle / right); every shape sits in its own column, so
shapes never overlap and "where" always has a one-word answer. Shapes are drawn without
anti-aliasing, so every shape pixel has exactly its palette colour. Two layouts:

* ``columns`` (default): shapes of varied size (17-24 % of the image side) at any height and
  with some sideways jitter in their column;
* ``grid``: shapes of one size, centred in the cells of a 3x3 grid (random row). The offline
  demo uses it with 48-px images and a vision tower with 16-px patches, so that every shape lies
  inside exactly one patch. There are only 108 one-shape grid scenes, so training images may
  repeat; held-out images never occur in training in either layout.

Vocabulary
----------
* colours (4): red, green, blue, yellow   (English)   红色 绿色 蓝色 黄色   (Chinese captions)
* shapes  (3): circle, square, triangle  (English)   圆形 正方形 三角形
* count: 1, 2 or 3 shapes per image (digits "1" / "2" / "3")
* position: "left" / "middle" / "right" (the column of the shape)

Question types (English, LLaVA format, one-word answers)
--------------------------------------------------------
========  ==========================================  =====================  =============
type      example                                     answers                chance
========  ==========================================  =====================  =============
color     What color is the triangle?                 red/green/blue/yellow  1/4 = 25.0 %
shape     What shape is the blue object?              circle/square/triangle 1/3 = 33.3 %
count     How many shapes are there?                  1/2/3                  1/3 = 33.3 %
exists    Is there a red square?                      yes/no                 1/2 = 50.0 %
position  Where is the green circle?                  left/middle/right      1/3 = 33.3 %
========  ==========================================  =====================  =============

Held-out answers are balanced within each type (per-answer counts differ by at most one), and
the types are equally frequent, so guessing (or always answering the majority answer of the
type) scores the chance column; averaged over types that is 35.0 %. Every question is
unambiguous: a colour question names a shape that occurs exactly once, a shape question names a
colour that occurs exactly once, and position questions name a colour+shape pair that occurs
exactly once. "No" answers to existence questions are for colour/shape pairs absent from the
image (often hard negatives: the colour or the shape is present, but not together).

Files written (``--out data/demo``)
-----------------------------------
* ``images/*.png``                      -- all images (training, held-out, caption subset)
* ``raw/ai_challenger_captions.json``   -- raw AI Challenger caption format:
  ``[{"url", "image_id": "<sha1>.png", "caption": [5 Chinese sentences]}]``
* ``raw/llava_train.json``              -- raw LLaVA format, ``--num-train`` questions, ~70 % of
  the records single-turn, the rest 2-3 turns about the same image
* ``raw/llava_eval.json``               -- held-out LLaVA records, ONE question each, plus
  ``"answers"`` (10 copies of the answer, VQA-style) and ``"question_type"``
* ``scenes.json``                       -- the scene spec of every image (for tests/debugging)

Held-out images are distinct from all training and caption images (scene keys are checked).
Training images are distinct from each other too, until new scenes become rare (see ``grid``).
Same arguments give byte-identical files (``random.Random`` streams seeded from ``--seed``, no
global RNG, fixed JSON formatting). Building the defaults takes a few seconds.

Usage::

    python tools/make_demo_data.py --out data/demo --num-train 6000 --num-eval 500 \\
        --image-size 64 --seed 0 [--layout grid]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from random import Random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

BACKGROUND: Tuple[int, int, int] = (255, 255, 255)
PALETTE: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
COLORS: Tuple[str, ...] = tuple(PALETTE)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: Tuple[str, ...] = ("left", "middle", "right")  # column index 0, 1, 2
COUNTS: Tuple[str, ...] = ("1", "2", "3")
QUESTION_TYPES: Tuple[str, ...] = ("color", "shape", "count", "exists", "position")
ANSWERS: Dict[str, Tuple[str, ...]] = {
    "color": COLORS,
    "shape": SHAPES,
    "count": COUNTS,
    "exists": ("yes", "no"),
    "position": POSITIONS,
}
CHANCE: Dict[str, float] = {t: 1.0 / len(a) for t, a in ANSWERS.items()}

COLORS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
SHAPES_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
POSITIONS_ZH = {"left": "左边", "middle": "中间", "right": "右边"}
NUMBERS_ZH = {1: "一", 2: "两", 3: "三"}

# English question templates; {color} / {shape} are filled from the scene.
TEMPLATES: Dict[str, Tuple[str, ...]] = {
    "color": (
        "What color is the {shape}?",
        "What is the color of the {shape}?",
        "Which color does the {shape} have?",
    ),
    "shape": (
        "What shape is the {color} object?",
        "What is the shape of the {color} object?",
        "Which shape is {color}?",
    ),
    "count": (
        "How many shapes are there?",
        "How many objects are in the image?",
        "How many shapes are in the picture?",
    ),
    "exists": (
        "Is there a {color} {shape}?",
        "Is there a {color} {shape} in the image?",
        "Does the image contain a {color} {shape}?",
    ),
    "position": (
        "Where is the {color} {shape}?",
        "Is the {color} {shape} on the left, in the middle, or on the right?",
        "Where is the {color} {shape} located?",
    ),
}

LAYOUTS: Tuple[str, ...] = ("columns", "grid")
MULTI_TURN_FRACTION = 0.3  # share of training records with 2-3 turns
NUM_VQA_ANSWERS = 10
MIN_IMAGE_SIZE = 32
RNG_NAMESPACE = "siglip-qwen-vqa/make_demo_data"

Obj = Dict[str, Any]
Scene = Dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------


def _odd_sizes(image_size: int) -> List[int]:
    """Allowed (odd, so shapes are symmetric) shape side lengths for an image size."""
    lo = max(7, round(0.17 * image_size))
    hi = max(lo, round(0.24 * image_size))
    sizes = [s for s in range(lo, hi + 1) if s % 2 == 1]
    return sizes or [lo | 1]


def _layout(image_size: int) -> Dict[str, Any]:
    sizes = _odd_sizes(image_size)
    col_w = image_size / 3.0
    # keep >= 2 px between shapes in neighbouring columns and >= 1 px to the column border
    x_jitter = max(0, int((col_w - max(sizes) - 2) // 2))
    margin = max(2, image_size // 16)
    return {"sizes": sizes, "col_w": col_w, "x_jitter": x_jitter, "margin": margin}


def _make_object(
    rng: Random, image_size: int, column: int, color: str, shape: str, layout: str = "columns"
) -> Obj:
    if layout == "grid":
        # centred in a random cell of its column: with a patch as wide as a cell, every shape
        # lies inside exactly one patch, so a tiny random vision tower separates them quickly
        cell = image_size // 3
        size = (cell - 3) | 1
        row = rng.randint(0, 2)
        x0 = column * cell + (cell - size) // 2
        y0 = row * cell + (cell - size) // 2
        cx, cy = x0 + size // 2, y0 + size // 2
    else:
        lay = _layout(image_size)
        size = rng.choice(lay["sizes"])
        half = size // 2
        cx = int(round((column + 0.5) * lay["col_w"])) + rng.randint(-lay["x_jitter"], lay["x_jitter"])
        cy = rng.randint(lay["margin"] + half, image_size - 1 - lay["margin"] - half)
        x0, y0 = cx - half, cy - half
    bbox = [x0, y0, x0 + size - 1, y0 + size - 1]
    # a point well inside the shape (the centroid for the upward triangle)
    inside = [cx, y0 + (2 * (size - 1)) // 3] if shape == "triangle" else [cx, cy]
    return {
        "color": color,
        "shape": shape,
        "column": column,
        "position": POSITIONS[column],
        "bbox": bbox,
        "center": inside,
    }


def random_scene(
    rng: Random, image_size: int, n: Optional[int] = None, layout: str = "columns"
) -> Scene:
    """A scene of ``n`` (default: uniform 1-3) shapes in distinct columns, sorted by column."""
    if n is None:
        n = rng.randint(1, 3)
    columns = sorted(rng.sample(range(3), n))
    objects = [
        _make_object(rng, image_size, c, rng.choice(COLORS), rng.choice(SHAPES), layout)
        for c in columns
    ]
    return {"image_size": image_size, "objects": objects}


def scene_key(scene: Scene) -> str:
    """Canonical identity of a scene: equal keys <=> identical rendered images."""
    parts = [f"{o['color']}:{o['shape']}:{o['bbox']}" for o in scene["objects"]]
    return f"{scene['image_size']}|" + "|".join(parts)


def render(scene: Scene) -> Image.Image:
    size = scene["image_size"]
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        fill = PALETTE[o["color"]]
        x0, y0, x1, y1 = o["bbox"]
        if o["shape"] == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif o["shape"] == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
        else:  # pragma: no cover - vocabulary is closed
            raise ValueError(f"unknown shape {o['shape']!r}")
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------


def _count_by(scene: Scene, key: str) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for o in scene["objects"]:
        out[o[key]] = out.get(o[key], 0) + 1
    return out


def candidate_questions(scene: Scene) -> Dict[str, List[Dict[str, Any]]]:
    """Every unambiguous question the scene supports: type -> [{"params", "answer"}]."""
    objs = scene["objects"]
    shape_n = _count_by(scene, "shape")
    color_n = _count_by(scene, "color")
    pairs: Dict[Tuple[str, str], List[Obj]] = {}
    for o in objs:
        pairs.setdefault((o["color"], o["shape"]), []).append(o)

    cands: Dict[str, List[Dict[str, Any]]] = {t: [] for t in QUESTION_TYPES}
    for o in objs:
        if shape_n[o["shape"]] == 1:
            cands["color"].append({"params": {"shape": o["shape"]}, "answer": o["color"]})
        if color_n[o["color"]] == 1:
            cands["shape"].append({"params": {"color": o["color"]}, "answer": o["shape"]})
    cands["count"].append({"params": {}, "answer": str(len(objs))})
    for c in COLORS:
        for s in SHAPES:
            ans = "yes" if (c, s) in pairs else "no"
            cands["exists"].append({"params": {"color": c, "shape": s}, "answer": ans})
    for (c, s), members in pairs.items():
        if len(members) == 1:
            cands["position"].append(
                {"params": {"color": c, "shape": s}, "answer": members[0]["position"]}
            )
    return cands


def answer_question(scene: Scene, qtype: str, params: Dict[str, str]) -> str:
    """Recompute the answer of a question from the scene (raises if it is ambiguous)."""
    objs = scene["objects"]
    if qtype == "count":
        return str(len(objs))
    if qtype == "exists":
        hit = any(o["color"] == params["color"] and o["shape"] == params["shape"] for o in objs)
        return "yes" if hit else "no"
    if qtype == "color":
        sel = [o for o in objs if o["shape"] == params["shape"]]
        field = "color"
    elif qtype == "shape":
        sel = [o for o in objs if o["color"] == params["color"]]
        field = "shape"
    elif qtype == "position":
        sel = [o for o in objs if o["color"] == params["color"] and o["shape"] == params["shape"]]
        field = "position"
    else:
        raise ValueError(f"unknown question type {qtype!r}")
    if len(sel) != 1:
        raise ValueError(f"ambiguous {qtype} question {params} for scene {scene_key(scene)}")
    return sel[0][field]


def _question_text(rng: Random, qtype: str, params: Dict[str, str]) -> str:
    return rng.choice(TEMPLATES[qtype]).format(**params)


def _pick(rng: Random, cands: Dict[str, List[Dict[str, Any]]], qtype: str, answer: str):
    options = [c for c in cands[qtype] if c["answer"] == answer]
    return rng.choice(options) if options else None


def _targeted_scene(
    rng: Random,
    image_size: int,
    qtype: str,
    answer: str,
    taken: set,
    layout: str = "columns",
    reserved: Optional[set] = None,
) -> Tuple[Scene, Dict[str, Any]]:
    """Rejection-sample a scene that supports a ``qtype`` question answered ``answer``.

    A scene not in ``taken`` is preferred. With ``reserved`` given (the held-out scenes), a
    scene already used for training may be drawn again once new ones have become rare: the grid
    layout has only 108 one-shape scenes, while a held-out scene is never reused.
    """
    for attempt in range(10000):
        n = int(answer) if qtype == "count" else None
        scene = random_scene(rng, image_size, n, layout)
        key = scene_key(scene)
        if key in taken and (reserved is None or key in reserved or attempt < 200):
            continue
        cand = _pick(rng, candidate_questions(scene), qtype, answer)
        if cand is not None:
            taken.add(key)
            return scene, cand
    raise RuntimeError(f"could not sample a scene for {qtype}={answer}")  # pragma: no cover


def _balanced_targets(
    rng: Random, total: int, weights: Optional[Dict[str, float]] = None
) -> List[Tuple[str, str]]:
    """``total`` (type, answer) pairs, answers balanced per type. Types are equally frequent, or
    in proportion to ``weights`` (type -> relative weight, 1 for a type not named)."""
    w = [float((weights or {}).get(t, 1.0)) for t in QUESTION_TYPES]
    exact = [total * x / sum(w) for x in w]
    per_type = [int(x) for x in exact]
    # largest remainders first (ties: the earlier type), so the counts add up to ``total``
    by_remainder = sorted(range(len(w)), key=lambda i: (per_type[i] - exact[i], i))
    for i in by_remainder[: total - sum(per_type)]:
        per_type[i] += 1
    targets: List[Tuple[str, str]] = []
    for qtype, k in zip(QUESTION_TYPES, per_type):
        answers: List[str] = []
        while len(answers) < k:
            block = list(ANSWERS[qtype])
            rng.shuffle(block)
            answers.extend(block)
        targets.extend((qtype, a) for a in answers[:k])
    rng.shuffle(targets)
    return targets


# ----------------------------------------------------------------------------------------------
# Chinese captions (AI Challenger format)
# ----------------------------------------------------------------------------------------------


def _zh_obj(o: Obj, n: int = 1) -> str:
    return f"{NUMBERS_ZH[n]}个{COLORS_ZH[o['color']]}的{SHAPES_ZH[o['shape']]}"


def _zh_join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return "、".join(items[:-1]) + "和" + items[-1]


def captions_zh(scene: Scene) -> List[str]:
    """Five distinct Chinese sentences describing the scene."""
    objs = scene["objects"]
    n = len(objs)
    groups: List[Tuple[Obj, int]] = []
    for o in objs:
        for i, (g, k) in enumerate(groups):
            if g["color"] == o["color"] and g["shape"] == o["shape"]:
                groups[i] = (g, k + 1)
                break
        else:
            groups.append((o, 1))
    listing = _zh_join([_zh_obj(g, k) for g, k in groups])
    by_pos = "，".join(f"{POSITIONS_ZH[o['position']]}是{_zh_obj(o)}" for o in objs)
    pos_first = "，".join(f"{_zh_obj(o)}在图片的{POSITIONS_ZH[o['position']]}" for o in objs)
    shape_n: Dict[str, int] = {}
    for o in objs:
        shape_n[o["shape"]] = shape_n.get(o["shape"], 0) + 1
    kinds = _zh_join([f"{NUMBERS_ZH[k]}个{SHAPES_ZH[s]}" for s, k in shape_n.items()])
    return [
        f"图中有{listing}",
        f"白色背景上有{NUMBERS_ZH[n]}个图形：{listing}",
        f"画面{by_pos}" if n > 1 else f"画面的{POSITIONS_ZH[objs[0]['position']]}有{_zh_obj(objs[0])}",
        (
            f"这张图片里一共有{NUMBERS_ZH[n]}个图形，其中有{kinds}"
            if n > 1
            else f"这张图片里只有一个{SHAPES_ZH[objs[0]['shape']]}，它是{COLORS_ZH[objs[0]['color']]}的"
        ),
        pos_first,
    ]


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------


def _dump_json(obj: Any, compact: bool = False) -> bytes:
    if compact:
        text = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    else:
        text = json.dumps(obj, ensure_ascii=False, indent=2)
    return (text + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


_OUR_IMAGE_NAME = re.compile(r"^(demo_train_\d+|demo_eval_\d+|[0-9a-f]{40})\.png$")


def build_demo_data(
    out_dir: "str | os.PathLike[str]" = "data/demo",
    num_train: int = 6000,
    num_eval: int = 500,
    image_size: int = 64,
    seed: int = 0,
    num_captions: Optional[int] = None,
    layout: str = "columns",
    train_weights: Optional[Dict[str, float]] = None,
) -> Dict[str, Any]:
    """Write the demo data set under ``out_dir`` and return its paths and counts.

    ``num_train`` is the number of training questions (grouped into 1-3 turn records, one image
    per record), ``num_eval`` the number of held-out questions (one per record and image),
    ``num_captions`` the number of caption images (default ``num_train // 10``). ``layout`` is
    ``columns`` (shapes of varied size anywhere in their column) or ``grid`` (shapes of one size
    centred in the cells of a 3x3 grid; training images may repeat, held-out ones never occur
    in training). ``train_weights`` (question type -> relative weight, default 1 each) sets how
    often each type is the first question of a training record; the held-out split is always
    balanced over types.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    for qtype, weight in (train_weights or {}).items():
        if qtype not in QUESTION_TYPES:
            raise ValueError(f"train_weights: unknown question type {qtype!r} (known: {', '.join(QUESTION_TYPES)})")
        if not weight > 0:
            raise ValueError(f"train_weights: the weight of {qtype} must be > 0, got {weight!r}")
    if num_train < 0 or num_eval < 0:
        raise ValueError("num_train and num_eval must be >= 0")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE} so shapes stay recognisable")
    if num_captions is None:
        num_captions = num_train // 10
    out = Path(out_dir)
    images_dir = out / "images"
    raw_dir = out / "raw"
    images_dir.mkdir(parents=True, exist_ok=True)
    raw_dir.mkdir(parents=True, exist_ok=True)

    # Independent streams: the held-out set does not change when num_train changes.
    rng_eval = Random(f"{RNG_NAMESPACE}:{seed}:eval")
    rng_train = Random(f"{RNG_NAMESPACE}:{seed}:train")
    rng_cap = Random(f"{RNG_NAMESPACE}:{seed}:captions")

    taken: set = set()  # scene keys in use; eval is drawn first and never reused
    scenes: Dict[str, Scene] = {}
    written: List[str] = []

    def save(name: str, scene: Scene) -> None:
        (images_dir / name).write_bytes(png_bytes(render(scene)))
        scenes[name] = scene
        written.append(name)

    # --- held-out split: one question per image, balanced answers --------------------------
    eval_records = []
    for i, (qtype, answer) in enumerate(_balanced_targets(rng_eval, num_eval)):
        scene, cand = _targeted_scene(rng_eval, image_size, qtype, answer, taken, layout)
        name = f"demo_eval_{i:06d}.png"
        save(name, scene)
        eval_records.append(
            {
                "id": f"demo_eval_{i:06d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\n" + _question_text(rng_eval, qtype, cand["params"])},
                    {"from": "gpt", "value": answer},
                ],
                "answers": [answer] * NUM_VQA_ANSWERS,
                "question_type": qtype,
            }
        )

    heldout = set(taken)
    # --- training split: first turn targeted (balanced), extra turns from the same image ----
    train_records = []
    targets = _balanced_targets(rng_train, num_train, train_weights)  # an upper bound on records needed
    made = 0
    i = 0
    while made < num_train:
        qtype, answer = targets[i]
        k = 1 if rng_train.random() >= MULTI_TURN_FRACTION else rng_train.randint(2, 3)
        k = min(k, num_train - made)
        scene, cand = _targeted_scene(
            rng_train, image_size, qtype, answer, taken, layout, reserved=heldout
        )
        cands = candidate_questions(scene)
        turns = [(qtype, cand)]
        asked = {qtype}
        while len(turns) < k:
            free = [t for t in QUESTION_TYPES if t not in asked and cands[t]]
            if not free:
                break
            t = rng_train.choice(free)
            asked.add(t)
            a = rng_train.choice(sorted({c["answer"] for c in cands[t]}))
            turns.append((t, _pick(rng_train, cands, t, a)))
        name = f"demo_train_{i:06d}.png"
        save(name, scene)
        conv = []
        for j, (t, c) in enumerate(turns):
            q = _question_text(rng_train, t, c["params"])
            conv.append({"from": "human", "value": ("<image>\n" + q) if j == 0 else q})
            conv.append({"from": "gpt", "value": c["answer"]})
        train_records.append({"id": f"demo_train_{i:06d}", "image": name, "conversations": conv})
        made += len(turns)
        i += 1

    # --- Chinese caption subset (AI Challenger raw format) ----------------------------------
    caption_records = []
    for _ in range(num_captions):
        for _attempt in range(10000):
            scene = random_scene(rng_cap, image_size, layout=layout)
            if scene_key(scene) not in taken:
                taken.add(scene_key(scene))
                break
        else:
            raise ValueError(f"no unused {layout} scenes left for {num_captions} caption images")
        data = png_bytes(render(scene))
        name = hashlib.sha1(data).hexdigest() + ".png"
        (images_dir / name).write_bytes(data)
        scenes[name] = scene
        written.append(name)
        caption_records.append(
            {
                "url": f"synthetic://siglip-qwen-vqa/demo/{name}",
                "image_id": name,
                "caption": captions_zh(scene),
            }
        )

    # Remove images a previous (larger) build left behind; only files named like ours.
    keep = set(written)
    for p in images_dir.iterdir():
        if p.is_file() and _OUR_IMAGE_NAME.match(p.name) and p.name not in keep:
            p.unlink()

    paths = {
        "out_dir": str(out),
        "images_dir": str(images_dir),
        "captions": str(raw_dir / "ai_challenger_captions.json"),
        "llava_train": str(raw_dir / "llava_train.json"),
        "llava_eval": str(raw_dir / "llava_eval.json"),
        "scenes": str(out / "scenes.json"),
    }
    _write_atomic(Path(paths["captions"]), _dump_json(caption_records))
    _write_atomic(Path(paths["llava_train"]), _dump_json(train_records))
    _write_atomic(Path(paths["llava_eval"]), _dump_json(eval_records))
    meta = {
        "seed": seed,
        "image_size": image_size,
        "layout": layout,
        "background": list(BACKGROUND),
        "palette": {k: list(v) for k, v in PALETTE.items()},
        "shapes": list(SHAPES),
        "positions": list(POSITIONS),
        "answers": {k: list(v) for k, v in ANSWERS.items()},
        "chance": CHANCE,
    }
    _write_atomic(Path(paths["scenes"]), _dump_json({"meta": meta, "scenes": scenes}, compact=True))

    eval_types = {t: 0 for t in QUESTION_TYPES}
    for r in eval_records:
        eval_types[r["question_type"]] += 1
    return {
        **paths,
        "num_images": len(written),
        "num_train_records": len(train_records),
        "num_train_questions": made,
        "num_eval": len(eval_records),
        "num_captions": len(caption_records),
        "eval_question_types": eval_types,
        "chance": dict(CHANCE),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/demo", help="output directory (default: data/demo)")
    ap.add_argument("--num-train", type=int, default=6000, help="training questions (default 6000)")
    ap.add_argument("--num-eval", type=int, default=500, help="held-out questions (default 500)")
    ap.add_argument(
        "--num-captions", type=int, default=None,
        help="images with Chinese captions (default: num-train // 10)",
    )
    ap.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    ap.add_argument(
        "--layout", choices=LAYOUTS, default="columns",
        help="columns: shapes of varied size anywhere in their column; grid: one size, centred in "
        "the cells of a 3x3 grid (the demo: one shape per 16-px patch of a 48-px image)",
    )
    ap.add_argument(
        "--train-weight", action="append", default=[], metavar="TYPE=W",
        help="relative weight of a question type among the first questions of training records "
        "(default 1 each; repeatable), e.g. --train-weight position=3",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    weights: Dict[str, float] = {}
    for item in args.train_weight:
        qtype, sep, value = item.partition("=")
        try:
            weights[qtype] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            ap.error(f"--train-weight expects TYPE=NUMBER, got {item!r}")
    t0 = time.perf_counter()
    info = build_demo_data(
        args.out, args.num_train, args.num_eval, args.image_size, args.seed, args.num_captions,
        args.layout, weights or None,
    )
    dt = time.perf_counter() - t0
    print(
        f"[make_demo_data] {info['num_images']} images, "
        f"{info['num_train_questions']} training questions in {info['num_train_records']} records, "
        f"{info['num_eval']} held-out questions, {info['num_captions']} captioned images "
        f"-> {info['out_dir']} ({dt:.1f}s)"
    )
    chance = ", ".join(f"{t} {100 * c:.1f}%" for t, c in CHANCE.items())
    print(f"[make_demo_data] chance per question type: {chance}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

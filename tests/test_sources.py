"""Each raw format read through dataset/sources and merged: the documented output per format, and
the seeded, balanced choice of AI Challenger caption and question template."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path


from dataset.merge import run
from dataset.writer import OUTPUT_FILES
from tests.raw_samples import (
    AI_CHALLENGER,
    COMPLEX_77K,
    CONVERSATION_58K,
    DETAIL_23K,
    MIX_665K,
    SWIFT_LINES,
    TEMPLATES,
    TOKEN,
    llava_source,
    load_outputs,
    make_config,
    placeholder_count,
    synthetic_ai,
    touch,
    write_json,
)


# --------------------------------------------------------------------------------------------
# Documented output for each raw format
# --------------------------------------------------------------------------------------------


def test_ai_challenger_output(tmp_path, ai_source):
    stats = run(make_config(tmp_path, [ai_source]))
    images, qa, stats_json = load_outputs(tmp_path / "out")

    assert list(images) == ["0", "1"]  # ids start at 0, in file order
    for key, raw in zip(images, AI_CHALLENGER, strict=True):
        assert images[key] == {"path": f"../ai_images/{raw['image_id']}", "source": "ai_challenger"}
        assert (tmp_path / "out" / images[key]["path"]).resolve() == (tmp_path / "ai_images" / raw["image_id"])
    assert [r["image_id"] for r in qa] == [0, 1]
    for record, raw in zip(qa, AI_CHALLENGER, strict=True):
        assert set(record) == {"id", "image_id", "source", "messages"}
        assert record["id"] == f"ai_challenger/{raw['image_id']}"
        assert record["source"] == "ai_challenger"
        user, assistant = record["messages"]
        assert user == {"role": "user", "content": user["content"]} and user["content"] in TEMPLATES
        assert assistant["role"] == "assistant" and assistant["content"] in raw["caption"]
        assert placeholder_count(record) == 1
    assert (stats.records, stats.images, stats.turns) == (2, 2, 2)
    assert stats_json["total"] == {"records": 2, "images": 2, "turns": 2, "skipped": {},
                                   "preference_pairs": 0}


def test_ai_challenger_variant_keys(tmp_path):
    """``image`` instead of ``image_id``; ``conversations`` as strings or as LLaVA-style turns."""
    raw = [
        {"image": "a.jpg", "conversations": ["  一只猫在沙发上  \n", ""]},
        {
            "image": "b.jpg",
            "conversations": [
                {"from": "human", "value": "不是描述"},
                {"from": "gpt", "value": "一只狗在草地上"},
            ],
        },
    ]
    touch(tmp_path / "img", "a.jpg", "b.jpg")
    path = write_json(tmp_path / "ai.json", raw)
    run(make_config(tmp_path, [{"type": "ai_challenger", "annotations": path, "image_dir": str(tmp_path / "img")}]))
    _, qa, _ = load_outputs(tmp_path / "out")
    assert [r["id"] for r in qa] == ["ai_challenger/a.jpg", "ai_challenger/b.jpg"]
    assert [r["messages"][1]["content"] for r in qa] == ["一只猫在沙发上", "一只狗在草地上"]


def test_llava_ids_continue_and_shared_image_gets_one_id(tmp_path, ai_source, coco):
    sources = [
        ai_source,
        llava_source(tmp_path, "complex_reasoning_77k", COMPLEX_77K, coco),
        llava_source(tmp_path, "detail_23k", DETAIL_23K, coco),
        # conversation_58k names images by file name, mix665k by coco/train2017/<file>: point both
        # at the same files, so the bus image is shared across sources.
        llava_source(tmp_path, "conversation_58k", CONVERSATION_58K, coco / "coco" / "train2017"),
        llava_source(tmp_path, "mix665k", MIX_665K, coco),
    ]
    stats = run(make_config(tmp_path, sources))
    images, qa, stats_json = load_outputs(tmp_path / "out")

    by_id = {r["id"]: r for r in qa}
    assert [by_id[f"complex_reasoning_77k/{r['id']}"]["image_id"] for r in COMPLEX_77K] == [2, 3]
    assert [by_id[f"detail_23k/{r['id']}"]["image_id"] for r in DETAIL_23K] == [4, 5]
    bus = by_id["conversation_58k/000000033471"]["image_id"]
    assert bus == 6
    assert by_id["mix665k/000000033471"]["image_id"] == bus  # same file, one id
    assert by_id["mix665k/000000052846"]["image_id"] == 7
    assert list(images) == [str(i) for i in range(8)]
    assert images["6"] == {"path": "../coco/coco/train2017/000000033471.jpg", "source": "conversation_58k"}
    assert images["7"]["source"] == "mix665k"
    for image in images.values():
        assert (tmp_path / "out" / image["path"]).is_file()

    # <image> becomes the placeholder, the surrounding "\n" kept; all turns kept, roles mapped.
    first = by_id["complex_reasoning_77k/000000215677"]["messages"]
    assert first[0] == {
        "role": "user",
        "content": TOKEN + "\nWhat skill set might someone need to perform such a frisbee trick?",
    }
    assert first[1] == {"role": "assistant", "content": COMPLEX_77K[0]["conversations"][1]["value"]}
    assert (
        by_id["detail_23k/000000442786"]["messages"][0]["content"]
        == "What do you see happening in this image?\n" + TOKEN
    )
    conversation = by_id["conversation_58k/000000033471"]["messages"]
    assert [m["role"] for m in conversation] == ["user", "assistant"] * 3
    assert [m["content"] for m in conversation[1:]] == [t["value"] for t in CONVERSATION_58K[0]["conversations"][1:]]
    assert all(placeholder_count(r) == 1 for r in qa)
    assert all("<image>" not in m["content"] for r in qa for m in r["messages"])

    # counts: per source and total (images counted per source include the shared one)
    assert [(s.name, s.records, s.images, s.new_images, s.turns) for s in stats.sources] == [
        ("ai_challenger", 2, 2, 2, 2),
        ("complex_reasoning_77k", 2, 2, 2, 2),
        ("detail_23k", 2, 2, 2, 2),
        ("conversation_58k", 1, 1, 1, 3),
        ("mix665k", 2, 2, 1, 4),
    ]
    assert stats_json["total"] == {"records": 9, "images": 8, "turns": 13, "skipped": {},
                                   "preference_pairs": 0}
    assert len({r["id"] for r in qa}) == len(qa)


def test_llava_passthrough_keys_and_text_only_records(tmp_path, coco):
    record = copy.deepcopy(MIX_665K[1])
    record.update(answers=["couch"] * 10, question_type="where")
    text_only = {  # synthetic, shaped like mix665k's text-only (ShareGPT) records
        "id": "i6IyJda_0",
        "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi!"}],
    }
    source = llava_source(tmp_path, "mix665k", [text_only, record], coco)
    stats = run(make_config(tmp_path, [source]))
    _, qa, _ = load_outputs(tmp_path / "out")
    assert len(qa) == 1
    assert qa[0]["answers"] == ["couch"] * 10 and qa[0]["question_type"] == "where"
    assert stats.sources[0].skipped == {"no_image": 1}
    assert stats.sources[0].examples["no_image"] == ["record #0 (id i6IyJda_0): text-only record (no 'image')"]


def test_swift_jsonl_reference_lines(tmp_path):
    touch(tmp_path / "xxx", "x.jpg", "x.png")
    touch(tmp_path / "swift_images", "rel.jpg")
    lines = [line.replace("/xxx/", str(tmp_path / "xxx") + "/") for line in SWIFT_LINES]
    extra = {  # synthetic: a relative path (resolved against image_dir), the singular "image" key
        "id": "q1",
        "messages": [{"role": "user", "content": "这是什么？<image>"}, {"role": "assistant", "content": "一只猫"}],
        "image": "rel.jpg",
    }
    lines += ["", json.dumps(extra, ensure_ascii=False)]
    path = tmp_path / "swift.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = {"type": "swift_jsonl", "annotations": str(path), "image_dir": str(tmp_path / "swift_images")}
    stats = run(make_config(tmp_path, [source]))
    images, qa, _ = load_outputs(tmp_path / "out")

    assert stats.sources[0].read == 18  # the blank line is not a record
    assert stats.sources[0].skipped == {"no_image": 4, "not_single_image": 4, "audio_or_video": 8}
    assert [r["id"] for r in qa] == ["swift_jsonl/line17", "swift_jsonl/q1"]
    grounding = qa[0]["messages"]
    assert [m["role"] for m in grounding] == ["system", "user", "assistant"]
    assert grounding[1]["content"] == TOKEN + "Describe the image."
    assert grounding[2]["content"].startswith("<|object_ref_start|>a dog")
    assert qa[1]["messages"][0]["content"] == "这是什么？" + TOKEN
    assert images == {
        "0": {"path": "../xxx/x.jpg", "source": "swift_jsonl"},
        "1": {"path": "../swift_images/rel.jpg", "source": "swift_jsonl"},
    }


def test_outputs_are_exactly_indented_utf8_json(tmp_path, ai_source, coco):
    """The fast writer must print exactly what json.dumps(ensure_ascii=False, indent=1) prints."""
    record = copy.deepcopy(DETAIL_23K[0])
    record.update(answers=["kite", "风筝", 'a "quoted"\nanswer'], question_type="what is the")
    run(make_config(tmp_path, [ai_source, llava_source(tmp_path, "detail", [record], coco)]))
    for name in OUTPUT_FILES:
        text = (tmp_path / "out" / name).read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), ensure_ascii=False, indent=1) + "\n", name
    qa_text = (tmp_path / "out" / "qa.json").read_text(encoding="utf-8")
    assert "\\u" not in qa_text and "风筝" in qa_text


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Seeded, balanced choice of caption and template
# --------------------------------------------------------------------------------------------


def choices(tmp_path: Path, source: dict, seed: int) -> list[tuple[str, str]]:
    run(make_config(tmp_path, [source], seed=seed))
    _, qa, _ = load_outputs(tmp_path / "out")
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in qa]


def test_choice_is_seeded(tmp_path):
    source = synthetic_ai(tmp_path, 60)
    first = choices(tmp_path, source, seed=1)
    again = (tmp_path / "out" / "qa.json").read_bytes()
    assert choices(tmp_path, source, seed=1) == first
    assert (tmp_path / "out" / "qa.json").read_bytes() == again
    assert choices(tmp_path, source, seed=2) != first


def test_missing_image_does_not_shift_other_choices(tmp_path):
    source = synthetic_ai(tmp_path, 40)
    full = choices(tmp_path, source, seed=3)
    (tmp_path / "img" / "00005.jpg").unlink()
    partial = choices(tmp_path, source, seed=3)
    assert partial == full[:5] + full[6:]


def test_template_choice_is_balanced(tmp_path):
    n = 2000
    picked = choices(tmp_path, synthetic_ai(tmp_path, n), seed=0)
    first_template = sum(user == TEMPLATES[0] for user, _ in picked)
    assert {user for user, _ in picked} == set(TEMPLATES)
    # Binomial(n, 1/2): 4.5 standard deviations either side (a fair coin fails this ~1e-5 of the time).
    assert abs(first_template - n / 2) <= 4.5 * math.sqrt(n / 4), first_template
    # the caption is a uniform pick among the 5, independent of the template
    caption_index = Counter(caption[-1] for _, caption in picked)
    assert set(caption_index) == set("01234")
    assert all(abs(c - n / 5) <= 4.5 * math.sqrt(n * 0.2 * 0.8) for c in caption_index.values()), caption_index
    pairs = Counter((user == TEMPLATES[0], caption[-1]) for user, caption in picked)
    assert len(pairs) == 10


# --------------------------------------------------------------------------------------------

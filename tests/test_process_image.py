"""process_image.py: merging AI Challenger, LLaVA and ms-swift sources into images.json + qa.json.

The raw records below are copied verbatim from the published samples in
shared/reference_samples (see SOURCES.json there for where each was published); only the
ms-swift placeholder paths (/xxx/x.jpg) are pointed at files under tmp_path. Records marked
"synthetic" are made up to exercise one bad-input case each.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dataset import writer  # noqa: E402
from dataset.merge import format_report, run  # noqa: E402
from dataset.sources import MergeError  # noqa: E402
from dataset.writer import OUTPUT_FILES  # noqa: E402
from config import Config, DataSettings, SourceSettings  # noqa: E402

TOKEN = "<|extra_0|>"
TEMPLATES = DataSettings().question_templates

AI_CHALLENGER = [
    {
        "url": "http://m4.biz.itc.cn/pic/new/n/71/65/Img8296571_n.jpg",
        "image_id": "8f00f3d0f1008e085ab660e70dffced16a8259f6.jpg",
        "caption": [
            "两个衣着休闲的人在平整的道路上交谈",
            "一个穿着红色上衣的男人和一个穿着灰色裤子的男人站在室外的道路上交谈",
            "室外的公园里有两个穿着长裤的男人在交流",
            "街道上有一个穿着深色外套的男人和一个穿着红色外套的男人在交谈",
            "道路上有一个身穿红色上衣的男人在和一个抬着左手的人讲话",
        ],
    },
    {
        "url": "http://pic-bucket.nosdn.127.net/photo/0426/2017-01-23/CBFSJR2975I30426NOS.jpg",
        "image_id": "b96ff46ba5b1cbe5bb4cc32b566431132ca71a64.jpg",
        "caption": [
            "房间里有三个坐在桌子旁的人在吃饭",
            "两个戴着帽子的人和一个短发男人坐在房间里就餐",
            "房间里有一个男人和两个戴帽子的老人在吃饭",
            "室内三个衣着各异的人坐在桌子旁交谈",
            "屋子里有三个衣着各异的人坐在椅子上",
        ],
    },
]

COMPLEX_77K = [
    {
        "id": "000000215677",
        "image": "000000215677.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat skill set might someone need to perform such a frisbee trick?"},
            {
                "from": "gpt",
                "value": "To perform the frisbee trick shown in the image, where the man is passing a frisbee between or underneath his legs, a person would need a combination of skills. These skills include good hand-eye coordination, agility, balance, flexibility, and dexterity. Additionally, the ability to throw and catch the frisbee accurately while maintaining control of bodily movements would also be essential. To perfect the trick, practicing these skills and building up muscle memory through repetition would be beneficial.",  # noqa: E501
            },
        ],
    },
    {
        "id": "000000296754",
        "image": "000000296754.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat precautions is the woman taking while walking in this weather?"},
            {
                "from": "gpt",
                "value": "The woman is taking precautions while walking in the rainy weather by using an open umbrella to shield herself from the rain. The umbrella helps to keep her dry and protected from getting soaked by the rain, ensuring her comfort and safety while walking down the wet street. Holding the umbrella also indirectly indicates that the woman might be more attentive to her surroundings and cautious of potential hazards caused by the wet conditions, such as slippery surfaces, puddles, or splashing from passing vehicles.",  # noqa: E501
            },
        ],
    },
]

DETAIL_23K = [
    {
        "id": "000000442786",
        "image": "000000442786.jpg",
        "conversations": [
            {"from": "human", "value": "What do you see happening in this image?\n<image>"},
            {
                "from": "gpt",
                "value": "The scene depicts a lively plaza area with several people walking and enjoying their time. A man is standing in the plaza with his legs crossed, holding a kite in his hand. The kite has multiple sections attached to it, spread out in various directions as if ready for flight.\n\nNumerous people are scattered throughout the plaza, walking and interacting with others. Some of these individuals are carrying handbags, and others have backpacks. The image captures the casual, social atmosphere of a bustling plaza on a nice day.",  # noqa: E501
            },
        ],
    },
    {
        "id": "000000539056",
        "image": "000000539056.jpg",
        "conversations": [
            {"from": "human", "value": "What do you think is going on in this snapshot?\n<image>"},
            {
                "from": "gpt",
                "value": "The image displays a tidy home office desk setting with a laptop placed in the center. On the desk, there is a cordless keyboard in front of the laptop and a wireless mouse situated slightly to the right of it. A cell phone can be seen on the left side of the desk, close to the laptop.\n\nNear the top left corner, there is a coke glass adding a personal touch to the workspace. A collection of books is scattered around the scene in various positions and stacks, possibly serving as reference material or leisure reading for the desk's occupant.",  # noqa: E501
            },
        ],
    },
]

CONVERSATION_58K = [
    {
        "id": "000000033471",
        "image": "000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
            {"from": "human", "value": "Is the bus driving down the street or pulled off to the side?"},
            {
                "from": "gpt",
                "value": "The bus is driving down the street, which is crowded with people and other vehicles.",
            },
        ],
    }
]

MIX_665K = [
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
            {"from": "human", "value": "Is the bus driving down the street or pulled off to the side?"},
            {
                "from": "gpt",
                "value": "The bus is driving down the street, which is crowded with people and other vehicles.",
            },
        ],
    },
    {
        "id": "000000052846",
        "image": "coco/train2017/000000052846.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhere is the cat positioned in the image?"},
            {"from": "gpt", "value": "The cat is positioned on top of the back of the couch in the living room."},
        ],
    },
]

# shared/reference_samples/ms_swift_multimodal_format_samples.jsonl, all 17 lines.
SWIFT_LINES = [
    '{"messages": [{"role": "user", "content": "Where is the capital of Zhejiang?"}, {"role": "assistant", "content": "The capital of Zhejiang is Hangzhou."}]}',  # noqa: E501
    '{"messages": [{"role": "user", "content": "<image><image>What is the difference between the two images?"}, {"role": "assistant", "content": "The first one is a kitten, and the second one is a puppy."}], "images": ["/xxx/x.jpg", "/xxx/x.png"]}',  # noqa: E501
    '{"messages": [{"role": "user", "content": "<audio>What did the audio say?"}, {"role": "assistant", "content": "The weather is really nice today."}], "audios": ["/xxx/x.mp3"]}',  # noqa: E501
    '{"messages": [{"role": "system", "content": "You are a helpful and harmless assistant."}, {"role": "user", "content": "<image>What is in the image, <video>What is in the video?"}, {"role": "assistant", "content": "The image shows an elephant, and the video shows a puppy running on the grass."}], "images": ["/xxx/x.jpg"], "videos": ["/xxx/x.mp4"]}',  # noqa: E501
    '{"messages": [{"role": "user", "content": "浙江的省会在哪？"}, {"role": "assistant", "content": "浙江的省会在杭州。"}]}',  # noqa: E501
    '{"messages": [{"role": "user", "content": "<image><image>两张图片有什么区别"}, {"role": "assistant", "content": "前一张是小猫，后一张是小狗"}], "images": ["/xxx/x.jpg", "/xxx/x.png"]}',  # noqa: E501
    '{"messages": [{"role": "user", "content": "<audio>语音说了什么"}, {"role": "assistant", "content": "今天天气真好呀"}], "audios": ["/xxx/x.mp3"]}',  # noqa: E501
    '{"messages": [{"role": "system", "content": "你是个有用无害的助手"}, {"role": "user", "content": "<image>图片中是什么，<video>视频中是什么"}, {"role": "assistant", "content": "图片中是一个大象，视频中是一只小狗在草地上奔跑"}], "images": ["/xxx/x.jpg"], "videos": ["/xxx/x.mp4"]}',  # noqa: E501
    '{"messages": [{"role": "assistant", "content": "Pre-trained text goes here"}]}',
    '{"messages": [{"role": "assistant", "content": "<image>is a puppy, <image>is a kitten"}], "images": ["/xxx/x.jpg", "/xxx/x.png"]}',  # noqa: E501
    '{"messages": [{"role": "assistant", "content": "<audio>describes how nice the weather is today"}], "audios": ["/xxx/x.wav"]}',  # noqa: E501
    '{"messages": [{"role": "assistant", "content": "<image>is an elephant, <video>is a lion running"}], "images": ["/xxx/x.jpg"], "videos": ["/xxx/x.mp4"]}',  # noqa: E501
    '{"messages": [{"role": "assistant", "content": "预训练的文本在这里"}]}',
    '{"messages": [{"role": "assistant", "content": "<image>是一只小狗，<image>是一只小猫"}], "images": ["/xxx/x.jpg", "/xxx/x.png"]}',  # noqa: E501
    '{"messages": [{"role": "assistant", "content": "<audio>描述了今天天气真不错"}], "audios": ["/xxx/x.wav"]}',
    '{"messages": [{"role": "assistant", "content": "<image>是一个大象，<video>是一只狮子在跑步"}], "images": ["/xxx/x.jpg"], "videos": ["/xxx/x.mp4"]}',  # noqa: E501
    '{"messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "<image>Describe the image."}, {"role": "assistant", "content": "<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(221,423),(569,886)<|box_end|> and <|object_ref_start|>a woman<|object_ref_end|><|box_start|>(451,381),(733,793)<|box_end|> are playing on the beach"}], "images": ["/xxx/x.jpg"]}',  # noqa: E501
]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def write_json(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return str(path)


def touch(directory: Path, *names: str) -> None:
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff\xd9")  # a (tiny) JPEG start/end marker


def make_config(tmp_path: Path, sources: list[dict], **data) -> Config:
    return Config(
        data=DataSettings(sources=[SourceSettings(**s) for s in sources], output_dir=str(tmp_path / "out"), **data)
    )


def load_outputs(out: Path) -> tuple[dict, list, dict]:
    return tuple(json.loads((out / name).read_text(encoding="utf-8")) for name in OUTPUT_FILES)


def placeholder_count(record: dict) -> int:
    return sum(m["content"].count(TOKEN) for m in record["messages"])


def source_stats(stats: dict, name: str) -> dict:
    return next(s for s in stats["sources"] if s["name"] == name)


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """A COCO-like image folder holding every image the LLaVA samples use (mix665k layout too)."""
    root = tmp_path / "coco"
    touch(root, *(r["image"] for r in COMPLEX_77K + DETAIL_23K + CONVERSATION_58K + MIX_665K))
    return root


@pytest.fixture
def ai_source(tmp_path: Path) -> dict:
    touch(tmp_path / "ai_images", *(r["image_id"] for r in AI_CHALLENGER))
    path = write_json(tmp_path / "raw" / "caption_train_annotations.json", AI_CHALLENGER)
    return {"type": "ai_challenger", "annotations": path, "image_dir": str(tmp_path / "ai_images")}


def llava_source(tmp_path: Path, name: str, records: list, image_dir: Path) -> dict:
    path = write_json(tmp_path / "raw" / f"{name}.json", records)
    return {"type": "llava", "name": name, "annotations": path, "image_dir": str(image_dir)}


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
    assert stats_json["total"] == {"records": 2, "images": 2, "turns": 2, "skipped": {}}


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
    assert stats_json["total"] == {"records": 9, "images": 8, "turns": 13, "skipped": {}}
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
# Seeded, balanced choice of caption and template
# --------------------------------------------------------------------------------------------


def synthetic_ai(tmp_path: Path, count: int) -> dict:
    """``count`` AI Challenger records whose 5 captions name their own position (synthetic)."""
    records = [{"image_id": f"{i:05d}.jpg", "caption": [f"图{i}的描述{k}" for k in range(5)]} for i in range(count)]
    touch(tmp_path / "img", *(r["image_id"] for r in records))
    return {
        "type": "ai_challenger",
        "annotations": write_json(tmp_path / "ai.json", records),
        "image_dir": str(tmp_path / "img"),
    }


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
# Bad input: counted skip, or a clear error with on_error=stop
# --------------------------------------------------------------------------------------------


def _llava(**changes) -> dict:
    record = copy.deepcopy(COMPLEX_77K[1])
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": who, "value": text} for who, text in pairs]


GOOD = COMPLEX_77K[0]
# (case, source type, raw records after the good one, skip reason)
BAD_CASES = [
    ("not_an_object", "llava", ["just a string"], "missing_field"),
    ("no_conversations", "llava", [_llava(conversations=None)], "missing_field"),
    ("turn_without_value", "llava", [_llava(conversations=[{"from": "human"}])], "missing_field"),
    ("text_only", "llava", [_llava(image=None)], "no_image"),
    ("missing_image_file", "llava", [_llava(image="000000999999.jpg")], "missing_image"),
    (
        "no_placeholder",
        "llava",
        [_llava(conversations=_turns(("human", "What is it?"), ("gpt", "A cat.")))],
        "bad_placeholder",
    ),
    (
        "two_placeholders",
        "llava",
        [_llava(conversations=_turns(("human", "<image>\nWhat is it?\n<image>"), ("gpt", "A cat.")))],
        "bad_placeholder",
    ),
    (
        "placeholder_in_answer",
        "llava",
        [_llava(conversations=_turns(("human", "What is it?"), ("gpt", "<image> A cat.")))],
        "bad_placeholder",
    ),
    (
        "assistant_first",
        "llava",
        [_llava(conversations=_turns(("gpt", "Hi"), ("human", "<image>\nWhat?")))],
        "bad_turn_order",
    ),
    (
        "two_user_turns",
        "llava",
        [_llava(conversations=_turns(("human", "<image>\nWhat?"), ("human", "Well?"), ("gpt", "A cat.")))],
        "bad_turn_order",
    ),
    (
        "trailing_question",
        "llava",
        [_llava(conversations=_turns(("human", "<image>\nWhat?"), ("gpt", "A cat."), ("human", "Sure?")))],
        "bad_turn_order",
    ),
    ("no_assistant_turn", "llava", [_llava(conversations=_turns(("human", "<image>\nWhat?")))], "bad_turn_order"),
    (
        "unknown_speaker",
        "llava",
        [_llava(conversations=_turns(("human", "<image>\nWhat?"), ("bot", "A cat.")))],
        "bad_turn_order",
    ),
    ("duplicate_id", "llava", [_llava(id=GOOD["id"])], "duplicate_id"),
    ("duplicate_content", "llava", [dict(copy.deepcopy(GOOD), id="copy_of_215677")], "duplicate_content"),
    ("empty_caption_list", "ai_challenger", [dict(AI_CHALLENGER[1], caption=[])], "empty_caption"),
    ("blank_captions", "ai_challenger", [dict(AI_CHALLENGER[1], caption=["  ", ""])], "empty_caption"),
    ("no_image_id", "ai_challenger", [{"url": "http://x/y.jpg", "caption": ["一只猫"]}], "missing_field"),
    ("duplicate_image", "ai_challenger", [dict(AI_CHALLENGER[0], caption=["另一句描述"])], "duplicate_id"),
    ("invalid_json_line", "swift_jsonl", ['{"messages": [}'], "invalid_json"),
    ("two_images", "swift_jsonl", [json.loads(SWIFT_LINES[1])], "not_single_image"),
    ("video", "swift_jsonl", [json.loads(SWIFT_LINES[3])], "audio_or_video"),
]


def bad_input_source(tmp_path: Path, kind: str, bad: list) -> dict:
    """A source of ``kind`` holding one good record followed by ``bad``."""
    images = tmp_path / "images"
    touch(
        images,
        GOOD["image"],
        COMPLEX_77K[1]["image"],
        AI_CHALLENGER[0]["image_id"],
        AI_CHALLENGER[1]["image_id"],
        "x.jpg",
    )
    if kind == "llava":
        return llava_source(tmp_path, "llava", [GOOD, *bad], images)
    if kind == "ai_challenger":
        path = write_json(tmp_path / "raw.json", [AI_CHALLENGER[0], *bad])
        return {"type": kind, "annotations": path, "image_dir": str(images)}
    good = {
        "messages": [{"role": "user", "content": "<image>猫在哪里？"}, {"role": "assistant", "content": "沙发上"}],
        "images": ["x.jpg"],
    }
    lines = [json.dumps(good, ensure_ascii=False)] + [
        b if isinstance(b, str) else json.dumps(b, ensure_ascii=False) for b in bad
    ]
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"type": kind, "annotations": str(path), "image_dir": str(images)}


@pytest.mark.parametrize("case, kind, bad, reason", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_record_is_counted_and_skipped(tmp_path, case, kind, bad, reason):
    source = bad_input_source(tmp_path, kind, bad)
    stats = run(make_config(tmp_path, [source]))
    s = stats.sources[0]
    assert (s.read, s.records, s.skipped) == (2, 1, {reason: 1})
    where = "line 2" if kind == "swift_jsonl" else "record #1"
    assert len(s.examples[reason]) == 1 and s.examples[reason][0].startswith(where)
    _, qa, stats_json = load_outputs(tmp_path / "out")
    assert len(qa) == 1
    assert stats_json["total"]["skipped"] == {reason: 1}
    report = format_report(stats)
    assert f"{reason} x1" in report and where in report


@pytest.mark.parametrize("case, kind, bad, reason", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_record_stops_the_run_when_asked(tmp_path, case, kind, bad, reason):
    source = bad_input_source(tmp_path, kind, bad)
    with pytest.raises(MergeError) as err:
        run(make_config(tmp_path, [source], on_error="stop"))
    message = str(err.value)
    where = "line 2" if kind == "swift_jsonl" else "record #1"
    assert message.startswith(source["annotations"] + ": " + where) and f"[{reason}]" in message
    assert not (tmp_path / "out").exists()


def test_skip_report_keeps_the_first_three_offenders(tmp_path, coco):
    records = [_llava(id=f"missing{i}", image=f"missing{i}.jpg") for i in range(5)] + [GOOD]
    stats = run(make_config(tmp_path, [llava_source(tmp_path, "llava", records, coco)]))
    s = stats.sources[0]
    assert s.skipped == {"missing_image": 5} and s.records == 1
    assert [e.split(":")[0] for e in s.examples["missing_image"]] == [
        "record #0 (id missing0)",
        "record #1 (id missing1)",
        "record #2 (id missing2)",
    ]


def test_check_images_off_accepts_missing_files(tmp_path, coco):
    source = llava_source(tmp_path, "llava", [_llava(image="not_there.jpg")], coco)
    stats = run(make_config(tmp_path, [source], check_images=False))
    assert stats.records == 1 and stats.sources[0].skipped == {}


def test_existence_check_lists_each_directory_once(tmp_path, monkeypatch):
    source = synthetic_ai(tmp_path, 300)
    calls = []
    real_scandir = os.scandir

    def counting_scandir(path):
        calls.append(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    stats = run(make_config(tmp_path, [source]))
    assert stats.records == 300
    assert calls == [os.path.realpath(tmp_path / "img")]


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'[{"image_id": "a.jpg", "caption": ["x"]}', "not valid JSON"),
        (
            '[\n{"image_id": "a.jpg", "caption": ["两个衣着休闲的人在平整的道路上交谈"]}]'.encode("gbk"),
            "not UTF-8 text (line 2",
        ),
        (b'{"image_id": "a.jpg"}', "expected a JSON list"),
        (None, "cannot read annotations file"),
    ],
    ids=["invalid_json", "not_utf8", "not_a_list", "missing_file"],
)
def test_unreadable_file_is_an_error_even_when_skipping(tmp_path, content, problem):
    path = tmp_path / "raw.json"
    if content is not None:
        path.write_bytes(content)
    touch(tmp_path / "img", "a.jpg")
    config = make_config(
        tmp_path, [{"type": "ai_challenger", "annotations": str(path), "image_dir": str(tmp_path / "img")}]
    )
    with pytest.raises(MergeError) as err:
        run(config)
    assert str(err.value).startswith(f"{path}: {problem}")
    assert not (tmp_path / "out").exists()


def test_nothing_accepted_writes_nothing(tmp_path, coco):
    source = llava_source(tmp_path, "llava", [_llava(image="gone.jpg")], coco)
    with pytest.raises(MergeError, match="no record was accepted"):
        run(make_config(tmp_path, [source]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"sources": []}, "data.sources is empty"),
        ({"question_templates": ["这张图片描述了什么？", TEMPLATES[1]]}, "data.question_templates[0] must contain"),
        ({"duplicate_names": True}, "source name 'llava' is already used by data.sources[0]"),
    ],
)
def test_configuration_mistakes(tmp_path, coco, data, problem):
    sources = [llava_source(tmp_path, "x", [GOOD], coco)]
    for s in sources:
        s.pop("name")
    if data.pop("duplicate_names", False):
        sources = sources * 2
    sources = data.pop("sources", sources)
    with pytest.raises(MergeError) as err:
        run(make_config(tmp_path, sources, **data))
    assert problem in str(err.value)


def test_failed_write_leaves_previous_output_untouched(tmp_path, ai_source, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in OUTPUT_FILES:
        (out / name).write_text("previous run\n", encoding="utf-8")

    def broken(record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "format_record", broken)
    with pytest.raises(MergeError, match="No space left on device"):
        run(make_config(tmp_path, [ai_source]))
    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES)  # no temporary file left behind
    assert all((out / name).read_text(encoding="utf-8") == "previous run\n" for name in OUTPUT_FILES)


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def write_cli_config(tmp_path: Path, sources: list[dict]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"data": {"output_dir": str(tmp_path / "out"), "sources": sources}}), encoding="utf-8")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "process_image.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_merges_and_prints_counts(tmp_path, ai_source, coco):
    sources = [ai_source, llava_source(tmp_path, "complex_reasoning_77k", COMPLEX_77K + [_llava(image=None)], coco)]
    result = run_cli("--config", str(write_cli_config(tmp_path, sources)), "--set", "data.seed=7")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].split() == ["ai_challenger", "ai_challenger", "2", "2", "2", "2", "0"]
    assert lines[3].split() == ["complex_reasoning_77k", "llava", "3", "2", "2", "2", "1"]
    assert lines[4].split() == ["total", "5", "4", "4", "4", "1"]
    assert "skipped in complex_reasoning_77k: no_image x1" in result.stdout
    assert json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))["seed"] == 7


def test_cli_stop_on_error_exits_2_and_keeps_previous_output(tmp_path, coco):
    out = tmp_path / "out"
    out.mkdir()
    (out / "qa.json").write_text("[]\n", encoding="utf-8")
    source = llava_source(tmp_path, "detail_23k", DETAIL_23K, coco)
    (coco / DETAIL_23K[1]["image"]).unlink()
    result = run_cli("--config", str(write_cli_config(tmp_path, [source])), "--set", "data.on_error=stop")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert source["annotations"] in result.stderr
    assert "record #1 (id 000000539056)" in result.stderr and "[missing_image]" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(out)) == ["qa.json"] and (out / "qa.json").read_text(encoding="utf-8") == "[]\n"


def test_cli_invalid_json_exits_2(tmp_path):
    path = tmp_path / "complex_reasoning_77k.json"
    path.write_text(json.dumps(COMPLEX_77K)[:-40], encoding="utf-8")  # truncated download
    result = run_cli("--config", str(write_cli_config(tmp_path, [{"type": "llava", "annotations": str(path)}])))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: not valid JSON")
    assert not (tmp_path / "out").exists()

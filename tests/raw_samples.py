"""Raw records of every format process_image.py reads, and helpers to build sources from them.

The raw records are copied verbatim from the published samples in shared/reference_samples (see
SOURCES.json there for where each was published); only the ms-swift placeholder paths
(/xxx/x.jpg) are pointed at files under tmp_path. Used by test_sources.py, test_merge.py and
test_process_image.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from config import Config, DataSettings, SourceSettings
from dataset.writer import OUTPUT_FILES

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


def llava_source(tmp_path: Path, name: str, records: list, image_dir: Path) -> dict:
    path = write_json(tmp_path / "raw" / f"{name}.json", records)
    return {"type": "llava", "name": name, "annotations": path, "image_dir": str(image_dir)}


def synthetic_ai(tmp_path: Path, count: int) -> dict:
    """``count`` AI Challenger records whose 5 captions name their own position (synthetic)."""
    records = [{"image_id": f"{i:05d}.jpg", "caption": [f"图{i}的描述{k}" for k in range(5)]} for i in range(count)]
    touch(tmp_path / "img", *(r["image_id"] for r in records))
    return {
        "type": "ai_challenger",
        "annotations": write_json(tmp_path / "ai.json", records),
        "image_dir": str(tmp_path / "img"),
    }


def llava_record(**changes) -> dict:
    """A copy of a LLaVA reference record with ``changes`` (a value of None removes the key)."""
    record = copy.deepcopy(COMPLEX_77K[1])
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}

"""dataset/merge.py and dataset/writer.py: bad input is a counted skip or a clear error, never a
half-written output; configuration mistakes stop the run before any reading."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from dataset import writer
from dataset.merge import format_report, run
from dataset.sources import MergeError
from dataset.writer import OUTPUT_FILES
from tests.raw_samples import (
    AI_CHALLENGER,
    COMPLEX_77K,
    SWIFT_LINES,
    TEMPLATES,
    llava_record,
    llava_source,
    load_outputs,
    make_config,
    synthetic_ai,
    touch,
    write_json,
)



def _turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": who, "value": text} for who, text in pairs]


GOOD = COMPLEX_77K[0]
# (case, source type, raw records after the good one, skip reason)
BAD_CASES = [
    ("not_an_object", "llava", ["just a string"], "missing_field"),
    ("no_conversations", "llava", [llava_record(conversations=None)], "missing_field"),
    ("turn_without_value", "llava", [llava_record(conversations=[{"from": "human"}])], "missing_field"),
    ("text_only", "llava", [llava_record(image=None)], "no_image"),
    ("missing_image_file", "llava", [llava_record(image="000000999999.jpg")], "missing_image"),
    (
        "no_placeholder",
        "llava",
        [llava_record(conversations=_turns(("human", "What is it?"), ("gpt", "A cat.")))],
        "bad_placeholder",
    ),
    (
        "two_placeholders",
        "llava",
        [llava_record(conversations=_turns(("human", "<image>\nWhat is it?\n<image>"), ("gpt", "A cat.")))],
        "bad_placeholder",
    ),
    (
        "placeholder_in_answer",
        "llava",
        [llava_record(conversations=_turns(("human", "What is it?"), ("gpt", "<image> A cat.")))],
        "bad_placeholder",
    ),
    (
        "assistant_first",
        "llava",
        [llava_record(conversations=_turns(("gpt", "Hi"), ("human", "<image>\nWhat?")))],
        "bad_turn_order",
    ),
    (
        "two_user_turns",
        "llava",
        [llava_record(conversations=_turns(("human", "<image>\nWhat?"), ("human", "Well?"), ("gpt", "A cat.")))],
        "bad_turn_order",
    ),
    (
        "trailing_question",
        "llava",
        [llava_record(conversations=_turns(("human", "<image>\nWhat?"), ("gpt", "A cat."), ("human", "Sure?")))],
        "bad_turn_order",
    ),
    ("no_assistant_turn", "llava", [llava_record(conversations=_turns(("human", "<image>\nWhat?")))], "bad_turn_order"),
    (
        "unknown_speaker",
        "llava",
        [llava_record(conversations=_turns(("human", "<image>\nWhat?"), ("bot", "A cat.")))],
        "bad_turn_order",
    ),
    ("duplicate_id", "llava", [llava_record(id=GOOD["id"])], "duplicate_id"),
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
    records = [llava_record(id=f"missing{i}", image=f"missing{i}.jpg") for i in range(5)] + [GOOD]
    stats = run(make_config(tmp_path, [llava_source(tmp_path, "llava", records, coco)]))
    s = stats.sources[0]
    assert s.skipped == {"missing_image": 5} and s.records == 1
    assert [e.split(":")[0] for e in s.examples["missing_image"]] == [
        "record #0 (id missing0)",
        "record #1 (id missing1)",
        "record #2 (id missing2)",
    ]


def test_a_looping_symlink_skips_only_the_records_that_name_it(tmp_path, coco):
    """os.scandir's is_file() raises ELOOP for a symlink that points at itself: only that entry is
    left out (its records skipped as unreadable_image), every other image of the folder is found."""
    (coco / "loop.jpg").symlink_to(coco / "loop.jpg")
    try:
        records = [llava_record(id="loop", image="loop.jpg"), GOOD]
        stats = run(make_config(tmp_path, [llava_source(tmp_path, "llava", records, coco)]))
    finally:
        (coco / "loop.jpg").unlink()
    s = stats.sources[0]
    assert s.records == 1 and s.skipped == {"unreadable_image": 1}
    assert "loop.jpg cannot be read" in s.examples["unreadable_image"][0]


def test_check_images_off_accepts_missing_files(tmp_path, coco):
    source = llava_source(tmp_path, "llava", [llava_record(image="not_there.jpg")], coco)
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
    source = llava_source(tmp_path, "llava", [llava_record(image="gone.jpg")], coco)
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

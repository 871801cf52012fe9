"""The review loop without a display: flag rules, the queue, every key, the log, replay, the merge.

Expected values are written out by hand (which items, in which order, which log lines); the log is
read back with ``json`` here, not with the code under test, so a wrong line cannot pass unseen.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from commands import process_image
from config import GenerationSettings
from dataset.review import ReviewError, log_path, open_review, read_answers, read_log
from inference.flags import ReviewRules
from tests.conftest import write_image
from ui.review import KEYS, ReviewSession, action_for_key

# -- flag rules ----------------------------------------------------------------------------------


def test_flag_rules_name_every_rule_that_fired():
    rules = ReviewRules(threshold=-0.5, words=("maybe", "not sure", "可能"), max_chars=30)
    assert rules.flags("red", -0.1) == []
    assert rules.flags("red", -0.7) == ["low_confidence"]
    assert rules.flags("red", None) == ["no_confidence"]
    assert rules.flags("red", float("nan")) == ["no_confidence"]
    assert rules.flags("   ", -0.1) == ["empty"]
    assert rules.flags("a" * 31, -0.1) == ["too_long"] and rules.flags("a" * 30, -0.1) == []
    assert rules.flags("Maybe red, I am NOT SURE", -0.9) == ["low_confidence", "hedge:maybe", "hedge:not sure"]
    assert rules.flags("maybelline", -0.1) == []  # a whole word, not a prefix
    assert rules.flags("这可能是猫", -0.1) == ["hedge:可能"]  # no word boundaries in Chinese
    assert ReviewRules(-0.5, (), 0).flags("b" * 5000, -0.1) == []  # 0: no length limit


def test_flag_rules_come_from_the_config_and_the_flag_wins():
    generation = GenerationSettings(review_threshold=-0.3, review_words=["perhaps", " "], review_max_chars=7)
    rules = ReviewRules.from_config(generation)
    assert (rules.threshold, rules.words, rules.max_chars) == (-0.3, ("perhaps",), 7)
    assert ReviewRules.from_config(generation, threshold=-2.0).threshold == -2.0
    assert "perhaps" in GenerationSettings().review_words and "也许" in GenerationSettings().review_words


# -- answers files -------------------------------------------------------------------------------

# (answer, confidence, flagged): the queue is ordered by confidence, None first.
ITEMS = [("red", -0.05, False), ("blue", -0.9, True), ("green", None, True), ("cat", -0.3, False),
         ("maybe a dog", -0.2, True), ("two", -0.9, True)]
# Queue order by hand: None, then -0.9 (line 2 before line 6), -0.3, -0.2, -0.05.
ORDER = ["green", "blue", "two", "cat", "maybe a dog", "red"]


def write_answers(directory: Path, items=ITEMS, extra_lines=()) -> Path:
    lines = []
    for n, (answer, confidence, flagged) in enumerate(items):
        image = write_image(directory / f"img{n}.png", (32, 24), (40 * n, 100, 200))
        entry = {"image": str(image), "question": "What is it?", "answer": answer, "confidence": confidence,
                 "review": flagged}
        if flagged:
            entry["flags"] = ["low_confidence"]
        lines.append(json.dumps(entry, ensure_ascii=False))
    path = directory / "answers.jsonl"
    path.write_text("\n".join(lines + list(extra_lines)) + "\n", encoding="utf-8")
    return path


def session_for(path: Path, reviewer="ana", flagged_only=False) -> ReviewSession:
    answers, state, log, notes = open_review(path)
    return ReviewSession(answers, state, log, reviewer, flagged_only)


def log_lines(answers: Path) -> list[dict]:
    return [json.loads(line) for line in log_path(answers).read_text(encoding="utf-8").splitlines()]


def test_the_queue_starts_with_the_least_confident_and_can_show_flagged_only(tmp_path):
    path = write_answers(tmp_path)
    s = session_for(path)
    assert [item.answer for item in s.queue] == ORDER
    assert s.current.answer == "green" and s.progress() == "0 / 6 reviewed · 4 flagged left"
    s.toggle_flagged()
    assert [s.queue[i].answer for i in s.visible] == ["green", "blue", "two", "maybe a dog"]
    assert s.current.answer == "green"
    s.move(10)
    assert s.current.answer == "maybe a dog"  # Right stops at the end
    s.toggle_flagged()
    assert s.current.answer == "maybe a dog" and len(s.visible) == 6
    s.move(-10)
    assert s.current.answer == "green"
    assert session_for(path, flagged_only=True).visible == [0, 1, 2, 4]


def test_every_key_maps_to_its_command():
    expected = {"Return": "accept", "e": "edit", "Delete": "reject", "s": "skip", "u": "undo",
                "Left": "previous", "Right": "next", "f": "toggle_flagged"}
    for key, command in expected.items():
        assert action_for_key(key, key if len(key) == 1 else "", editing=False) == (command, "")
    assert action_for_key("x", "x", editing=False) == ("type", "x")  # typing starts an edit
    assert action_for_key("ssharp", "ß", editing=False) == ("type", "ß")
    assert action_for_key("space", " ", editing=False) is None
    assert action_for_key("Shift_L", "", editing=False) is None
    assert action_for_key("q", "\x11", editing=False, modifiers=True) is None  # Ctrl+Q belongs to the window
    # While editing, letters go into the box; Enter saves, Esc cancels.
    assert action_for_key("e", "e", editing=True) is None and action_for_key("s", "s", editing=True) is None
    assert action_for_key("Return", "\r", editing=True) == ("save_edit", "")
    assert action_for_key("Escape", "\x1b", editing=True) == ("cancel_edit", "")
    assert set(KEYS.values()) == set(expected.values())


def test_decisions_are_logged_before_they_show_and_undo_takes_back_the_last(tmp_path):
    path = write_answers(tmp_path)
    s = session_for(path, reviewer="ana")
    s.command("accept")                 # green
    s.command("save_edit", "  a blue car ")  # blue -> corrected
    s.command("reject")                 # two
    s.command("skip")                   # cat
    s.command("save_edit", "maybe a dog")  # unchanged text: an accept
    assert s.current.answer == "red" and s.progress() == "5 / 6 reviewed · 0 flagged left"
    lines = log_lines(path)
    assert lines[0]["review_log"] == 1 and lines[0]["answers"] == "answers.jsonl"
    assert [(e["decision"], e["model_answer"], e["final_answer"]) for e in lines[1:]] == [
        ("accept", "green", "green"), ("edit", "blue", "a blue car"), ("reject", "two", None),
        ("skip", "cat", None), ("accept", "maybe a dog", "maybe a dog")]
    assert all(e["reviewer"] == "ana" and e["time"] and e["item"][0] is None for e in lines[1:])
    assert lines[2]["item"] == [None, str(tmp_path / "img1.png"), "What is it?"]

    s.command("undo")
    assert s.current.answer == "maybe a dog" and s.decision() is None and s.message == "Undid: accept"
    s.command("undo")
    assert s.current.answer == "cat" and s.decision() is None
    assert [e["decision"] for e in log_lines(path)[-2:]] == ["undo", "undo"]
    s.command("save_edit", "   ")
    assert s.decision() is None and "empty" in s.message  # refused, nothing logged
    assert len(log_lines(path)) == 8
    s.log.close()

    # Reopened: the log replays to the same decisions, and it resumes at the first undecided item.
    again = session_for(path)
    assert again.counts() == {"accept": 1, "edit": 1, "reject": 1, "skip": 0, "undecided": 3}
    assert again.current.answer == "cat"
    assert {i.answer: (again.decision(i).decision if again.decision(i) else None) for i in again.queue} == \
        {"green": "accept", "blue": "edit", "two": "reject", "cat": None, "maybe a dog": None, "red": None}
    # ... and undo still reaches back into the earlier session.
    again.undo()
    assert again.current.answer == "two" and again.decision() is None
    again.log.close()


def test_a_later_decision_supersedes_and_the_log_keeps_both(tmp_path):
    path = write_answers(tmp_path)
    s = session_for(path)
    s.reject()
    s.move(-1)
    assert s.current.answer == "green" and s.decision().decision == "reject"
    s.edit("grass")
    s.log.close()
    assert [e["decision"] for e in log_lines(path)[1:]] == ["reject", "edit"]
    again = session_for(path)
    assert again.decision(again.queue[0]).final_answer == "grass" and again.counts()["edit"] == 1
    again.log.close()


def test_a_crash_mid_write_loses_only_the_line_being_written(tmp_path):
    path = write_answers(tmp_path)
    s = session_for(path)
    for _ in range(3):
        s.accept()
    s.log.close()
    text = log_path(path).read_text(encoding="utf-8")
    cut = text[: len(text) - 30]  # kill -9 in the middle of the third decision's line
    log_path(path).write_text(cut, encoding="utf-8")
    answers, state, log, notes = open_review(path)
    assert any("incomplete last line" in note for note in notes)
    s = ReviewSession(answers, state, log, "ana")
    assert s.counts()["accept"] == 2 and s.current.answer == "two"
    s.accept()  # appended after the repaired end, not glued to the fragment
    s.log.close()
    assert [e["decision"] for e in log_lines(path)[1:]] == ["accept"] * 3


def test_bad_input_is_refused_or_counted(tmp_path):
    # A missing image and a malformed line: the rest is reviewable, the problems are noted.
    # An error line whose image is a list (no item key can be made of it): counted, not a traceback.
    path = write_answers(tmp_path, extra_lines=['{"image": "x.png", "question": "q", "error": "unreadable"}',
                                                '{"image": "x.png", "question": ',
                                                '{"image": ["a.png", "b.png"], "question": "q", "error": "x"}'])
    (tmp_path / "img0.png").unlink()
    answers, state, log, notes = open_review(path)
    assert len(answers.items) == 6
    assert [p[1] for p in answers.problems] == ["no_answer", "invalid_json", "missing_field"]
    assert notes and "3 line(s) cannot be reviewed" in notes[0]
    s = ReviewSession(answers, state, log, "ana")
    s.move(5)
    assert s.current.answer == "red" and s.to_dict()["current"]["image_exists"] is False
    s.accept()
    log.close()

    # A review log from another answers file.
    other = tmp_path / "other"
    other.mkdir()
    other_path = write_answers(other, [("x", -0.1, False)])
    os.replace(log_path(path), log_path(other_path))
    with pytest.raises(ReviewError, match="not in .*other/answers.jsonl.*written for answers.jsonl"):
        open_review(other_path)
    # A file that is not a review log at all.
    log_path(path).write_text('{"hello": 1}\n')
    with pytest.raises(ReviewError, match="not a review log"):
        open_review(path)
    with pytest.raises(ReviewError, match="no such answers file"):
        read_answers(tmp_path / "none.jsonl")
    (tmp_path / "errors.jsonl").write_text('{"image": "a.png", "question": "q", "error": "x"}\n')
    with pytest.raises(ReviewError, match="holds no answers to review"):
        read_answers(tmp_path / "errors.jsonl")


@contextmanager
def read_only(directory: Path):
    """Make ``directory`` read-only for this process: a read-only bind mount when running as root
    (permission bits do not stop root), the permission bits otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
            yield
        finally:
            subprocess.run(["umount", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)


def test_a_directory_that_cannot_hold_the_log_is_refused_before_any_decision(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = write_answers(folder)
    with read_only(folder):
        with pytest.raises(ReviewError, match="cannot write the review log here .*decisions would be lost"):
            open_review(path)
    assert not log_path(path).exists()


# -- back into training --------------------------------------------------------------------------


def test_reviewed_answers_merge_into_training_records_and_preference_pairs(tmp_path, capsys):
    path = write_answers(tmp_path, extra_lines=["not json", '{"image": ["a.png"], "question": "q", "error": "x"}'])
    s = session_for(path, reviewer="bo")
    s.accept()                     # green
    s.edit("一辆蓝色的车")          # blue, corrected (non-ASCII)
    s.reject()                     # two
    s.skip()                       # cat
    s.accept()                     # maybe a dog
    s.log.close()
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  sources:\n    - type: reviewed\n      name: round1\n      annotations: {path}\n"
                      f"  output_dir: {tmp_path / 'merged'}\n", encoding="utf-8")
    assert process_image.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "round1: 2 accepted, 1 edited; 1 preference pair(s) -> preferences.jsonl" in out
    merged = tmp_path / "merged"
    records = json.loads((merged / "qa.json").read_text(encoding="utf-8"))
    images = json.loads((merged / "images.json").read_text(encoding="utf-8"))
    got = {r["messages"][1]["content"]: (r["id"], images[str(r["image_id"])]["path"]) for r in records}
    assert got == {"green": ("round1/line3", "../img2.png"), "一辆蓝色的车": ("round1/line2", "../img1.png"),
                   "maybe a dog": ("round1/line5", "../img4.png")}
    assert all(r["messages"][0] == {"role": "user", "content": "<|extra_0|>\nWhat is it?"} for r in records)
    stats = json.loads((merged / "stats.json").read_text())
    source = stats["sources"][0]
    assert source["tallies"] == {"accepted": 2, "edited": 1} and source["preference_pairs"] == 1
    assert source["skipped"] == {"review_rejected": 1, "review_skipped": 1, "not_reviewed": 1, "invalid_json": 1,
                                 "missing_field": 1}
    pairs = [json.loads(line) for line in (merged / "preferences.jsonl").read_text(encoding="utf-8").splitlines()]
    assert pairs == [{"id": "round1/line2",
                      "messages": [{"role": "user", "content": "<image>\nWhat is it?"},
                                   {"role": "assistant", "content": "一辆蓝色的车"}],
                      "rejected_response": "blue", "images": ["../img1.png"]}]

    # Undoing the edit and merging again: no pairs, and the stale preferences.jsonl is gone.
    answers, state, log, _ = open_review(path)
    s = ReviewSession(answers, state, log, "bo")
    s.undo(), s.undo(), s.undo(), s.undo()
    log.close()
    assert process_image.main(["--config", str(config)]) == 0
    assert not (merged / "preferences.jsonl").exists()
    assert [r["messages"][1]["content"] for r in json.loads((merged / "qa.json").read_text())] == ["green"]


def test_a_bad_log_line_and_answers_changed_after_review_are_said_and_counted(tmp_path, capsys):
    path = write_answers(tmp_path)
    s = session_for(path, reviewer="bo")
    s.accept()  # green
    s.accept()  # blue
    s.accept()  # two
    s.log.close()
    lines = log_path(path).read_text(encoding="utf-8").splitlines()
    lines.insert(2, '{"item": "not a key", "decision": "accept"}')  # a malformed line in the middle
    log_path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    # The answers file is rewritten after the review began: "blue" is now "navy".
    path.write_text(path.read_text(encoding="utf-8").replace('"answer": "blue"', '"answer": "navy"'), encoding="utf-8")

    _, _, _, notes = open_review(path, write=False)
    assert any("1 answer(s) changed since they were decided" in n and "accept of 'blue'" in n and "'navy'" in n
               for n in notes), notes
    assert any("line 3 ignored" in n for n in notes), notes

    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  sources:\n    - type: reviewed\n      annotations: {path}\n"
                      f"  output_dir: {tmp_path / 'merged'}\n", encoding="utf-8")
    assert process_image.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    source = json.loads((tmp_path / "merged" / "stats.json").read_text())["sources"][0]
    assert source["tallies"] == {"accepted": 2}  # green and two; blue was decided on another answer
    assert source["skipped"]["answer_changed"] == 1 and source["skipped"]["bad_review_log_line"] == 1
    assert "answer_changed" in out and "bad_review_log_line" in out and "review log line 3" in out


def test_the_merge_refuses_a_log_written_for_another_answers_file(tmp_path):
    path = write_answers(tmp_path)
    log_path(path).write_text('{"review_log": 1, "answers": "elsewhere.jsonl"}\n'
                              '{"item": [null, "zzz.png", "q"], "decision": "accept", "model_answer": "a", '
                              '"final_answer": "a", "reviewer": "x", "time": "t"}\n')
    answers = read_answers(path)
    with pytest.raises(ReviewError, match="written for elsewhere.jsonl"):
        read_log(log_path(path), answers)
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  sources:\n    - type: reviewed\n      annotations: {path}\n"
                      f"  output_dir: {tmp_path / 'merged'}\n")
    with pytest.raises(SystemExit) as exit_:
        process_image.main(["--config", str(config)])
    assert exit_.value.code == 2 and not (tmp_path / "merged" / "qa.json").exists()

"""Tests for tools/run_demo.py's data helpers, which bench/demo_variants.py reuses for its runs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from config import load_config
from tools.run_demo import demo_sources, make_data

ROOT = Path(__file__).resolve().parents[1]


def test_demo_sources_name_the_files_the_demo_config_merges():
    """A variant's data dir is merged exactly as configs/demo.yaml merges data/demo."""
    demo = load_config(ROOT / "configs" / "demo.yaml")
    rebuilt = load_config(ROOT / "configs" / "demo.yaml", [f"data.sources={demo_sources('data/demo', 'train')}"])
    assert [asdict(s) for s in rebuilt.data.sources] == [asdict(s) for s in demo.data.sources]
    heldout = load_config(None, [f"data.sources={demo_sources('data/demo', 'eval')}"]).data.sources
    assert [(s.type, s.annotations, s.image_dir) for s in heldout] == [
        ("llava", "data/demo/raw/llava_eval.json", "data/demo/images")
    ]


def test_make_data_in_another_dir_merges_every_record(tiny, tmp_path):
    from commands import process_image
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"model.vision_model={tiny['demo-siglip']}"])
    data_dir = tmp_path / "variant"
    make_data(cfg, str(data_dir), num_train=120, num_captions=10, train_weights=("position=2",))
    raw = json.loads((data_dir / "raw" / "llava_train.json").read_text())
    captions = json.loads((data_dir / "raw" / "ai_challenger_captions.json").read_text())
    for split, expected in (("train", len(raw) + len(captions)), ("eval", 500)):
        merged = tmp_path / f"merged-{split}"
        process_image.main(["--config", str(ROOT / "configs" / "demo.yaml"), "--set", f"data.output_dir={merged}",
                            "--set", f"data.sources={demo_sources(str(data_dir), split)}"])
        records = json.loads((merged / "qa.json").read_text())
        assert len(records) == expected
        images = json.loads((merged / "images.json").read_text())
        assert all((merged / entry["path"]).is_file() for entry in images.values())


def test_dpo_demo_data_pairs_short_correct_answers_against_verbose_or_wrong_ones(tiny, tmp_path):
    from commands import process_image
    from tools.run_dpo_demo import ANSWER_SETS, VERBOSE, short_share, write_raw

    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"model.vision_model={tiny['demo-siglip']}"])
    data_dir = tmp_path / "demo"
    make_data(cfg, str(data_dir), num_train=120, num_captions=10)
    raw = json.loads((data_dir / "raw" / "llava_train.json").read_text())
    assert len(raw) >= 70
    write_raw(data_dir, tmp_path / "raw", num_mixed=30, num_pairs=40, num_eval_pairs=40, seed=0)

    mixed = json.loads((tmp_path / "raw" / "mixed_train.json").read_text())
    answers = [t["value"] for r in mixed for t in r["conversations"] if t["from"] == "gpt"]
    originals = [t["value"] for r in raw[:30] for t in r["conversations"] if t["from"] == "gpt"]
    verbose = [a != o for a, o in zip(answers, originals)]
    assert len(answers) == len(originals) and 0.3 < sum(verbose) / len(verbose) < 0.7
    assert all(any(a == v.format(o) for v in VERBOSE) for a, o, long in zip(answers, originals, verbose) if long)

    merged = tmp_path / "prefs"
    process_image.main(["--config", str(ROOT / "configs" / "demo.yaml"), "--set", f"data.output_dir={merged}",
                        "--set", f"data.sources=[{{type: preference, annotations: {tmp_path / 'raw' / 'prefs_train.jsonl'}}}]"])
    records = json.loads((merged / "qa.json").read_text())
    assert len(records) == 40  # every pair merged, none skipped
    kinds = set()
    for record, source in zip(records, raw[30:70]):
        chosen, rejected = record["messages"][-1]["content"], record["rejected"]
        assert chosen == source["conversations"][1]["value"]  # the short correct answer
        if any(rejected == v.format(chosen) for v in VERBOSE):
            kinds.add("verbose")
        else:
            assert any(chosen in s and rejected in s for s in ANSWER_SETS) and rejected != chosen
            kinds.add("wrong")
    assert kinds == {"verbose", "wrong"}

    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"prediction": p}) + "\n" for p in ["red", "top left", VERBOSE[0].format("red"), "no"]))
    assert short_share(predictions) == 0.75


def test_the_demo_trains_a_fixed_number_of_steps_never_a_time_budget():
    """The same model on a busy or slow machine as on an idle one: configs/demo.yaml sets the steps
    and no wall-clock budget (train.max_time_seconds stops a run early wherever it is)."""
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.train.max_steps == 1600 and demo.train.max_time_seconds is None
    assert "max_time_seconds" not in (ROOT / "tools" / "run_demo.py").read_text()


def test_a_slow_demo_run_says_why_and_that_the_model_is_the_same():
    from tools.run_demo import EXPECTED_STEP_SECONDS, pace_note

    expected = 1600 * EXPECTED_STEP_SECONDS
    assert pace_note(1600, 1.5 * expected, cores=2, load=2.0) is None  # within 2x: nothing to say
    busy = pace_note(1600, 3 * expected, cores=2, load=4.1)
    assert "3.0x" in busy and "other work was competing for the cores (load average 4.1 on 2 cores)" in busy
    assert "The model is the same" in busy
    assert "this machine has 1 core" in pace_note(1600, 3 * expected, cores=1, load=1.0)
    assert "slower than the machines" in pace_note(1600, 3 * expected, cores=2, load=2.0)

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
    import process_image

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

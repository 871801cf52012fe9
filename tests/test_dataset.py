"""dataset/vqa_dataset.py, collate.py, sampler.py: truncation outside the image tokens, counted skips,
length-grouped batches."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from dataset import Collator, LengthGroupedSampler, VQADataset
from qwen import PromptRenderer
from qwen.prompt import IGNORE_INDEX
from tests.conftest import random_rgb
from visual import ImagePreprocessor


def _write_merged(tmp_path, records, images):
    (tmp_path / "qa.json").write_text(json.dumps(records, ensure_ascii=False))
    (tmp_path / "images.json").write_text(json.dumps({str(k): {"path": v, "source": "t"} for k, v in images.items()}))
    return tmp_path / "qa.json"


def test_dataset_truncates_only_outside_image_tokens_and_counts_skips(tmp_path, tokenizer, caplog):
    Image.fromarray(random_rgb()).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    long_answer = " ".join(["word"] * 200)
    records = [
        {"id": "ok", "image_id": 0, "messages": [{"role": "user", "content": "<|extra_0|>\nColour?"}, {"role": "assistant", "content": "red"}]},
        {"id": "long", "image_id": 0, "messages": [{"role": "user", "content": "<|extra_0|>\nTell a story."}, {"role": "assistant", "content": long_answer}]},
        # the image sits after a long question: cutting the tail would cut the image
        {"id": "late-image", "image_id": 0, "messages": [{"role": "user", "content": "word " * 150 + "<|extra_0|>"}, {"role": "assistant", "content": "x"}]},
        {"id": "no-image", "image_id": 0, "messages": [{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "red"}]},
        {"id": "bad-image", "image_id": 1, "messages": [{"role": "user", "content": "<|extra_0|>\nColour?"}, {"role": "assistant", "content": "blue"}]},
    ]
    qa = _write_merged(tmp_path, records, {0: "a.png", 1: "broken.png"})
    renderer = PromptRenderer(tokenizer, 15)
    ds = VQADataset(qa, renderer, ImagePreprocessor(size=32), max_length=64, show_progress=False)
    assert len(ds) == 3  # ok, long (truncated), bad-image (kept; its image fails at load time)
    assert ds.skipped == {"too_long": 1, "not_one_image": 1}
    lengths = [len(ds[i]["input_ids"]) for i in range(2)]
    assert lengths[1] == 64 and ds.lengths[1] == 64
    item = ds[1]
    assert int((item["input_ids"] == 151665).sum()) == 15
    assert (item["labels"] != IGNORE_INDEX).any()
    # The unreadable image is replaced by the next sample, counted and logged, never raised.
    with caplog.at_level("WARNING"):
        replaced = ds[2]
    assert sum(ds.bad_images.values()) == 1 and "unreadable image" in caplog.text
    assert torch.equal(replaced["input_ids"], ds[0]["input_ids"])
    batch = Collator(tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 64) and batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["attention_mask"][0].sum() == lengths[0]
    assert (batch["labels"][0, lengths[0]:] == IGNORE_INDEX).all()


def test_length_grouped_sampler_is_a_permutation_of_similar_length_batches():
    lengths = [int(x) for x in np.random.RandomState(0).randint(10, 500, size=1000)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1, mega=10)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    assert lengths[order[0]] == max(lengths)  # the longest batch first
    spread = np.mean([np.ptp([lengths[i] for i in order[b:b + 8]]) for b in range(0, 1000, 8)])
    random_spread = np.mean([np.ptp(lengths[b:b + 8]) for b in range(0, 1000, 8)])
    assert spread < random_spread / 4
    sampler.set_epoch(1)
    assert list(sampler) != order and list(LengthGroupedSampler(lengths, 8, seed=1, mega=10)) == order

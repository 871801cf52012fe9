"""dataset/token_cache.py: the tokenized training data kept once on disk and memory-mapped.

The reference is the in-memory path (the data set rendered from qa.json on every start, as before
the cache existed): the cached samples must equal it item by item, and a train.py run from the
cache must give the same losses.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset import VQADataset, token_cache
from qwen import PromptRenderer
from tests.test_dpo import preference_data  # noqa: F401 (a fixture)
from tests.test_train import losses, merged, overrides, run_train  # noqa: F401 (merged: a fixture)
from visual import ImagePreprocessor


def dataset(qa: Path, tokenizer, cache_dir: Path | None, **kwargs) -> VQADataset:
    return VQADataset(qa, PromptRenderer(tokenizer, 9), ImagePreprocessor(size=48), max_length=kwargs.pop("max_length", 96),
                      show_progress=False, cache=cache_dir is not None, cache_dir=str(cache_dir) if cache_dir else None,
                      **kwargs)


def copy_data(merged_file: Path, target: Path) -> Path:  # noqa: F811
    """A private copy of a merged data set (its image table made absolute: the images stay put)."""
    from dataset.records import read_image_table

    shutil.copytree(merged_file.parent, target)
    table = json.loads((target / "images.json").read_text())
    for key, path in read_image_table(merged_file.parent / "images.json").items():
        table[key]["path"] = str(path)
    (target / "images.json").write_text(json.dumps(table))
    return target / "qa.json"


def test_cached_samples_equal_the_rendered_ones_and_are_memory_mapped(merged, tokenizer, tmp_path, monkeypatch):  # noqa: F811
    qa = copy_data(merged["train"], tmp_path / "data")
    # a record that is skipped (no image placeholder) and one cut to max_length: counted the same way
    records = json.loads(qa.read_text())
    records.append({**records[0], "id": "no-image", "messages": [{"role": "user", "content": "Colour?"},
                                                                {"role": "assistant", "content": "red"}]})
    records.append({**records[1], "id": "long", "messages": [records[1]["messages"][0],
                                                            {"role": "assistant", "content": "word " * 150}]})
    qa.write_text(json.dumps(records))
    reference = dataset(qa, tokenizer, None)
    cached = dataset(qa, tokenizer, tmp_path / "cache")
    assert cached.cached == "built" and isinstance(cached.table.ids, np.memmap)
    assert len(cached) == len(reference) == len(records) - 1 and cached.skipped == reference.skipped == {"not_one_image": 1}
    assert np.array_equal(cached.lengths, reference.lengths) and max(cached.lengths) == 96
    assert np.array_equal(cached.record_index, reference.record_index)
    for i in range(len(reference)):
        a, b = reference._expand(i), cached._expand(i)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), i
        assert cached.image_path(i) == reference.image_path(i)
    item = cached[3]
    assert torch.equal(item["pixel_values"], reference[3]["pixel_values"])

    # Opened again: nothing parsed, nothing tokenized.
    def never(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr("dataset.vqa_dataset.load_merged", never)
    monkeypatch.setattr(VQADataset, "_render_all", never)
    again = dataset(qa, tokenizer, tmp_path / "cache")
    assert again.cached == "reused" and len(again) == len(reference)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == [again.table.cache_dir.name]


def test_a_changed_input_or_setting_builds_anew_and_keeps_the_others(merged, tokenizer, tmp_path, capsys):  # noqa: F811
    qa = copy_data(merged["train"], tmp_path / "data")
    first = dataset(qa, tokenizer, tmp_path / "cache")
    shorter = dataset(qa, tokenizer, tmp_path / "cache", max_length=80)
    subset = dataset(qa, tokenizer, tmp_path / "cache", limit=50)  # e.g. the held-out subset of the same file
    records = json.loads(qa.read_text())
    records[0]["messages"][-1]["content"] = "a different answer"
    qa.write_text(json.dumps(records))
    changed = dataset(qa, tokenizer, tmp_path / "cache")
    tables = [first.table, shorter.table, subset.table, changed.table]
    assert all(d.cached == "built" for d in (shorter, subset, changed)) and len({t.cache_dir for t in tables}) == 4
    # none removed: another run (or rank) may be mapping any of them; they are listed instead
    assert "3 other token cache(s)" in capsys.readouterr().err
    assert all((t.cache_dir / "meta.json").is_file() for t in tables) and len(first.table.ids) > 0
    assert not torch.equal(changed._expand(0)[0], first._expand(0)[0])  # the changed answer, re-tokenized
    assert dataset(qa, tokenizer, tmp_path / "cache", max_length=80).cached == "built"  # data changed: its own key


def test_default_place_is_beside_the_data_file(merged, tokenizer, tmp_path):  # noqa: F811
    qa = copy_data(merged["train"], tmp_path / "data")
    ds = VQADataset(qa, PromptRenderer(tokenizer, 9), ImagePreprocessor(size=48), max_length=96, show_progress=False,
                    cache=True)
    assert ds.table.cache_dir.parent == qa.parent / ".token_cache"


def test_a_crash_while_building_leaves_no_cache_that_looks_complete(merged, tokenizer, tmp_path, monkeypatch):  # noqa: F811
    qa = copy_data(merged["train"], tmp_path / "data")
    saved = token_cache.TokenTable.save

    def crash(self, directory, meta):
        directory.mkdir(parents=True)
        np.save(directory / "ids.npy", self.ids)  # part of it written, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(token_cache.TokenTable, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        dataset(qa, tokenizer, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    # a directory under the final name without meta.json (a crash in an older layout) is never used
    monkeypatch.setattr(token_cache.TokenTable, "save", saved)
    built = dataset(qa, tokenizer, tmp_path / "cache")
    shutil.rmtree(built.table.cache_dir)
    built.table.cache_dir.mkdir()
    (built.table.cache_dir / "ids.npy").write_bytes(b"cut off")
    rebuilt = dataset(qa, tokenizer, tmp_path / "cache")
    assert rebuilt.cached == "built" and len(rebuilt) == len(built)


def _open(root: str, key: str, out: str) -> None:
    """A process opening the cache: builds slowly when it gets there first."""
    def build():
        time.sleep(1.0)
        b = token_cache.TableBuilder()
        b.add_chunk([(0, np.array([1, 2, 3]), np.array([False, True, True]), Path("a.png"))])
        return b.table({})

    table, built = token_cache.open_or_build(Path(root), key, Path(root) / "qa.json", build)
    Path(out).write_text(json.dumps({"built": built, "ids": table.ids.tolist()}))


def test_one_process_builds_while_the_others_wait(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_open, args=(str(tmp_path / "cache"), "k" * 64, str(tmp_path / f"out{i}"))) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = [json.loads((tmp_path / f"out{i}").read_text()) for i in range(3)]
    assert sorted(r["built"] for r in results) == [False, False, True]
    assert all(r["ids"] == [1, 2, 3] for r in results)


def test_training_from_the_cache_gives_the_same_losses(tiny, merged, tmp_path):  # noqa: F811
    qa = copy_data(merged["train"], tmp_path / "data")
    common = ("train.max_steps=4", "train.save_steps=100", f"data.train_file={qa}", "data.group_by_length=true")
    runs = {}
    for name, extra in (("uncached", "data.token_cache=false"), ("build", "data.token_cache=true"),
                        ("reuse", "data.token_cache=true")):
        result = run_train(overrides(tiny, merged, tmp_path / name, *common, extra))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = (losses(tmp_path / name), result.stdout)
    assert "tokenized data" not in runs["uncached"][1]
    assert "tokenized data built" in runs["build"][1] and "tokenized data reused" in runs["reuse"][1]
    assert runs["uncached"][0] == runs["build"][0] == runs["reuse"][0] and len(runs["build"][0]) == 4


def test_preference_pairs_are_cached_side_by_side(merged, preference_data, tokenizer, tmp_path, monkeypatch):  # noqa: F811
    from dataset.preference import PreferenceDataset

    qa = copy_data(preference_data["train"], tmp_path / "pairs")
    records = json.loads(qa.read_text())
    records.append({k: v for k, v in records[0].items() if k != "rejected"} | {"id": "not-a-pair"})
    qa.write_text(json.dumps(records))

    def pairs(cache):
        return PreferenceDataset(qa, PromptRenderer(tokenizer, 9), ImagePreprocessor(size=48), 96, show_progress=False,
                                 cache=cache, cache_dir=str(tmp_path / "cache"))

    reference, cached = pairs(False), pairs(True)
    assert cached.chosen.cached == cached.rejected.cached == "built"
    assert cached.skipped == reference.skipped and cached.skipped["not_a_preference_record"] == 1
    assert cached.pairs == reference.pairs and cached.lengths == reference.lengths
    for i in (0, len(cached) // 2, len(cached) - 1):
        a, b = reference[i], cached[i]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), i
    # the two sides are two caches of one file: neither removes the other, and both are reused
    monkeypatch.setattr("dataset.preference.load_merged", lambda *a: (_ for _ in ()).throw(AssertionError("parsed")))
    monkeypatch.setattr("dataset.vqa_dataset.load_merged", lambda *a: (_ for _ in ()).throw(AssertionError("parsed")))
    again = pairs(True)
    assert again.chosen.cached == again.rejected.cached == "reused" and again.pairs == reference.pairs


def test_a_mapped_table_pickles_as_its_folder(merged, tokenizer, tmp_path):  # noqa: F811
    """A spawned DataLoader worker gets the table by pickling: it must reopen the mapping, not copy it."""
    import pickle

    ds = dataset(copy_data(merged["train"], tmp_path / "data"), tokenizer, tmp_path / "cache")
    blob = pickle.dumps(ds.table)
    assert len(blob) < 10_000 < ds.table.ids.nbytes  # the folder, not the tokens
    again = pickle.loads(blob)
    assert isinstance(again.ids, np.memmap) and np.array_equal(again.ids, ds.table.ids) and again.paths == ds.table.paths

"""model/bases.py: a base model is a local path or a hub id, decided before anything loads."""

from __future__ import annotations

import pytest

from model.bases import BaseModelError, check_base, looks_local


def test_local_paths_and_hub_ids_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for name in ("/abs/model", "./model", "../model", "~/model", "checkpoints/model", "a/b/c", "model"):
        assert looks_local(name), name
    for name in ("Qwen/Qwen2.5-0.5B-Instruct", "google/siglip-so400m-patch14-384"):
        assert not looks_local(name), name


def test_missing_bases_are_one_line_without_touching_the_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    check_base(str(tmp_path), "model.vision_model")  # exists: fine
    with pytest.raises(BaseModelError, match=r"model.vision_model: not found: checkpoints/nope \(a local path\)"):
        check_base("checkpoints/nope", "model.vision_model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BaseModelError, match="not in the local cache and HF_HUB_OFFLINE=1 is set"):
        check_base("nobody/nothing", "model.language_model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
    with pytest.raises(BaseModelError, match="the hub cannot be reached"):
        check_base("nobody/nothing", "model.language_model")

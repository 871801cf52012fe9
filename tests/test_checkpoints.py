"""model/checkpoints.py: the one definition of a complete checkpoint, and loading refusing anything less."""

from __future__ import annotations

import pytest

from tests.conftest import LORA, make_model


def test_incomplete_checkpoint_is_refused(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from model import VQAModel

    model = make_model(tiny, finetune="lora", lora=LORA)
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop(sorted(state)[0])
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        VQAModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model checkpoint"):
        VQAModel.from_pretrained(tmp_path / "nope")


def _checkpoint(path, trainer_state=False, trainer_files=(), weights=b""):
    """A checkpoint directory by hand: config.json, a small real model.safetensors (or ``weights``)."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "siglip_qwen_vqa"}')
    if weights:
        (path / "model.safetensors").write_bytes(weights)
    else:
        save_file({"a": torch.arange(6.0), "b": torch.ones(2, 3)}, str(path / "model.safetensors"))
    for name in trainer_files:
        (path / name).write_bytes(b"state")
    if trainer_state:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_a_whole_safetensors_file_is_told_from_a_cut_off_or_foreign_one(tmp_path):
    import pickle

    from model.checkpoints import whole_safetensors

    whole = _checkpoint(tmp_path / "c") / "model.safetensors"
    assert whole_safetensors(whole)
    data = whole.read_bytes()
    for name, content in {"truncated": data[: len(data) - 5], "header-only": data[:40], "hundred": b"\x00" * 100,
                          "empty": b"", "pickle": pickle.dumps({"a": [1, 2, 3]}), "longer": data + b"\x00"}.items():
        (tmp_path / name).write_bytes(content)
        assert not whole_safetensors(tmp_path / name), name
    assert not whole_safetensors(tmp_path / "missing.safetensors")


def test_completeness_and_the_newest_checkpoint_of_a_run(tmp_path):
    from model.checkpoints import is_complete, newest_checkpoint

    run = tmp_path / "run"
    c2 = _checkpoint(run / "checkpoint-2", trainer_state=True, trainer_files=("optimizer.pt",))
    c10 = _checkpoint(run / "checkpoint-10", trainer_files=("training_args.bin",))  # Trainer stopped before its state
    c8 = _checkpoint(run / "checkpoint-8")  # saved by hand: no Trainer state at all
    cut = _checkpoint(run / "checkpoint-12", trainer_state=True)
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:-3])
    (run / "checkpoint-20").mkdir()
    (run / "checkpoint-x").mkdir()
    assert is_complete(c2) and is_complete(c2, resumable=True)
    assert not is_complete(c10) and is_complete(c8) and not is_complete(c8, resumable=True)
    assert not is_complete(cut)
    assert newest_checkpoint(run) == c8  # 20, 12 and 10 are cut off; 8 is newer than 2
    assert newest_checkpoint(run, resumable=True) == c2
    assert newest_checkpoint(tmp_path / "nothing") is None


def test_every_entry_point_resolves_paths_the_same_way(tmp_path):
    from model.checkpoints import CheckpointError, resolve_checkpoint
    from training.checks import resume_checkpoint
    from config import TrainSettings

    run = tmp_path / "run"
    _checkpoint(run / "checkpoint-3", trainer_state=True)
    newest = _checkpoint(run / "checkpoint-7", trainer_state=True)
    _checkpoint(run / "checkpoint-9", trainer_files=("optimizer.pt",))
    assert resolve_checkpoint(run) == newest and resolve_checkpoint(newest) == newest
    assert resume_checkpoint(TrainSettings(output_dir=str(run), resume="auto")) == newest
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        resolve_checkpoint(run / "checkpoint-9")
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_checkpoint(tmp_path / "empty")
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text('{"model_type": "llava"}')
    assert resolve_checkpoint(export, allow_export=True) == export
    with pytest.raises(CheckpointError):
        resolve_checkpoint(export)


def test_a_cut_off_weights_file_is_refused_before_anything_is_read(tiny, tmp_path):
    from model.checkpoints import CheckpointError

    model = make_model(tiny, finetune="lora", lora=LORA)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a whole safetensors file"):
        model.load_trained_weights(weights)

"""Which model answers: a checkpoint or GGUF export identified by what it is, not where it is.

A fingerprint is the sha256 of the files that decide what a model answers (weights, configs,
tokenizer, chat template), so a checkpoint trained further at the same path is another model, and
the same checkpoint copied elsewhere is the same one. Answers files record it
(``dataset.produced_by``) so that a resumed run never mixes two models' answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The files of a checkpoint or export directory that decide what it answers: weights, configs,
# tokenizer and chat template. Not the Trainer's optimizer/scheduler/RNG state or its logs.
_MODEL_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".tiktoken", ".gguf")
_NOT_MODEL = frozenset({"trainer_state.json", "train_config.json"})
_CHUNK = 1 << 22


def files_fingerprint(files: Iterable[Path]) -> str:
    """``sha256:<hex>`` over each file's name and contents (in name order)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def model_files(directory: Path) -> list[Path]:
    """The files of a checkpoint (or LLaVA export) directory that define the model."""
    return [p for p in directory.iterdir()
            if p.is_file() and p.suffix in _MODEL_SUFFIXES and p.name not in _NOT_MODEL and not p.name.startswith(".")]


def checkpoint_identity(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, run directory (its newest checkpoint) or LLaVA export: the resolved
    directory and the fingerprint of its model files."""
    from model.checkpoints import resolve_checkpoint

    checkpoint = resolve_checkpoint(path, allow_export=True)
    return {"checkpoint": str(checkpoint.resolve()), "fingerprint": files_fingerprint(model_files(checkpoint))}


def gguf_identity(path: str | Path) -> dict[str, Any]:
    """A GGUF export: its model file and the fingerprint of model, mmproj and chat template."""
    from inference.gguf import export_files

    files = export_files(path)
    return {"gguf": str(files[0].resolve()), "fingerprint": files_fingerprint(files)}



"""Which model answers: a checkpoint or GGUF export identified by what it is, not where it is.

A fingerprint is the sha256 of the files that decide what a model answers (weights, configs,
tokenizer, chat template), so a checkpoint trained further at the same path is another model, and
the same checkpoint copied elsewhere is the same one. Answers files record it
(``dataset.produced_by``) so that a resumed run never mixes two models' answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.checkpoints import files_fingerprint, model_files


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



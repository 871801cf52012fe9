"""Finding checkpoints: the one definition of a complete checkpoint, and a run's newest one.

A checkpoint directory holds ``config.json`` and ``model.safetensors`` (``VQAModel.save_pretrained``);
one written by the Trainer (``checkpoint-N``) also holds its optimizer and scheduler state and,
written last, ``trainer_state.json``. A save cut off part-way must never be used, so:

- **complete**: ``config.json`` plus a whole ``model.safetensors`` (its header parses and the file is
  as long as the header says), and, when the directory holds any Trainer state, ``trainer_state.json``
  too (the Trainer writes it after everything else);
- **resumable**: complete and holding ``trainer_state.json`` (what ``train.resume`` needs).

Every entry point (training's resume and ``init_from``, inference, evaluation, export, the GUI)
resolves a path through :func:`resolve_checkpoint`. A checkpoint's fingerprint
(:func:`files_fingerprint` of its :func:`model_files`) names the model it holds wherever it lies.
Only the standard library is used, so the scripts can check a path before they import torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable
from pathlib import Path

from errors import UserError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"  # the Trainer writes it last, after weights and optimizer
# Files the Trainer writes into checkpoint-N before trainer_state.json.
_TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth")
_RUN_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit


class CheckpointError(UserError, FileNotFoundError):
    """A path that is not a usable checkpoint; the message says why and what was looked for."""


def whole_safetensors(path: Path) -> bool:
    """Whether ``path`` is a safetensors file written to the end: an 8-byte header length, a JSON
    header, and exactly as many data bytes as the header's offsets reach. Reads only the header;
    a truncated, empty or non-safetensors (e.g. pickled) file is not whole."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                return False
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                return False
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, IndexError, TypeError, ValueError):
            return False
    return size == 8 + header_len + end


def is_complete(path: str | Path, *, resumable: bool = False) -> bool:
    """Whether ``path`` is a complete checkpoint (``resumable``: one training can continue from)."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not whole_safetensors(path / WEIGHTS_NAME):
        return False
    has_state = (path / TRAINER_STATE_NAME).is_file()
    if resumable:
        return has_state
    return has_state or not any((path / name).exists() for name in _TRAINER_FILES)


def newest_checkpoint(run_dir: str | Path, *, resumable: bool = False) -> Path | None:
    """The ``checkpoint-N`` with the largest N that is complete (resumable), or None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _RUN_CHECKPOINT.match(p.name))]
    for _, path in sorted(found, reverse=True):
        if is_complete(path, resumable=resumable):
            return path
    return None


def is_llava_export(path: str | Path) -> bool:
    """Whether ``path`` holds a LLaVA ``config.json`` (an ``export.py`` output, not a training run)."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "llava"
    except (OSError, ValueError, AttributeError):
        return False


def resolve_checkpoint(path: str | Path, *, allow_export: bool = False) -> Path:
    """The checkpoint ``path`` names: itself when complete, else its newest complete
    ``checkpoint-N`` (a run directory). With ``allow_export`` an ``export.py`` output directory is
    returned as it is. Raises :class:`CheckpointError` saying what was missing."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if allow_export and is_llava_export(path):
        return path
    if is_complete(path):
        return path
    newest = newest_checkpoint(path)
    if newest is not None:
        return newest
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        if not whole_safetensors(path / WEIGHTS_NAME):
            raise CheckpointError(
                f"{path / WEIGHTS_NAME}: incomplete checkpoint: not a whole safetensors file (cut off while "
                "saving, or not safetensors at all); use an earlier checkpoint-N or train again"
            )
        raise CheckpointError(
            f"{path}: incomplete checkpoint: the Trainer stopped saving it before {TRAINER_STATE_NAME}; "
            "use an earlier checkpoint-N or train again"
        )
    raise CheckpointError(
        f"{path}: not a checkpoint (no {CONFIG_NAME} + {WEIGHTS_NAME}) and holds no complete checkpoint-N directory"
    )


def describe_choice(path: str | Path, resolved: Path) -> str | None:
    """One line saying which checkpoint a run directory resolved to (and which newer ones were
    skipped as incomplete), or None when ``path`` named the checkpoint itself."""
    path = Path(path)
    if resolved == path:
        return None
    skipped = sorted(
        (int(m.group(1)), p.name) for p in path.iterdir()
        if (m := _RUN_CHECKPOINT.match(p.name)) and p != resolved and int(m.group(1)) > _step(resolved)
    )
    note = f"using {resolved}, the newest complete checkpoint in {path}"
    if skipped:
        note += f" (skipped, incomplete: {', '.join(name for _, name in skipped)})"
    return note


def _step(checkpoint: Path) -> int:
    m = _RUN_CHECKPOINT.match(checkpoint.name)
    return int(m.group(1)) if m else -1


# The files of a checkpoint or export directory that decide what it answers: weights, configs,
# tokenizer and chat template. Not the Trainer's optimizer/scheduler/RNG state or its logs.
_MODEL_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".tiktoken", ".gguf")
# run.json (a training run's record) and lineage.json (an export's) record history, not the model.
_NOT_MODEL = frozenset({"trainer_state.json", "train_config.json", "run.json", "lineage.json"})
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

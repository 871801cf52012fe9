"""Where a model came from: the records a training run and an export keep, and the chain back to the bases.

``train.py`` keeps ``run.json`` in its output directory, and a copy in every ``checkpoint-N``
(``training.lineage``): one *session* per start of the run; a resumed run appends a session and
never changes an earlier one. A session holds what decides the model: the resolved configuration,
the code version (git commit, and whether the tree had uncommitted changes), the sha256 of the data
files, the base models (a local folder by the fingerprint of its model files, a hub model by its
cached revision), the parent checkpoint (``train.init_from``: a pretrain projector, a DPO run's SFT
model) by its fingerprint *with the parent's own record embedded* (so the chain survives the parent
being moved or deleted), start and end, how it ended, the final metrics and the fingerprints of the
models it saved. An export writes ``lineage.json``: the checkpoint it was made from, by fingerprint,
with that checkpoint's record.

:func:`lineage` walks the chain for ``train.py --lineage``. Fingerprints are
``model.checkpoints.files_fingerprint`` (the same that answers files record in ``produced_by``),
so a model found anywhere can be matched to the run that saved it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from model.checkpoints import _RUN_CHECKPOINT, files_fingerprint, model_files, resolve_checkpoint

RUN_RECORD = "run.json"
EXPORT_RECORD = "lineage.json"
_CHUNK = 1 << 22


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version() -> dict[str, Any]:
    """The git commit of this code and whether its tree had uncommitted changes; "unknown" outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=60)
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "dirty": None}


def file_record(path: str | Path) -> dict[str, Any]:
    """A data file by content: its resolved path, size and sha256."""
    path = Path(path)
    if not path.is_file():
        return {"path": str(path), "missing": True}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def base_record(name: str | None) -> dict[str, Any] | None:
    """A base model as given in the config: a local folder by its fingerprint, a hub name by the
    revision of its cached snapshot (None when it is not cached)."""
    if not name:
        return None
    path = Path(name)
    if path.is_dir():
        return {"name": name, "path": str(path.resolve()), "fingerprint": files_fingerprint(model_files(path))}
    revision = None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        if isinstance(found, str):
            revision = Path(found).parent.name  # .../snapshots/<commit>/config.json
    except Exception:  # noqa: BLE001 - an unusual cache layout only loses the revision
        revision = None
    return {"name": name, "hub_revision": revision}


def find_record(directory: str | Path) -> tuple[Path, dict] | None:
    """The record that describes the model in ``directory``: its own ``run.json`` (a run directory
    or a checkpoint-N's copy) or ``lineage.json`` (an export), else its run directory's ``run.json``
    (a checkpoint-N saved before records were copied into checkpoints). None when there is none;
    an unreadable record is reported as ``{"unreadable": reason}``."""
    directory = Path(directory)
    candidates = [directory / RUN_RECORD, directory / EXPORT_RECORD]
    if _RUN_CHECKPOINT.match(directory.name):
        candidates.append(directory.parent / RUN_RECORD)
    for path in candidates:
        if path.is_file():
            try:
                return path, json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                return path, {"unreadable": str(exc)}
    return None


def checkpoint_record(path: str | Path) -> dict[str, Any]:
    """A checkpoint (or export) another model starts from: where it was, its fingerprint, and its
    own record embedded."""
    resolved = resolve_checkpoint(path, allow_export=True)
    record: dict[str, Any] = {"given": str(path), "path": str(resolved.resolve()),
                              "fingerprint": files_fingerprint(model_files(resolved))}
    found = find_record(resolved)
    if found is not None:
        record["record"] = found[1]
    return record


# -- reading the chain -----------------------------------------------------------------------------


def _short(fingerprint: str | None) -> str:
    return fingerprint.removeprefix("sha256:")[:12] if fingerprint else "?"


# Settings the chain shows on their own lines (data files, bases, parent) or that do not shape the model.
_SHOWN_APART = {"model.vision_model", "model.language_model", "model.tokenizer", "data.train_file", "data.eval_file",
                "data.output_dir", "train.init_from", "train.output_dir", "train.run_name", "train.resume"}


def _settings(config: dict) -> str:
    """The settings of a session that are not the defaults (``config.yaml``'s keys), in one line."""
    from config import config_to_dict, load_config

    defaults = config_to_dict(load_config(None))
    changed = []

    def walk(value, default, key):
        if isinstance(value, dict) and isinstance(default, dict):
            for k in value:
                walk(value[k], default.get(k), f"{key}.{k}" if key else k)
        elif value != default and key not in _SHOWN_APART and not key.startswith(("data.sources", "train.report_to")):
            changed.append(f"{key}={json.dumps(value, ensure_ascii=False)}")

    walk({k: config.get(k) for k in ("model", "data", "train") if k in config}, defaults, "")
    return ", ".join(changed) or "the defaults"


def _session_lines(session: dict, index: int, count: int) -> list[str]:
    cfg = session.get("config", {})
    train = cfg.get("train", {})
    code = session.get("code", {})
    steps = session.get("steps", {})
    head = f"session {index + 1} of {count}: " if count > 1 else ""
    lines = [f"{head}stage {train.get('stage')}, finetune {train.get('finetune')}, steps {steps.get('start', 0)} -> "
             f"{steps.get('end', '?')}, {session.get('started')} -> {session.get('ended') or '...'} "
             f"({session.get('status')})" + (f", resumed from {session['resumed_from']}" if session.get("resumed_from") else "")]
    commit = code.get("commit", "unknown")
    lines.append(f"code: {commit[:12] if commit != 'unknown' else 'unknown (not a git checkout)'}"
                 + (" + uncommitted changes" if code.get("dirty") else ""))
    for label, entry in session.get("data", {}).items():
        lines.append(f"data {label}: {entry.get('path')} " + ("(missing)" if entry.get("missing") else
                                                             f"sha256 {entry['sha256'][:12]} ({entry['bytes']:,} bytes)"))
    for label, entry in session.get("bases", {}).items():
        if entry:
            where = (f"{entry['path']} fingerprint {_short(entry['fingerprint'])}" if entry.get("path") else
                     f"hub {entry['name']} revision {entry.get('hub_revision') or 'unknown (not cached)'}")
            lines.append(f"base {label}: {where}")
    lines.append(f"settings: {_settings(cfg)}")
    if session.get("metrics"):
        lines.append("metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in session["metrics"].items()))
    if session.get("model_fingerprint"):
        lines.append(f"saved model fingerprint {_short(session['model_fingerprint'])}")
    return lines


def _describe(record: dict, fingerprint: str | None, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    if "unreadable" in record:
        out.append(f"{pad}record unreadable: {record['unreadable']}")
        return
    if "source" in record:  # an export's lineage.json
        source = record["source"]
        out.append(f"{pad}exported as {record.get('format')} {json.dumps(record.get('options', {}))} on "
                   f"{record.get('exported')} from {source.get('path')} (fingerprint {_short(source.get('fingerprint'))})")
        out.append(f"{pad}  {_where_now(source)}")
        if source.get("record"):
            _describe(source["record"], source.get("fingerprint"), depth + 1, out)
        else:
            out.append(f"{pad}  no record of how that checkpoint was trained")
        return
    sessions = record.get("sessions") or []
    if fingerprint:
        saved = {fp for s in sessions for fp in [s.get("model_fingerprint"), *s.get("checkpoints", {}).values()] if fp}
        out.append(f"{pad}" + ("the model is one this run saved" if fingerprint in saved else
                               "the model is NOT one this run recorded saving (changed after training, or trained "
                               "further elsewhere)"))
    for i, session in enumerate(sessions):
        out.extend(pad + line for line in _session_lines(session, i, len(sessions)))
    parents = [s["parent"] for s in sessions if s.get("parent")]
    if not parents:
        out.append(f"{pad}(started from the base models)")
        return
    parent = parents[0]
    out.append(f"{pad}parent: {parent.get('path')} (fingerprint {_short(parent.get('fingerprint'))})")
    out.append(f"{pad}  {_where_now(parent)}")
    if parent.get("record"):
        _describe(parent["record"], parent.get("fingerprint"), depth + 1, out)
    else:
        out.append(f"{pad}  no record of how the parent was trained (trained before run.json existed?)")


def _where_now(entry: dict) -> str:
    """Whether the checkpoint a record names is still at its path, unchanged."""
    path = Path(entry.get("path", ""))
    try:
        current = files_fingerprint(model_files(resolve_checkpoint(path, allow_export=True)))
    except (OSError, ValueError):
        return f"no longer a checkpoint at {path}"
    return "still there, unchanged" if current == entry.get("fingerprint") else \
        f"{path} now holds another model (fingerprint {_short(current)})"


def lineage(path: str | Path) -> list[str]:
    """The chain of ``path`` (a checkpoint, run directory or export) back to its base models, as lines."""
    given = Path(path)
    if (given / EXPORT_RECORD).is_file() and any(given.glob("*.gguf")):  # a GGUF export: no config.json to resolve
        resolved = given
    else:
        resolved = resolve_checkpoint(path, allow_export=True)
    fingerprint = files_fingerprint(model_files(resolved))
    out = [f"{resolved} (fingerprint {_short(fingerprint)})"]
    found = find_record(resolved)
    if found is None:
        out.append(f"  no {RUN_RECORD} or {EXPORT_RECORD}: trained or exported before records were kept, or not by this code")
        return out
    _describe(found[1], fingerprint if "sessions" in found[1] else None, 1, out)
    return out

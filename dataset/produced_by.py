"""The ``produced_by`` line at the top of a file of answers, checked before a run appends to it.

``evaluate.py --benchmark`` (``predictions.jsonl``) and ``infer.py --images ... --output`` resume an
interrupted run by skipping what the file already answers. That is only right when the earlier run
asked the same model the same way, so the file starts with one line::

    {"produced_by": {"model": {"checkpoint": ".../checkpoint-300", "fingerprint": "sha256:..."},
                     "generation": {...}, ...}}

(the model as ``inference.identity`` names it) and a run appends only when its own ``produced_by``
is equal; otherwise it stops with one line saying what differs (``--overwrite`` starts the file
again). Readers of such files skip the line (:func:`is_header`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from errors import UserError

HEADER_KEY = "produced_by"


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


# Where a model lies is recorded but not compared: a checkpoint copied elsewhere is the same model
# (its fingerprint says so), one trained further in place is not.
_LOCATIONS = frozenset({"model.checkpoint", "model.gguf"})


def differences(before: Mapping, now: Mapping) -> list[str]:
    """``key: old -> new`` for every setting that differs between two ``produced_by`` records."""
    a, b = _flatten(_plain(before)), _flatten(_plain(now))
    return [f"{key}: {json.dumps(a.get(key, '(none)'))} -> {json.dumps(b.get(key, '(none)'))}"
            for key in sorted((set(a) | set(b)) - _LOCATIONS) if a.get(key, "(none)") != b.get(key, "(none)")]


def read_header(path: Path) -> dict | None:
    """The ``produced_by`` record on a file's first line, or None when it has none."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    try:
        entry = json.loads(first)
    except ValueError:
        return None
    return entry.get(HEADER_KEY) if isinstance(entry, dict) and isinstance(entry.get(HEADER_KEY), dict) else None


def is_header(entry: Any) -> bool:
    """Whether a parsed line is the ``produced_by`` line (readers of answers skip it)."""
    return isinstance(entry, dict) and HEADER_KEY in entry and len(entry) == 1


def start_or_resume(path: Path, produced_by: Mapping, overwrite: bool = False) -> bool:
    """Make ``path`` ready to append this run's answers: a new (or ``overwrite``) file gets the
    ``produced_by`` line; an existing one must carry an equal one. Returns whether earlier answers
    are resumed. Raises :class:`UserError` naming what differs."""
    produced_by = _plain(produced_by)
    if overwrite and path.exists():
        path.unlink()
    if path.exists() and path.stat().st_size > 0:
        header = read_header(path)
        if header is None:
            raise UserError(
                f"{path}: holds answers without a record of the model and settings that produced them (written "
                "by an older version, or not by this program); use another output, or --overwrite to start again"
            )
        changed = differences(header, produced_by)
        if changed:
            shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
            raise UserError(f"{path}: holds answers from another run ({shown}); use another output, or "
                            "--overwrite to start again")
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({HEADER_KEY: produced_by}, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return False


def shard_label(shard: tuple[int, int] | None) -> dict:
    """``{"shard": "I/N"}`` for the ``produced_by`` of a run that answers shard I of N (else nothing)."""
    return {"shard": f"{shard[0]}/{shard[1]}"} if shard else {}


def common_of_shards(labelled: list[tuple[str, Any]]) -> dict:
    """The ``produced_by`` that the outputs of shards 0/N .. N-1/N share, without its ``shard``.

    ``labelled``: (where, its ``produced_by`` or None) per output. Refuses (one line) an output that
    is not a shard's, a shard missing or given twice, and shards answered by different models or
    settings -- merged, they would not be one run."""
    for where, header in labelled:
        if not isinstance(header, dict) or "shard" not in header:
            raise UserError(f"{where}: not the output of a --shard run (no produced_by with a shard)")
    shards = sorted(tuple(int(x) for x in header["shard"].split("/")) for _, header in labelled)
    count = shards[0][1]
    if shards != [(i, count) for i in range(count)]:
        raise UserError(f"--merge-shards needs the outputs of shards 0/{count} .. {count - 1}/{count}, each once; got "
                        + ", ".join(header["shard"] for _, header in labelled))
    def comparable(header: dict) -> dict:
        """Without the shard, and without the server's address: replicas of one served model answer alike."""
        out = {k: v for k, v in header.items() if k != "shard"}
        if isinstance(out.get("model"), dict):
            out["model"] = {k: v for k, v in out["model"].items() if k != "server"}
        return out

    common = {k: v for k, v in labelled[0][1].items() if k != "shard"}
    for where, header in labelled:
        changed = differences(comparable(common), comparable(header))
        if changed:
            raise UserError(f"{where}: answered by another model or settings than {labelled[0][0]} "
                            f"({'; '.join(changed[:3])})")
    return common

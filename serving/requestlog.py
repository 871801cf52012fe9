"""The gateway's request log: one JSON line per request and per feedback, rotated by size.

``evaluate.py --compare-log`` reads it back (the format is in the README). Lines go through a
``logging.handlers.RotatingFileHandler`` of a logger private to this object (never the global
logging tree), so rotation names files as ``requests.jsonl.1``, ``.2``, ... newest first, and each
line is written whole under the handler's lock. The image itself is never logged, only its hash.
"""

from __future__ import annotations

import logging
import logging.handlers
from datetime import datetime, timezone
from pathlib import Path

from dataset.jsonl import jsonl_line

LOG_NAME = "requests.jsonl"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestLog:
    def __init__(self, directory: str | Path, max_bytes: int = 100 << 20, backups: int = 10) -> None:
        self.path = Path(directory) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(self.path, maxBytes=max_bytes, backupCount=backups,
                                                             encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler.terminator = ""  # jsonl_line ends the line itself
        # A Logger made directly is not registered in logging's global manager: no shared state.
        self._logger = logging.Logger(f"serving.requestlog.{id(self)}")
        self._logger.addHandler(self._handler)
        self._logger.propagate = False

    def write(self, entry: dict) -> None:
        self._logger.info(jsonl_line({"time": utc_now(), **entry}))

    def request(self, **fields) -> None:
        self.write({"type": "request", **fields})

    def feedback(self, request_id: str, score: float | None, correct: bool | None) -> None:
        self.write({"type": "feedback", "request_id": request_id, "score": score, "correct": correct})

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()

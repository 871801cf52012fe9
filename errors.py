"""The one error type a user sees: a problem with their input or settings, said in one line.

Library code raises a subclass (``ConfigError``, ``MergeError``, ``CheckpointError``,
``ExportRefused``, ``RemoteError``, ...) with a message that names the file or key and what to do;
``cli.run_cli`` prints it as ``error: MESSAGE`` and exits with status 2, never with a traceback.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, settings or environment that the user can fix; the message is one line."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(str(text).split())


def read_utf8(path, what: str = "file") -> str:
    """The text of ``path`` (UTF-8, a BOM allowed). A file that cannot be read or is not UTF-8 is a
    :class:`UserError` naming it (``what``: e.g. "config", "annotations file") and, for bad bytes,
    the line and byte offset, so the user can find them."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}): {exc.reason}") from None

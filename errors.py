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

"""Writing files and directories so that a crash never leaves half of one.

Everything goes to a temporary sibling first (same directory, so the final rename stays on one
file system), is flushed to disk, and is renamed into place only when complete. Readers see the
old content or the new one, never a mixture; on any error the temporaries are removed.

A process killed outright (``kill -9``, the machine losing power) cannot remove its temporaries.
Their names carry the writer's process id, so the next write into the same directory removes the
ones whose process is gone (:func:`remove_stale_temporaries`) and says so on stderr.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from errors import UserError

# Text pieces joined per write() call when streaming a document (bounded memory, few syscalls).
_PIECES_PER_WRITE = 4096


def _temporary_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


# The temporaries this module names: ".NAME.PID.HEX.tmp" (files), ".NAME.partial-PID" and
# ".NAME.old-PID" (directories).
_TEMPORARY = re.compile(r"^\..+\.(?:(?P<pid>\d+)\.[0-9a-f]{8}\.tmp|(?:partial|old)-(?P<dir_pid>\d+))$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a pid we can ask about): leave it alone
    return True


def remove_stale_temporaries(directory: str | Path) -> list[str]:
    """Remove the temporaries in ``directory`` left by writers that no longer run (killed before
    they could clean up), print one line saying what went and how much space it freed, and return
    their names. A temporary of a live process (a write in progress) is left alone."""
    directory = Path(directory)
    removed, freed = [], 0
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if not match or _alive(int(match.group("pid") or match.group("dir_pid"))):
            continue
        path = directory / name
        try:
            if path.is_dir() and not path.is_symlink():
                freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
            else:
                freed += path.lstat().st_size
                path.unlink()
        except OSError:
            continue
        removed.append(name)
    if removed:
        print(f"note: {directory}: removed {len(removed)} temporary file(s) left by an interrupted earlier run "
              f"({', '.join(sorted(removed)[:3])}{', ...' if len(removed) > 3 else ''}; {freed / 2**20:.1f} MiB)",
              file=sys.stderr)
    return removed


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    write_documents(Path(path).parent, {Path(path).name: [text]})


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a picture, say)."""
    path = Path(path)
    remove_stale_temporaries(path.parent)
    tmp = _temporary_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_documents(directory: str | Path, documents: Mapping[str, Iterable[str]]) -> None:
    """Write several files into ``directory`` as one unit: each document (an iterable of text
    pieces, streamed) goes to a temporary file, all are fsynced, then all are renamed into place.

    On any failure (an ``OSError`` or an exception raised while producing a document) nothing is
    renamed and the temporaries are removed, so the directory keeps its previous files.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    pending: list[tuple[Path, Path]] = []
    try:
        for name, document in documents.items():
            final = directory / name
            tmp = _temporary_name(final)
            pending.append((tmp, final))
            with open(tmp, "x", encoding="utf-8") as f:
                for chunk in _batched(document):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        for tmp, final in pending:
            os.replace(tmp, final)
        fsync_directory(directory)
    finally:
        for tmp, _ in pending:
            if tmp.exists():
                tmp.unlink()


def _batched(pieces: Iterable[str]) -> Iterator[str]:
    buffer: list[str] = []
    for piece in pieces:
        buffer.append(piece)
        if len(buffer) >= _PIECES_PER_WRITE:
            yield "".join(buffer)
            buffer.clear()
    yield "".join(buffer)


@contextmanager
def replace_directory(output: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``output``; when the block ends without an error it
    replaces ``output`` (whose old contents are removed only after the swap). On an error the
    temporary is removed and ``output`` stays exactly as it was."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output.parent)
    tmp = output.parent / f".{output.name}.partial-{os.getpid()}"
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if output.exists():
            output.rename(old)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not output.exists():
            old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def fsync_directory(path: str | Path) -> None:
    """Make renames inside ``path`` durable; not every platform can open a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(path: str | Path) -> None:
    """Raise :class:`errors.UserError` unless ``path`` (a file or directory, existing or not) can
    be written: an existing file must open for appending, otherwise the nearest existing ancestor
    must be a directory this process can create files in. Checked by creating and removing a probe file, which also catches read-only file systems
    (where permission bits say nothing, e.g. for root)."""
    path = Path(path)
    if path.is_file():  # an existing file (a resumed JSONL): opening it to append changes nothing
        try:
            open(path, "ab").close()
        except OSError as exc:
            raise UserError(f"{path}: not writable ({exc.strerror or exc})") from None
        return
    ancestor = path.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{path}: cannot be created: {ancestor} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=ancestor)
    except OSError as exc:
        raise UserError(f"{path}: not writable ({ancestor}: {exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)

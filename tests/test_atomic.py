"""atomic.py: a writer killed with SIGKILL leaves its temporaries behind; the next write into the
same folder removes them (only those whose process is gone) and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from atomic import remove_stale_temporaries, write_documents
from tests.conftest import ROOT

# A writer that starts a document and a directory, then hangs until it is killed.
HANGING_WRITER = """
import sys, time
from atomic import replace_directory, write_documents

def forever():
    yield "x" * 1_000_000
    time.sleep(600)

with replace_directory({out!r} + "/export") as tmp:
    (tmp / "weights").write_bytes(b"w" * 2_000_000)
    write_documents({out!r}, {{"qa.json": forever()}})
"""


def hang_and_kill(out: Path) -> list[str]:
    """Start the hanging writer on ``out``, SIGKILL it once its temporaries exist; their names."""
    proc = subprocess.Popen([sys.executable, "-c", HANGING_WRITER.format(root=str(ROOT), out=str(out))])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if any(n.endswith(".tmp") for n in names) and any(".partial-" in n for n in names):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return sorted(p.name for p in out.iterdir())


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path, capsys):
    out = tmp_path / "merged"
    left = hang_and_kill(out)
    assert len(left) == 2 and left[0].startswith(".export.partial-") and left[1].startswith(".qa.json.")
    # A temporary of a live process (this one, mid-write) is not touched.
    mine = out / f".stats.json.{os.getpid()}.0123abcd.tmp"
    mine.write_text("in progress")

    write_documents(out, {"qa.json": ["[]\n"]})
    assert sorted(p.name for p in out.iterdir()) == [mine.name, "qa.json"]
    err = capsys.readouterr().err
    # 1.9 MiB: the partial export's weights; the document's first piece was not flushed yet
    assert "removed 2 temporary file(s) left by an interrupted earlier run" in err and "1.9 MiB" in err
    assert remove_stale_temporaries(out) == [] and mine.exists()


def test_process_image_after_a_killed_merge(tmp_path, ai_source, capsys):
    """The merge of process_image.py writes through write_documents: its next run cleans up."""
    import yaml

    from commands import process_image

    out = tmp_path / "out"
    hang_and_kill(out)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"sources": [ai_source], "output_dir": str(out)}}))
    assert process_image.main(["--config", str(path)]) == 0
    assert "left by an interrupted earlier run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["images.json", "qa.json", "stats.json"]

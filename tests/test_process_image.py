"""process_image.py, the command line: counts on stdout, one-line errors, exit status 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from tests.conftest import ROOT
from tests.raw_samples import COMPLEX_77K, DETAIL_23K, llava_record, llava_source


def write_cli_config(tmp_path: Path, sources: list[dict]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"data": {"output_dir": str(tmp_path / "out"), "sources": sources}}), encoding="utf-8")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "process_image.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_merges_and_prints_counts(tmp_path, ai_source, coco):
    sources = [ai_source, llava_source(tmp_path, "complex_reasoning_77k", COMPLEX_77K + [llava_record(image=None)], coco)]
    result = run_cli("--config", str(write_cli_config(tmp_path, sources)), "--set", "data.seed=7")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].split() == ["ai_challenger", "ai_challenger", "2", "2", "2", "2", "0"]
    assert lines[3].split() == ["complex_reasoning_77k", "llava", "3", "2", "2", "2", "1"]
    assert lines[4].split() == ["total", "5", "4", "4", "4", "1"]
    assert "skipped in complex_reasoning_77k: no_image x1" in result.stdout
    assert json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))["seed"] == 7


def test_cli_stop_on_error_exits_2_and_keeps_previous_output(tmp_path, coco):
    out = tmp_path / "out"
    out.mkdir()
    (out / "qa.json").write_text("[]\n", encoding="utf-8")
    source = llava_source(tmp_path, "detail_23k", DETAIL_23K, coco)
    (coco / DETAIL_23K[1]["image"]).unlink()
    result = run_cli("--config", str(write_cli_config(tmp_path, [source])), "--set", "data.on_error=stop")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert source["annotations"] in result.stderr
    assert "record #1 (id 000000539056)" in result.stderr and "[missing_image]" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(out)) == ["qa.json"] and (out / "qa.json").read_text(encoding="utf-8") == "[]\n"


def test_cli_invalid_json_exits_2(tmp_path):
    path = tmp_path / "complex_reasoning_77k.json"
    path.write_text(json.dumps(COMPLEX_77K)[:-40], encoding="utf-8")  # truncated download
    result = run_cli("--config", str(write_cli_config(tmp_path, [{"type": "llava", "annotations": str(path)}])))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: not valid JSON")
    assert not (tmp_path / "out").exists()


def test_cli_when_every_record_is_bad_prints_the_counts_then_one_error(tmp_path, coco):
    records = [llava_record(id=f"gone{i}", image=f"gone{i}.jpg") for i in range(3)]
    result = run_cli("--config", str(write_cli_config(tmp_path, [llava_source(tmp_path, "llava", records, coco)])))
    assert result.returncode == 2
    assert "skipped in llava: missing_image x3" in result.stdout  # why, source by source
    assert result.stderr.startswith("error: no record was accepted") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_config_that_is_not_utf8_is_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"data:\n  output_dir: caf\xe9\n")
    result = run_cli("--config", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {config}: not UTF-8 text (line 2, byte 23)")


def test_cli_output_below_a_file_is_refused_before_reading(tmp_path, ai_source):
    (tmp_path / "file.txt").write_text("x")
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"data": {"output_dir": str(tmp_path / "file.txt" / "out"), "sources": [ai_source]}}))
    result = run_cli("--config", str(config))
    assert result.returncode == 2 and "is a file, not a directory" in result.stderr


def test_ctrl_c_ends_with_one_line_and_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "qa.json").write_text("previous\n", encoding="utf-8")
    fifo = tmp_path / "annotations.json"
    os.mkfifo(fifo)  # reading it blocks until a writer comes: the merge is surely mid-way
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"data": {"output_dir": str(out), "check_images": False,
                                           "sources": [{"type": "llava", "annotations": str(fifo)}]}}))
    proc = subprocess.Popen([sys.executable, str(ROOT / "process_image.py"), "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip() == f"interrupted: nothing was written; {out} keeps its previous files"
    assert sorted(os.listdir(out)) == ["qa.json"] and (out / "qa.json").read_text(encoding="utf-8") == "previous\n"

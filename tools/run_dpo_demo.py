"""The preference-alignment demo (``make demo-dpo``): teach the demo model to prefer short answers.

The seeds' example prefers "He is running." over a long-winded description. Here, after the SFT
demo (``make demo``; run first if its checkpoint is missing):

1. a mixed-style SFT set: the demo's training questions, each answer kept short ("red") or made
   long-winded ("Looking at the image carefully, I would say that the answer is red.") at random;
   the SFT demo model continues training on it briefly, so that it answers both ways;
2. preference pairs in the ms-swift format: chosen = the short correct answer, rejected = a
   long-winded one or a wrong short one; training pairs from the training split, held-out pairs
   from the held-out split, merged by ``process_image.py`` (``type: preference``);
3. ``train.py`` with ``train.stage: dpo`` (LoRA, the adapter-off reference) for a fixed 300 steps
   (the same model on every machine, however long it takes);
4. ``evaluate.py`` on the held-out split before and after: VQA accuracy and the share of short
   answers, and a plot of the reward margin and accuracy over training; ``evaluate.py --compare``
   of the two (paired interval, McNemar's test, the questions that changed).

Every step runs the real script a user would run, in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from random import Random

from tools.make_demo_data import COLORS, POSITIONS, SHAPES
from tools.run_demo import evaluate, run, save_twin_plot

ROOT = Path(__file__).resolve().parent.parent

# The long-winded answers of the seeds' example, around a correct answer.
VERBOSE = ("Looking at the image carefully, I would say that the answer is {}.",
           "After examining all of the shapes in the picture, my answer is {}.",
           "Well, based on what I can see in this image, it seems to me that it is {}.")
ANSWER_SETS = (COLORS, SHAPES, POSITIONS, ("1", "2", "3"), ("yes", "no"))
SHORT_WORDS = 3  # an answer of at most this many words counts as short (the demo's are one word)

# Continuing the SFT demo on the mixed set: enough steps for both styles to be likely answers.
MIXED_OVERRIDES = ["train.max_steps=300", "train.learning_rate=2e-4", "train.warmup_ratio=0.0",
                   "train.eval_steps=100", "train.save_steps=300"]
# The dpo stage: LoRA over the mixed model (adapter off = the reference), projector frozen.
DPO_OVERRIDES = ["train.stage=dpo", "train.finetune=lora", "train.train_embeddings=true", "train.lora.r=8", "train.lora.alpha=16",
                 "train.lora.dropout=0.0", "train.learning_rate=1e-3", "train.lr_scheduler=constant",
                 "train.warmup_ratio=0.0", "train.dpo.beta=0.1", "train.dpo.sft_weight=1.0", "train.max_steps=300",
                 "train.per_device_batch_size=16", "train.eval_batch_size=50",
                 "train.eval_steps=25", "train.logging_steps=5", "train.save_steps=300", "train.eval_vqa=false",
                 "data.eval_max_samples=null"]
EVAL_ARGS = ("--max-new-tokens", "32")  # room for a long-winded answer to show itself


def wrong_answer(answer: str, rng: Random) -> str | None:
    for options in ANSWER_SETS:
        if answer in options:
            return rng.choice([o for o in options if o != answer])
    return None


def swift_pair(question: str, chosen: str, rejected: str, image: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": chosen}],
            "rejected_response": rejected, "images": [image]}


def write_raw(data_dir: Path, out: Path, num_mixed: int, num_pairs: int, num_eval_pairs: int, seed: int) -> None:
    """The mixed-style LLaVA file and the preference JSONL files, from the demo's raw files."""
    rng = Random(seed)
    images = (data_dir / "images").resolve()
    train = json.loads((data_dir / "raw" / "llava_train.json").read_text())
    heldout = json.loads((data_dir / "raw" / "llava_eval.json").read_text())
    out.mkdir(parents=True, exist_ok=True)

    mixed = []
    for record in train[:num_mixed]:
        turns = [dict(t) for t in record["conversations"]]
        for turn in turns:
            if turn["from"] == "gpt" and rng.random() < 0.5:
                turn["value"] = rng.choice(VERBOSE).format(turn["value"])
        mixed.append({**record, "conversations": turns})
    (out / "mixed_train.json").write_text(json.dumps(mixed))

    def pairs(records: list[dict], n: int) -> list[dict]:
        rows = []
        for record in records[:n]:
            question, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
            wrong = wrong_answer(answer, rng)
            rejected = rng.choice(VERBOSE).format(answer) if wrong is None or rng.random() < 0.5 else wrong
            rows.append(swift_pair(question, answer, rejected, str(images / record["image"])))
        return rows

    # Training pairs come after the mixed-SFT records, so DPO sees new questions.
    for name, rows in (("prefs_train.jsonl", pairs(train[num_mixed:], num_pairs)),
                       ("prefs_eval.jsonl", pairs(heldout, num_eval_pairs))):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def short_share(predictions: Path) -> float:
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    return sum(len(r["prediction"].split()) <= SHORT_WORDS for r in rows) / len(rows)


def score(config: str, checkpoint: Path, eval_file: str, out: Path) -> dict:
    metrics = evaluate(config, checkpoint, eval_file, out, *EVAL_ARGS)
    return {"vqa_accuracy": metrics["vqa_accuracy"], "short_share": short_share(out / "predictions.jsonl"),
            "per_question_type": {k: v["vqa_accuracy"] for k, v in metrics.get("per_question_type", {}).items()}}


def plot(progress: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "rewards/margins" in r]
    held = [r for r in rows if "eval_rewards/margins" in r]
    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=120)
    ax1.plot([r["train_seconds"] / 60 for r in train], [r["rewards/margins"] for r in train], color="tab:gray",
             lw=1, label="reward margin (training batches)")
    ax1.plot([r["train_seconds"] / 60 for r in held], [r["eval_rewards/margins"] for r in held], color="tab:orange",
             marker="o", ms=3, label="reward margin (held-out pairs)")
    ax1.set_xlabel("DPO training wall time on a 2-core CPU (minutes)")
    ax1.set_ylabel("reward margin (chosen - rejected)")
    ax2 = ax1.twinx()
    ax2.plot([r["train_seconds"] / 60 for r in held], [r["eval_rewards/accuracies"] for r in held], color="tab:blue",
             marker="o", ms=3, label="reward accuracy (held-out pairs)")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("held-out reward accuracy")
    save_twin_plot(fig, ax1, ax2, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--num-mixed", type=int, default=9600, help="mixed-style SFT records (300 steps of 32)")
    parser.add_argument("--num-pairs", type=int, default=4800, help="training preference pairs")
    parser.add_argument("--num-eval-pairs", type=int, default=200, help="held-out preference pairs")
    parser.add_argument("--out", default="outputs/demo-dpo", help="evaluations, summary and the plot go here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-mixed", action="store_true",
                        help="keep the mixed-style SFT model of an earlier run (checkpoints/demo-mixed)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")

    import shutil

    from config import load_config

    cfg = load_config(ROOT / args.config)
    sft = ROOT / cfg.train.output_dir
    data = ROOT / "data" / "demo"
    work = ROOT / "data" / "demo-dpo"
    mixed_run, dpo_run = ROOT / "checkpoints" / "demo-mixed", ROOT / "checkpoints" / "demo-dpo"
    out = ROOT / args.out
    started = time.monotonic()
    if not (sft / "model.safetensors").is_file() or not (data / "raw" / "llava_train.json").is_file():
        print(f"no SFT demo model in {sft}: running the SFT demo first (make demo)")
        run("tools/run_demo.py", "--config", args.config)

    write_raw(data, work / "raw", args.num_mixed, args.num_pairs, args.num_eval_pairs, args.seed)
    merge = ["process_image.py", "--config", args.config]
    run(*merge, "--set", f"data.output_dir={work / 'mixed'}", "--set",
        f"data.sources=[{{type: llava, name: mixed, annotations: {work / 'raw' / 'mixed_train.json'}, "
        f"image_dir: {data / 'images'}}}]")
    for split in ("train", "eval"):
        run(*merge, "--set", f"data.output_dir={work / ('prefs-' + split)}", "--set",
            f"data.sources=[{{type: preference, name: prefs_{split}, annotations: {work / 'raw' / f'prefs_{split}.jsonl'}}}]")

    # 1. The SFT demo model learns to answer both ways.
    if not (args.reuse_mixed and (mixed_run / "model.safetensors").is_file()):
        shutil.rmtree(mixed_run, ignore_errors=True)
        sets = [f"train.init_from={sft}", f"data.train_file={work / 'mixed' / 'qa.json'}",
                f"train.output_dir={mixed_run}", *MIXED_OVERRIDES]
        run("train.py", "--config", args.config, *(a for s in sets for a in ("--set", s)))

    # 2. DPO towards the short answers, a fixed 300 steps.
    shutil.rmtree(dpo_run, ignore_errors=True)
    sets = [f"train.init_from={mixed_run}", f"data.train_file={work / 'prefs-train' / 'qa.json'}",
            f"data.eval_file={work / 'prefs-eval' / 'qa.json'}", f"train.output_dir={dpo_run}", *DPO_OVERRIDES]
    dpo_started = time.monotonic()
    run("train.py", "--config", args.config, *(a for s in sets for a in ("--set", s)))
    dpo_minutes = (time.monotonic() - dpo_started) / 60

    # 3. Before and after, on the whole held-out VQA split.
    results = {name: score(args.config, run_dir, cfg.data.eval_file, out / name)
               for name, run_dir in (("sft", sft), ("mixed_sft", mixed_run), ("dpo", dpo_run))}
    rows = [json.loads(line) for line in (dpo_run / "progress.jsonl").read_text().splitlines() if line.strip()]
    held = [r for r in rows if "eval_rewards/accuracies" in r]
    results["dpo_reward_accuracy"] = held[-1]["eval_rewards/accuracies"] if held else None
    results["dpo_reward_margin"] = held[-1]["eval_rewards/margins"] if held else None
    results["dpo_train_minutes"] = max(r["train_seconds"] for r in rows) / 60
    results["dpo_run_minutes"] = dpo_minutes
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    plot(dpo_run / "progress.jsonl", out / "dpo_progress.png")
    # 4. A/B: is the DPO model really better than the model it started from, question by question?
    run("evaluate.py", "--compare", str(out / "mixed_sft"), str(out / "dpo"), "--output", str(out / "mixed_sft-vs-dpo"))

    print("\n                 held-out VQA accuracy   short answers")
    for name in ("sft", "mixed_sft", "dpo"):
        print(f"  {name:14s} {results[name]['vqa_accuracy']:20.3f} {results[name]['short_share']:15.3f}")
    print(f"held-out reward accuracy after DPO: {results['dpo_reward_accuracy']}, margin "
          f"{results['dpo_reward_margin']}; DPO training {results['dpo_train_minutes']:.1f} minutes")
    print(f"demo finished in {(time.monotonic() - started) / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

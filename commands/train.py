"""Train the VQA model with the transformers Trainer.

examples:
  python train.py --config config.yaml
  torchrun --nproc_per_node N train.py --config config.yaml --set train.deepspeed=configs/zero2.json
  deepspeed train.py --config config.yaml --set train.deepspeed=configs/zero3.json
  python train.py --config config.yaml --set train.stage=pretrain --set train.output_dir=checkpoints/pretrain
  python train.py --config config.yaml --set train.init_from=checkpoints/pretrain
  python train.py --config config.yaml --plan --gpu-memory 24    # will it fit a 24 GiB card? (trains nothing)
  python train.py --lineage checkpoints/dpo     # where a model came from, back to its base models

Stages: pretrain trains the projector only; sft trains the projector plus a LoRA adapter on the
language model (train.finetune: lora) or the whole language model (full). Reads the model, data
and train sections of the config: the bases (model.*), the merged data (data.train_file,
data.eval_file, written by process_image.py) and every training knob (train.*).

--plan estimates the peak GPU memory of the configured run from the bases' config files alone
(no weights are loaded, nothing trains): weights, trained parameters, gradients and AdamW states
(sharded by the ZeRO stage of train.deepspeed over --gpus), activations with or without
checkpointing for train.per_device_batch_size samples of image tokens + --text-tokens, the logits
at the supervised positions, the vision tower and the CUDA overhead. It prints the breakdown and,
when the run does not fit --gpu-memory, the cheapest changes that do, each as --set overrides with
its own estimate (the formula: training/plan.py; against measured H100 peaks: bench/RESULTS.md).
It also prints which weight precision serves the model on that GPU with vLLM: fp16, int8 or int4
(export.py --quantize) weights plus the KV cache of --context-token sequences, and how many fit at once.

files written under train.output_dir:
  checkpoint-N/        the trained weights only (projector, LoRA adapter or LM) + config.json,
                       tokenizer and trainer state; train.resume: auto continues from the newest
                       complete one
  config.json, model.safetensors   the final weights (load with --checkpoint OUTPUT_DIR)
  progress.jsonl       loss and held-out metrics against training wall time
  train_config.json    the configuration this run used
  run.json             the run's record (also copied into each checkpoint-N): per session (a resume
                       appends one) the resolved configuration, code version (git commit, uncommitted
                       changes), sha256 of the data files, the base models and the parent checkpoint
                       (train.init_from) by fingerprint, start/end, final metrics, the saved models'
                       fingerprints; --lineage prints the chain it describes
  wandb/               offline wandb logs when there is no API key

exit status: 0 trained (or planned, with --plan); 2 a configuration that cannot work (one line on
stderr, before any model loads); 130 interrupted.
"""

from __future__ import annotations

import argparse

import cli
from training.plan import DEFAULT_ANSWER_TOKENS, DEFAULT_GPU_GIB, DEFAULT_TEXT_TOKENS


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser_from_doc(__doc__)
    cli.add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from the newest complete checkpoint (or the one given)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    group = parser.add_argument_group("memory plan (--plan: estimate, print and exit; nothing loads or trains)")
    group.add_argument("--plan", action="store_true",
                       help="estimate the run's peak GPU memory and, if it does not fit, what to change")
    group.add_argument("--gpu-memory", type=cli.positive_float, metavar="GiB",
                       help=f"memory of one GPU (default: the visible GPU's; without one {DEFAULT_GPU_GIB:g})")
    group.add_argument("--gpus", type=cli.positive_int, metavar="N",
                       help="GPUs the run uses, for DeepSpeed's sharding (default: $WORLD_SIZE, else 1)")
    group.add_argument("--text-tokens", type=cli.positive_int, default=DEFAULT_TEXT_TOKENS, metavar="N",
                       help="tokens per sample after the image tokens (default: %(default)s: with so400m's 728 "
                            "image tokens the 921-token sample of bench/gpu_train.py)")
    group.add_argument("--answer-tokens", type=cli.positive_int, default=DEFAULT_ANSWER_TOKENS, metavar="N",
                       help="supervised tokens per sample, where logits are computed (default: %(default)s)")
    group.add_argument("--context", type=cli.positive_int, metavar="N",
                       help="tokens per sequence when serving, for the fp16/int8/int4 serving table (default: "
                            "image tokens + --text-tokens)")
    parser.add_argument("--lineage", metavar="CHECKPOINT",
                        help="print where a checkpoint, run directory or export came from (data, code and settings "
                             "of each training step back to the base models) and exit")
    args = parser.parse_args(argv)
    if args.lineage:
        from model.lineage import lineage

        print("\n".join(lineage(args.lineage)))
        return 0
    cfg = cli.config_from_args(args)
    if args.plan:
        from training.plan import format_plan, make_plan

        print(format_plan(make_plan(cfg, args.gpu_memory, args.gpus, args.text_tokens, args.answer_tokens, args.context)))
        return 0
    if args.resume:
        cfg.train.resume = args.resume

    resume = "run the same command to resume from it" if cfg.train.resume != "never" else \
        "resume with --resume (train.resume is never)"
    with cli.on_interrupt(f"training stopped; the checkpoint-N directories in {cfg.train.output_dir} are kept: {resume}"):
        from training.run import train

        train(cfg)
    return 0


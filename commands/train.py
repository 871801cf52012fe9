"""Train the VQA model with the transformers Trainer.

examples:
  python train.py --config config.yaml
  torchrun --nproc_per_node N train.py --config config.yaml --set train.deepspeed=configs/zero2.json
  deepspeed train.py --config config.yaml --set train.deepspeed=configs/zero3.json
  python train.py --config config.yaml --set train.stage=pretrain --set train.output_dir=checkpoints/pretrain
  python train.py --config config.yaml --set train.init_from=checkpoints/pretrain
  python train.py --lineage checkpoints/dpo     # where a model came from, back to its base models

Stages: pretrain trains the projector only; sft trains the projector plus a LoRA adapter on the
language model (train.finetune: lora) or the whole language model (full). Reads the model, data
and train sections of the config: the bases (model.*), the merged data (data.train_file,
data.eval_file, written by process_image.py) and every training knob (train.*).

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

exit status: 0 trained; 2 a configuration that cannot work (one line on stderr, before any model
loads); 130 interrupted.
"""

from __future__ import annotations

import argparse

import cli


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser_from_doc(__doc__)
    cli.add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from the newest complete checkpoint (or the one given)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--lineage", metavar="CHECKPOINT",
                        help="print where a checkpoint, run directory or export came from (data, code and settings "
                             "of each training step back to the base models) and exit")
    args = parser.parse_args(argv)
    if args.lineage:
        from model.lineage import lineage

        print("\n".join(lineage(args.lineage)))
        return 0
    cfg = cli.config_from_args(args)
    if args.resume:
        cfg.train.resume = args.resume

    resume = "run the same command to resume from it" if cfg.train.resume != "never" else \
        "resume with --resume (train.resume is never)"
    with cli.on_interrupt(f"training stopped; the checkpoint-N directories in {cfg.train.output_dir} are kept: {resume}"):
        from training.run import train

        train(cfg)
    return 0


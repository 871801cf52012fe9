#!/usr/bin/env python
"""Train the VQA model with the transformers Trainer.

The command line (``--help``: its manual page) is ``commands/train.py``; this file only runs it.
"""

import cli
from commands.train import main

if __name__ == "__main__":
    cli.run_cli(main)

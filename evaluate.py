#!/usr/bin/env python
"""Evaluate a checkpoint (or a served model) on a benchmark in its official format, or on held-out merged data.

The command line (``--help``: its manual page) is ``commands/evaluate.py``; this file only runs it.
"""

import cli
from commands.evaluate import main

if __name__ == "__main__":
    cli.run_cli(main)

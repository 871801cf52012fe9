#!/usr/bin/env python
"""Ask the VQA model about images: one question, an interactive session, or a batch.

The command line (``--help``: its manual page) is ``commands/infer.py``; this file only runs it.
"""

import cli
from commands.infer import main

if __name__ == "__main__":
    cli.run_cli(main)

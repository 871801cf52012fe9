#!/usr/bin/env python
"""Merge raw VQA data sources into one data set: an image table and conversation records.

The command line (``--help``: its manual page) is ``commands/process_image.py``; this file only runs it.
"""

import cli
from commands.process_image import main

if __name__ == "__main__":
    cli.run_cli(main)

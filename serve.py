#!/usr/bin/env python
"""Serve the VQA model over an OpenAI-compatible API: answer cache, online A/B, request log, metrics.

The command line (``--help``: its manual page) is ``commands/serve.py``; this file only runs it.
"""

import cli
from commands.serve import main

if __name__ == "__main__":
    cli.run_cli(main)

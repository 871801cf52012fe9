#!/usr/bin/env python
"""Export a trained checkpoint for serving (transformers LLaVA: transformers, vLLM; GGUF: llama.cpp).

The command line (``--help``: its manual page) is ``commands/export.py``; this file only runs it.
"""

import cli
from commands.export import main

if __name__ == "__main__":
    cli.run_cli(main)

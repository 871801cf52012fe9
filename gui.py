#!/usr/bin/env python
"""Ask questions about images in a small Tkinter window, or review pre-annotated answers.

The command line (``--help``: its manual page) is ``commands/gui.py``; this file only runs it.
"""

import cli
from commands.gui import main

if __name__ == "__main__":
    cli.run_cli(main)

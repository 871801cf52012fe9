"""What both windows (questions, review) build the same way: the frame, the menu bar, the status
bar, the state-file test hook. Tk is imported by the caller; these take the modules they need."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def window_frame(root, ttk, title: str, size: str, minsize: tuple[int, int]):
    """Title, size and theme of ``root``; returns the main frame (row 0), leaving row 1 for the status bar."""
    root.title(title)
    root.geometry(size)
    root.minsize(*minsize)
    style = ttk.Style(root)
    if "clam" in style.theme_names() and sys.platform.startswith("linux"):
        style.theme_use("clam")
    style.configure("Status.TLabel", padding=(8, 3))
    root.columnconfigure(0, weight=1)
    root.rowconfigure(0, weight=1)
    main = ttk.Frame(root, padding=(10, 10, 10, 4))
    main.grid(row=0, column=0, sticky="nsew")
    return main


def menu_bar(root, tk, file_items: list[tuple[str, str | None, object]], show_shortcuts) -> None:
    """File menu (``(label, accelerator, command)``; a label of None is a separator) and Help ▸
    Keyboard shortcuts."""
    menubar = tk.Menu(root)
    file_menu = tk.Menu(menubar, tearoff=False)
    for label, accelerator, command in file_items:
        if label is None:
            file_menu.add_separator()
        else:
            file_menu.add_command(label=label, accelerator=accelerator, command=command)
    menubar.add_cascade(label="File", menu=file_menu, underline=0)
    help_menu = tk.Menu(menubar, tearoff=False)
    help_menu.add_command(label="Keyboard shortcuts", command=show_shortcuts)
    menubar.add_cascade(label="Help", menu=help_menu, underline=0)
    root.config(menu=menubar)


def status_bar(root, ttk):
    """A sunken bar in row 1 of ``root``; column 0 stretches."""
    status = ttk.Frame(root, relief="sunken", borderwidth=1)
    status.grid(row=1, column=0, sticky="ew")
    status.columnconfigure(0, weight=1)
    return status


def write_state_file(path: Path, state: dict) -> None:
    """The test hook's JSON, replaced atomically so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)

"""The review window (``gui.py --review answers.jsonl``): Tk widgets over :class:`ui.review.ReviewSession`.

One item at a time: the image on the left; the question, the model's answer, its confidence and
why it was flagged on the right; the decision buttons below; the progress line in the status bar.
Key presses go through :func:`ui.review.action_for_key`, so the keyboard and the buttons run the
same commands. ``write_state`` is the test hook (``--state-file``), as in ``ui.window``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ui.review import SHORTCUTS, ReviewSession, action_for_key
from ui.widgets import menu_bar, status_bar, window_frame, write_state_file

# Tk event state bits for Control and Alt (Mod1); NumLock (Mod2) and Shift do not count.
_CONTROL, _ALT = 0x4, 0x8


class ReviewApp:
    def __init__(self, root, session: ReviewSession, state_file: Path | None = None, notes: list[str] = ()) -> None:
        import tkinter as tk
        from tkinter import font, ttk

        self.tk, self.ttk = tk, ttk
        self.root = root
        self.session = session
        self.state_file = state_file
        self.editing = False
        self.photo = None  # keep a reference: Tk does not
        self.shown_image: str | None = None
        self.image_size: tuple[int, int] | None = None
        self.preview_job = None
        self.error: str | None = None

        self.main = window_frame(root, ttk, f"Review {session.answers.path.name}", "1100x680", (720, 460))
        style = ttk.Style(root)
        style.configure("Field.TLabel", foreground="#556")
        style.configure("Flag.TLabel", foreground="#b00020")
        base = font.nametofont("TkTextFont").actual()
        self.big = (base.get("family", "TkDefaultFont"), base.get("size", 10) + 3)
        self._build_menu()
        self._build_widgets()
        root.bind("<Key>", self.on_key)
        root.protocol("WM_DELETE_WINDOW", self.quit)
        self.preview_area.bind("<Configure>", self._schedule_preview)
        self.notes = list(notes)
        self.show()
        root.focus_force()

    # -- layout ---------------------------------------------------------------------------

    def _build_menu(self) -> None:
        menu_bar(self.root, self.tk, [("Quit", "Ctrl+Q", self.quit)], self.show_shortcuts)
        for key in ("<Control-q>", "<Control-Q>"):
            self.root.bind(key, lambda e: self.quit())

    def _build_widgets(self) -> None:
        tk, ttk = self.tk, self.ttk
        root = self.root
        main = self.main
        main.columnconfigure(0, weight=3, uniform="panes")  # uniform: the weights set the widths
        main.columnconfigure(1, weight=2, uniform="panes")
        main.rowconfigure(0, weight=1)

        left = ttk.LabelFrame(main, text="Image", padding=6)
        left.grid(row=0, column=0, sticky="nsew", padx=(0, 10))
        left.columnconfigure(0, weight=1)
        left.rowconfigure(0, weight=1)
        self.preview = ttk.Label(left, anchor="center")
        self.preview.grid(row=0, column=0, sticky="nsew")
        self.preview_area = left

        right = ttk.LabelFrame(main, text="Item", padding=10)
        right.grid(row=0, column=1, sticky="nsew")
        right.columnconfigure(0, weight=1)
        wrap = 380
        self.where = ttk.Label(right, style="Field.TLabel")
        self.where.grid(row=0, column=0, sticky="w")
        ttk.Label(right, text="Question", style="Field.TLabel").grid(row=1, column=0, sticky="w", pady=(10, 0))
        self.question = ttk.Label(right, wraplength=wrap, justify="left")
        self.question.grid(row=2, column=0, sticky="w")
        ttk.Label(right, text="Model's answer", style="Field.TLabel").grid(row=3, column=0, sticky="w", pady=(10, 0))
        self.answer = ttk.Label(right, wraplength=wrap, justify="left", font=self.big)
        self.answer.grid(row=4, column=0, sticky="w")
        self.confidence = ttk.Label(right, style="Field.TLabel")
        self.confidence.grid(row=5, column=0, sticky="w", pady=(10, 0))
        self.flags = ttk.Label(right, style="Flag.TLabel", wraplength=wrap, justify="left")
        self.flags.grid(row=6, column=0, sticky="w")
        ttk.Label(right, text="Corrected answer (Enter saves, Esc cancels)", style="Field.TLabel").grid(
            row=7, column=0, sticky="w", pady=(14, 0))
        self.edit_var = tk.StringVar()
        self.edit_var.trace_add("write", lambda *_: self.write_state())
        self.edit_box = ttk.Entry(right, textvariable=self.edit_var, font=self.big)
        self.edit_box.grid(row=8, column=0, sticky="ew", ipady=2)
        self.decision = ttk.Label(right, wraplength=wrap, justify="left")
        self.decision.grid(row=9, column=0, sticky="w", pady=(14, 0))

        buttons = ttk.Frame(main)
        buttons.grid(row=1, column=0, columnspan=2, sticky="ew", pady=(10, 4))
        self.buttons = {}
        for column, (name, label) in enumerate((
            ("previous", "◀ Previous"), ("accept", "Accept (Enter)"), ("edit", "Edit (e)"),
            ("reject", "Reject (Del)"), ("skip", "Skip (s)"), ("undo", "Undo (u)"), ("next", "Next ▶"),
        )):
            button = ttk.Button(buttons, text=label, command=lambda n=name: self.run(n), takefocus=False)
            button.grid(row=0, column=column, padx=(0, 6))
            self.buttons[name] = button
        self.flagged_var = tk.BooleanVar(value=self.session.flagged_only)
        self.flagged_box = ttk.Checkbutton(buttons, text="Flagged only (f)", variable=self.flagged_var,
                                           command=lambda: self.run("toggle_flagged"), takefocus=False)
        self.flagged_box.grid(row=0, column=7, padx=(12, 0))

        status = status_bar(root, ttk)
        self.progress = ttk.Label(status, style="Status.TLabel")
        self.progress.grid(row=0, column=0, sticky="w")
        self.status = ttk.Label(status, style="Status.TLabel", anchor="e")
        self.status.grid(row=0, column=1, sticky="e")

    # -- actions --------------------------------------------------------------------------

    def on_key(self, event):
        modifiers = bool(event.state & (_CONTROL | _ALT))
        action = action_for_key(event.keysym, event.char, self.editing, modifiers)
        if action is None:
            return None
        self.run(*action)
        return "break"

    def run(self, name: str, text: str = "") -> None:
        """One command from a key or a button; a failing log write is shown, never swallowed."""
        if name in ("edit", "type"):
            self.begin_edit(text if name == "type" else None)
            return
        if name == "cancel_edit":
            self.end_edit()
            self.session.message = "Edit cancelled"
            self.show()
            return
        if name == "save_edit":
            text = self.edit_var.get()
        try:
            self.session.command(name, text)
        except OSError as exc:
            self.error = f"Could not write the review log: {exc}"
            self.session.message = self.error
            from tkinter import messagebox

            messagebox.showerror("Review log", f"{self.error}\nThe decision was not saved.", parent=self.root)
        if name == "save_edit" and self.session.message.startswith("The corrected answer is empty"):
            self.show()
            return
        if self.editing:
            self.end_edit()
        if name == "toggle_flagged":
            self.flagged_var.set(self.session.flagged_only)
        self.show()

    def begin_edit(self, typed: str | None) -> None:
        if self.session.current is None:
            return
        self.editing = True
        self.edit_box.state(["!disabled"])
        self.edit_box.focus_set()
        if typed is None:
            self.edit_var.set(self.session.current.answer)
            self.edit_box.selection_range(0, "end")  # typing replaces, arrows keep and refine
        else:
            self.edit_var.set(typed)
        self.edit_box.icursor("end")
        self.show()

    def end_edit(self) -> None:
        self.editing = False
        self.edit_var.set("")
        self.edit_box.selection_clear()
        self.edit_box.state(["disabled"])
        self.root.focus_set()

    def quit(self) -> None:
        if self.session.log is not None:
            self.session.log.close()
        self.root.destroy()

    def show_shortcuts(self) -> None:
        from tkinter import messagebox

        messagebox.showinfo("Keyboard shortcuts", "\n".join(f"{k}: {what}" for k, what in SHORTCUTS), parent=self.root)

    # -- rendering ------------------------------------------------------------------------

    def show(self) -> None:
        s = self.session
        item = s.current
        self.progress.configure(text=s.progress())
        self.status.configure(text=s.message or (self.notes[0] if self.notes else ""))
        if not self.editing:
            self.edit_box.state(["disabled"])
        if item is None:
            for label in (self.where, self.question, self.answer, self.confidence, self.flags, self.decision):
                label.configure(text="")
            self.where.configure(text="No items to show")
            self.write_state()
            return
        self.where.configure(text=f"Item {s.position + 1} of {len(s.visible)}"
                                  f"{' flagged' if s.flagged_only else ''} · line {item.line} · {Path(item.image).name}")
        self.question.configure(text=item.question)
        self.answer.configure(text=item.answer or "(empty)")
        confidence = "none" if item.confidence is None else f"{item.confidence:.3f} (mean token log-prob)"
        self.confidence.configure(text=f"Confidence: {confidence}")
        self.flags.configure(text=("Flagged: " + ", ".join(item.flags or ["review"])) if item.flagged else "Not flagged",
                             foreground="#b00020" if item.flagged else "#556")
        decision = s.decision()
        if decision is None:
            self.decision.configure(text="Not decided yet", foreground="#556")
        else:
            final = f" → {decision.final_answer}" if decision.decision == "edit" else ""
            self.decision.configure(text=f"Decision: {decision.decision}{final} ({decision.reviewer})",
                                    foreground="#1b5e20" if decision.decision in ("accept", "edit") else "#8a4b00")
        self.render_image(item.image)
        self.write_state()

    def _schedule_preview(self, event=None) -> None:
        """Re-fit the image when its pane changes size (also when the window first appears)."""
        if self.preview_job is not None:
            self.root.after_cancel(self.preview_job)
        self.preview_job = self.root.after(50, self._refit)

    def _refit(self) -> None:
        self.render_image(self.shown_image, force=True)
        self.write_state()

    def render_image(self, path: str | None, force: bool = False) -> None:
        from PIL import Image, ImageTk

        from visual.preprocess import load_image

        self.preview_job = None
        if path is None or (path == self.shown_image and not force):
            return
        self.shown_image = path
        try:
            image = load_image(path)
        except ValueError as exc:
            self.photo = None
            self.image_size = None
            self.preview.configure(image="", text=f"Cannot show the image:\n{exc}", wraplength=420)
            return
        area_w = max(self.preview_area.winfo_width() - 16, 64)
        area_h = max(self.preview_area.winfo_height() - 24, 64)
        scale = min(area_w / image.width, area_h / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resample = Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST
        self.photo = ImageTk.PhotoImage(image.resize(size, resample))
        self.image_size = size
        self.preview.configure(image=self.photo, text="")

    # -- test hook ------------------------------------------------------------------------

    def write_state(self) -> None:
        if self.state_file is None:
            return
        try:
            state = self.session.to_dict() | {
                "pid": os.getpid(),
                "time": time.time(),
                "editing": self.editing,
                "edit_text": self.edit_var.get(),
                "image_size": list(self.image_size) if self.image_size else None,
                "error": self.error,
                "notes": self.notes,
                "buttons": {name: {"x": b.winfo_rootx() + b.winfo_width() // 2,
                                   "y": b.winfo_rooty() + b.winfo_height() // 2}
                            for name, b in self.buttons.items()},
            }
        except self.tk.TclError:  # the window is being destroyed
            return
        write_state_file(self.state_file, state)

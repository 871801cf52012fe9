"""The question-and-answer window: Tk widgets over :class:`ui.controller.Controller`.

Lays out the widgets, forwards user actions to the controller and renders its state, polling it
with ``after``; the controller holds all of the logic and runs the model off the UI thread.
``write_state`` is a test hook (``gui.py --state-file``): the app's state as JSON after every change.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ui.widgets import menu_bar, status_bar, window_frame, write_state_file
from visual.image_files import IMAGE_EXTENSIONS

IMAGE_PATTERNS = " ".join("*" + extension for extension in IMAGE_EXTENSIONS)
SHORTCUTS = (
    ("Ctrl+O", "open an image"),
    ("Enter", "ask the question"),
    ("Esc", "stop the answer"),
    ("Up / Down", "recall earlier questions"),
    ("Ctrl+L", "clear the question box"),
    ("Ctrl+Q", "quit"),
)


class App:
    """The window: a thin layer that forwards user actions to the controller and renders its state."""

    POLL_MS = 40

    def __init__(self, root, controller, state_file: Path | None = None) -> None:
        import tkinter as tk
        from tkinter import font, ttk

        self.tk, self.ttk, self.font = tk, ttk, font
        self.root = root
        self.controller = controller
        self.state_file = state_file
        self.photo = None  # keep a reference: Tk does not
        self.preview_base = None
        self.preview_size = None
        self.preview_job = None
        self.dialog_open = False
        self.dialog: dict | None = None
        self.dialogs: list[dict] = []
        self.pending_errors: list[tuple[str, str, str]] = []
        self.asked: list[str] = []  # questions typed this session, for Up/Down recall
        self.recall = 0
        self.configured_at = None
        self.was_busy = None

        self.main = window_frame(root, ttk, "Visual question answering", "1000x640", (640, 420))
        ttk.Style(root).configure("Name.TLabel", foreground="#555")
        self._build_menu()
        self._build_widgets()
        self._bind_keys()
        root.protocol("WM_DELETE_WINDOW", self.quit)
        root.bind("<Configure>", self._on_root_configure, add="+")
        self.refresh()
        self.question.focus_set()
        root.after(self.POLL_MS, self._poll)

    # -- layout ---------------------------------------------------------------------------

    def _build_menu(self) -> None:
        menu_bar(self.root, self.tk, [("Open image…", "Ctrl+O", self.choose_image), (None, None, None),
                                      ("Quit", "Ctrl+Q", self.quit)], self.show_shortcuts)

    def _build_widgets(self) -> None:
        tk, ttk = self.tk, self.ttk
        root = self.root
        main = self.main
        main.columnconfigure(0, weight=1)
        main.rowconfigure(1, weight=1)

        bar = ttk.Frame(main)
        bar.grid(row=0, column=0, sticky="ew", pady=(0, 8))
        bar.columnconfigure(1, weight=1)
        ttk.Button(bar, text="Open image…", command=self.choose_image).grid(row=0, column=0, sticky="w")
        self.image_name = ttk.Label(bar, text="No image open", style="Name.TLabel", anchor="w")
        self.image_name.grid(row=0, column=1, sticky="ew", padx=(10, 0))

        panes = ttk.PanedWindow(main, orient="horizontal")
        panes.grid(row=1, column=0, sticky="nsew")
        left = ttk.LabelFrame(panes, text="Image", padding=6)
        right = ttk.LabelFrame(panes, text="Questions and answers", padding=6)
        panes.add(left, weight=1)
        panes.add(right, weight=1)
        left.columnconfigure(0, weight=1)
        left.rowconfigure(0, weight=1)
        # The preview is placed (not gridded) in a fixed-request frame so that its size follows
        # the pane and never the other way round.
        self.preview_area = ttk.Frame(left, width=440, height=380)
        self.preview_area.grid(row=0, column=0, sticky="nsew")
        self.preview = ttk.Label(self.preview_area, anchor="center", justify="center",
                                 text="No image\n\nFile ▸ Open image…  (Ctrl+O)")
        self.preview.place(relx=0.5, rely=0.5, anchor="center")
        self.preview_area.bind("<Configure>", self._schedule_preview)

        right.columnconfigure(0, weight=1)
        right.rowconfigure(0, weight=1)
        self.history = tk.Text(right, wrap="word", width=44, height=18, padx=8, pady=6, relief="flat",
                               borderwidth=0, highlightthickness=1, highlightcolor="#9ab",
                               highlightbackground="#ccc", state="disabled", cursor="arrow")
        scroll = ttk.Scrollbar(right, orient="vertical", command=self.history.yview)
        self.history.configure(yscrollcommand=scroll.set)
        self.history.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")
        base = self.font.nametofont("TkTextFont").actual()
        family, size = base.get("family", "TkDefaultFont"), base.get("size", 10)
        self.history.tag_configure("q", font=(family, size, "bold"), spacing1=6)
        self.history.tag_configure("a", font=(family, size), lmargin1=0, spacing3=6)
        self.history.tag_configure("label", foreground="#556")
        self.history.tag_configure("note", foreground="#888", font=(family, size, "italic"))
        self.history.tag_configure("error", foreground="#b00020")

        ask = ttk.Frame(main)
        ask.grid(row=2, column=0, sticky="ew", pady=(10, 4))
        ask.columnconfigure(1, weight=1)
        ttk.Label(ask, text="Question:").grid(row=0, column=0, sticky="w", padx=(0, 8))
        self.question_var = tk.StringVar()
        self.question = ttk.Entry(ask, textvariable=self.question_var)
        self.question.grid(row=0, column=1, sticky="ew", ipady=2)
        self.ask_button = ttk.Button(ask, text="Ask", command=self.ask)
        self.ask_button.grid(row=0, column=2, padx=(8, 0))
        self.stop_button = ttk.Button(ask, text="Stop", command=self.stop)
        self.stop_button.grid(row=0, column=3, padx=(6, 0))

        status = status_bar(root, ttk)
        self.status = ttk.Label(status, style="Status.TLabel", anchor="w")
        self.status.grid(row=0, column=0, sticky="ew")
        self.progress = ttk.Progressbar(status, mode="indeterminate", length=120)
        self.progress.grid(row=0, column=1, padx=8, pady=3)

    def _bind_keys(self) -> None:
        root = self.root
        for key in ("<Control-o>", "<Control-O>"):
            root.bind(key, lambda e: (self.choose_image(), "break")[1])
        for key in ("<Control-q>", "<Control-Q>"):
            root.bind(key, lambda e: self.quit())
        root.bind("<Escape>", lambda e: self.stop())
        self.question.bind("<Return>", self.ask)
        self.question.bind("<KP_Enter>", self.ask)
        self.question.bind("<Up>", lambda e: self._recall(-1))
        self.question.bind("<Down>", lambda e: self._recall(1))
        self.question.bind("<Control-l>", lambda e: (self.question_var.set(""), "break")[1])

    # -- actions --------------------------------------------------------------------------

    def choose_image(self) -> None:
        from tkinter import filedialog

        if self.dialog_open:
            return
        current = self.controller.image_path
        self.dialog_open = True
        self.dialog = {"kind": "open", "title": "Open image"}
        self.write_state()
        try:
            path = filedialog.askopenfilename(
                parent=self.root, title="Open image",
                initialdir=str(current.parent) if current else os.getcwd(),
                filetypes=[("Images", IMAGE_PATTERNS + " " + IMAGE_PATTERNS.upper()), ("All files", "*")],
            )
        finally:
            self.dialog_open = False
            self.dialog = None
        self.question.focus_set()
        if path:
            self.open_image(path)
        else:
            self.write_state()
        self._show_pending_errors()

    def open_image(self, path: str | Path) -> None:
        try:
            image = self.controller.open_image(path)
        except ValueError as exc:
            self.error("Cannot open image", f"{Path(path).name} is not an image this app can open.", str(exc))
            return
        self.preview_base = image.copy()
        self.preview_base.thumbnail((2048, 2048))
        self.image_name.configure(text=f"{Path(path).name}   {image.width} × {image.height}")
        self._set_history_text([])
        self._note(f"New conversation about {Path(path).name}\n")
        self.render_preview()
        self.refresh()

    def ask(self, event=None):
        question = self.question_var.get()
        try:
            turn = self.controller.ask(question)
        except ValueError as exc:
            self.status.configure(text=str(exc)[:1].upper() + str(exc)[1:])
            if not question.strip():
                self.question.focus_set()
            return "break"
        self.asked.append(turn.question)
        self.recall = len(self.asked)
        self.question_var.set("")
        self._append(("Q: ", "q label"), (turn.question + "\n", "q"), ("A: ", "a label"))
        self.refresh()
        return "break"

    def stop(self) -> None:
        if self.controller.stop():
            self.refresh()

    def quit(self) -> None:
        self.controller.close()
        self.root.destroy()

    def show_shortcuts(self) -> None:
        from tkinter import messagebox

        text = "\n".join(f"{key}: {what}" for key, what in SHORTCUTS)
        messagebox.showinfo("Keyboard shortcuts", text, parent=self.root)

    def _recall(self, step: int):
        if not self.asked:
            return "break"
        self.recall = max(0, min(len(self.asked), self.recall + step))
        self.question_var.set(self.asked[self.recall] if self.recall < len(self.asked) else "")
        self.question.icursor("end")
        return "break"

    # -- errors ---------------------------------------------------------------------------

    def error(self, title: str, message: str, detail: str = "") -> None:
        """Show an error dialog: a short message, then the details (one dialog at a time)."""
        self.pending_errors.append((title, message, detail))
        self._show_pending_errors()

    def _show_pending_errors(self) -> None:
        from tkinter import messagebox

        while self.pending_errors and not self.dialog_open:
            title, message, detail = self.pending_errors.pop(0)
            self.dialog_open = True
            self.dialog = {"kind": "error", "title": title, "message": message, "detail": detail}
            self.dialogs.append(self.dialog)
            self.write_state()
            try:
                messagebox.showerror(title, message, detail=detail, parent=self.root)
            finally:
                self.dialog_open = False
                self.dialog = None
            self.write_state()
            self.question.focus_set()

    # -- rendering ------------------------------------------------------------------------

    def _poll(self) -> None:
        try:
            events = self.controller.poll()
            for event in events:
                self._render_event(event)
            if events:
                self.refresh()
            self._show_pending_errors()
        finally:
            self.root.after(self.POLL_MS, self._poll)

    def _render_event(self, event) -> None:
        if event.kind == "load_error":
            self.error("Model not available", "The model could not be loaded. Questions will try again.", event.text)
        elif event.kind == "piece":
            self._append((event.text, "a"))
        elif event.kind == "done":
            self._append(("\n", "a"))
        elif event.kind == "stopped":
            self._append(("  [stopped]\n", "note"))
        elif event.kind == "error":
            self._append((f"[error: {event.text}]\n", "error"))
            self.error("Cannot answer", "The question could not be answered.", event.text)

    def _append(self, *pieces: tuple[str, str]) -> None:
        self.history.configure(state="normal")
        for text, tags in pieces:
            self.history.insert("end", text, tags)
        self.history.configure(state="disabled")
        self.history.see("end")

    def _note(self, text: str) -> None:
        self._append((text, "note"))

    def _set_history_text(self, pieces) -> None:
        self.history.configure(state="normal")
        self.history.delete("1.0", "end")
        self.history.configure(state="disabled")
        if pieces:
            self._append(*pieces)

    def refresh(self) -> None:
        c = self.controller
        self.ask_button.state(["!disabled"] if c.can_ask else ["disabled"])
        self.stop_button.state(["!disabled"] if c.answering else ["disabled"])
        self.status.configure(text=c.status)
        if c.busy != self.was_busy:
            self.was_busy = c.busy
            if c.busy:
                self.progress.grid()
                self.progress.start(15)
                self.root.configure(cursor="watch")
                self.question.configure(cursor="xterm")
            else:
                self.progress.stop()
                self.progress.grid_remove()
                self.root.configure(cursor="")
        self.write_state()

    def _schedule_preview(self, event=None) -> None:
        if self.preview_job is not None:
            self.root.after_cancel(self.preview_job)
        self.preview_job = self.root.after(50, self.render_preview)

    def render_preview(self) -> None:
        from PIL import Image, ImageTk

        self.preview_job = None
        if self.preview_base is None:
            return
        area_w = max(self.preview_area.winfo_width() - 4, 16)
        area_h = max(self.preview_area.winfo_height() - 4, 16)
        w, h = self.preview_base.size
        scale = min(area_w / w, area_h / h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size == self.preview_size and self.photo is not None:
            return
        resample = Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC
        self.photo = ImageTk.PhotoImage(self.preview_base.resize(size, resample))
        self.preview_size = size
        self.preview.configure(image=self.photo, text="")
        self.write_state()

    def _on_root_configure(self, event) -> None:
        if event.widget is self.root:
            self.configured_at = time.time()
            self.write_state()

    # -- test hook ------------------------------------------------------------------------

    def write_state(self) -> None:
        if self.state_file is None:
            return
        root = self.root
        try:
            stop = self.stop_button
            state = self.controller.to_dict() | {
                "pid": os.getpid(),
                "time": time.time(),
                "window": {"width": root.winfo_width(), "height": root.winfo_height(),
                           "x": root.winfo_rootx(), "y": root.winfo_rooty()},
                "configured_at": self.configured_at,
                "preview": list(self.preview_size) if self.preview_size else None,
                "ask_enabled": self.controller.can_ask,
                "stop_enabled": self.controller.answering,
                "stop_button": {"x": stop.winfo_rootx() + stop.winfo_width() // 2,
                                "y": stop.winfo_rooty() + stop.winfo_height() // 2},
                "history_text": self.history.get("1.0", "end-1c"),
                "dialog": self.dialog,
                "dialogs": self.dialogs,
            }
        except self.tk.TclError:  # the window is being destroyed
            return
        write_state_file(self.state_file, state)

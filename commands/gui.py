"""Ask questions about images in a small Tkinter window, or review pre-annotated answers.

examples:
  python gui.py --checkpoint CHECKPOINT_OR_RUN_DIR [IMAGE]
  python gui.py --server http://localhost:8000 [--model NAME] [IMAGE]
  python gui.py --gguf EXPORT_DIR [IMAGE]          (a GGUF export, through llama.cpp)
  python gui.py --review answers.jsonl [--reviewer NAME] [--flagged-only]

Open an image (Ctrl+O), type a question, press Enter and watch the answer stream in; Esc stops
it. The history pane keeps the questions and answers about the current image. The model loads
and generates on a worker thread (ui/controller.py holds all of the logic, ui/window.py the
widgets). Generation settings come from the config's generation section (--config, default
./config.yaml when it exists).

Review mode (--review FILE, the output of infer.py --images ... --output FILE) needs no model:
one answer at a time, least confident first. Enter accepts, e (or just typing) edits and Enter
saves the correction, Delete rejects, s skips, u undoes, Left/Right move, f shows flagged items
only. Every decision is appended to FILE's review log (answers.review.jsonl beside it) and synced
to disk before the next item shows; reopening resumes at the first undecided item.
process_image.py reads the reviewed answers back as training data (source type "reviewed").

Test hooks (used by tests/test_gui.py, harmless otherwise): --state-file PATH writes the app's
state as JSON after every change, --test-token-delay SECONDS slows generation down.

exit status: 0 closed; 2 bad arguments, an unusable answers file or review log, a directory
where the review log cannot be written, or no display (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser_from_doc(__doc__)
    parser.add_argument("image", nargs="?", help="image to open at start")
    cli.add_model_arguments(parser, server_timeout=60.0)
    review = parser.add_argument_group("review mode")
    review.add_argument("--review", metavar="ANSWERS.jsonl", help="review the answers infer.py wrote (no model needed)")
    review.add_argument("--reviewer", metavar="NAME", help="name recorded with each decision (default: your login name)")
    review.add_argument("--flagged-only", action="store_true", help="start with the flagged answers only (f toggles)")
    cli.add_config_arguments(parser, default=None)  # generation.* settings (max_new_tokens, sampling)
    hooks = parser.add_argument_group("test hooks")
    hooks.add_argument("--state-file", type=Path, metavar="PATH", help="write the app's state as JSON here after every change")
    hooks.add_argument("--test-token-delay", type=cli.finite_float, default=0.0, metavar="SECONDS",
                       help="wait this long before every generated token (to test responsiveness)")
    return parser


def make_backend(args, config):
    """The backend for --checkpoint, --gguf or --server; bad settings exit with one line (status 2)."""
    from ui.controller import BackendError, PredictorBackend, ServerBackend

    settings = cli.sampling_settings(config)
    if args.gguf:
        cli.check_model_arguments(args)
    source = cli.model_source(args)
    if source.server:
        try:
            return ServerBackend(source, settings)
        except BackendError as exc:
            cli.fail(str(exc))
    return PredictorBackend(source, settings)


def check_arguments(args) -> None:
    if args.review:
        if args.checkpoint or args.server or args.gguf or args.image:
            cli.fail("--review needs no model and no image: it shows the answers file's own")
    elif not (args.checkpoint or args.server or args.gguf):
        cli.fail("give --checkpoint DIR, --gguf DIR or --server URL (or --review ANSWERS.jsonl)")
    elif args.reviewer or args.flagged_only:
        cli.fail("--reviewer and --flagged-only are for --review")
    if args.test_token_delay < 0:
        cli.fail("--test-token-delay must be >= 0")


def open_window(tk):
    try:
        return tk.Tk(className="VQA")
    except tk.TclError as exc:
        cli.fail(f"cannot open a window: {exc} (is DISPLAY set?)")


def review(args, tk) -> None:
    """Review mode: the answers file and its log are checked (and the log opened for writing)
    before the window opens, so nothing is decided that could not be saved."""
    import getpass

    from dataset.review import open_review
    from ui.review import ReviewSession
    from ui.review_window import ReviewApp

    reviewer = args.reviewer if args.reviewer is not None else getpass.getuser()
    if not reviewer.strip():
        cli.fail("--reviewer is empty")
    answers, state, log, notes = open_review(args.review)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    root = open_window(tk)
    session = ReviewSession(answers, state, log, reviewer.strip(), flagged_only=args.flagged_only)
    ReviewApp(root, session, args.state_file, notes)
    try:
        with cli.on_interrupt(f"every decision made is in {log.path}; run the same command to go on"):
            root.mainloop()
    finally:
        log.close()


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    config = cli.config_from_args(args)
    try:
        import tkinter as tk
    except ImportError as exc:
        cli.fail(f"this Python has no Tkinter ({exc}); install python3-tk")
    if args.review:
        return review(args, tk)
    backend = make_backend(args, config)  # settings errors exit before a window opens
    root = open_window(tk)
    from ui.controller import Controller
    from ui.window import App

    controller = Controller(backend, token_delay=args.test_token_delay)
    app = App(root, controller, args.state_file)
    controller.load_backend()
    app.refresh()
    if args.image:
        root.after_idle(app.open_image, args.image)
    try:
        with cli.on_interrupt("the window was closed"):
            root.mainloop()
    finally:
        controller.close()


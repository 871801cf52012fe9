#!/usr/bin/env python
"""Ask questions about images in a small Tkinter window.

examples:
  python gui.py --checkpoint CHECKPOINT_OR_RUN_DIR [IMAGE]
  python gui.py --server http://localhost:8000 [--model NAME] [IMAGE]

Open an image (Ctrl+O), type a question, press Enter and watch the answer stream in; Esc stops
it. The history pane keeps the questions and answers about the current image. The model loads
and generates on a worker thread (ui/controller.py holds all of the logic, ui/window.py the
widgets). Generation settings come from the config's generation section (--config, default
./config.yaml when it exists).

Test hooks (used by tests/test_gui.py, harmless otherwise): --state-file PATH writes the app's
state as JSON after every change, --test-token-delay SECONDS slows generation down.

exit status: 0 closed; 2 bad arguments or no display (one line on stderr).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser_from_doc(__doc__)
    parser.add_argument("image", nargs="?", help="image to open at start")
    cli.add_model_arguments(parser, server_timeout=60.0, required=True)
    cli.add_config_arguments(parser, default=None)  # generation.* settings (max_new_tokens, sampling)
    hooks = parser.add_argument_group("test hooks")
    hooks.add_argument("--state-file", type=Path, metavar="PATH", help="write the app's state as JSON here after every change")
    hooks.add_argument("--test-token-delay", type=cli.finite_float, default=0.0, metavar="SECONDS",
                       help="wait this long before every generated token (to test responsiveness)")
    return parser


def make_backend(args, config):
    """The backend for --checkpoint or --server; bad settings exit with one line (status 2)."""
    from ui.controller import BackendError, LocalBackend, ServerBackend

    settings = cli.sampling_settings(config)
    if args.server:
        try:
            return ServerBackend(args.server, args.model, settings, timeout=args.timeout, api_key=args.api_key)
        except BackendError as exc:
            cli.fail(str(exc))
    return LocalBackend(args.checkpoint, settings, device=cli.torch_device(args.device), dtype=args.dtype,
                        quantize=cli.quantize_override(args))


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = cli.config_from_args(args)
    if args.test_token_delay < 0:
        cli.fail("--test-token-delay must be >= 0")
    try:
        import tkinter as tk
    except ImportError as exc:
        cli.fail(f"this Python has no Tkinter ({exc}); install python3-tk")
    backend = make_backend(args, config)  # settings errors exit before a window opens
    try:
        root = tk.Tk(className="VQA")
    except tk.TclError as exc:
        cli.fail(f"cannot open a window: {exc} (is DISPLAY set?)")
    from ui.controller import Controller
    from ui.window import App

    controller = Controller(backend, token_delay=args.test_token_delay)
    app = App(root, controller, args.state_file)
    controller.load_backend()
    app.refresh()
    if args.image:
        root.after_idle(app.open_image, args.image)
    try:
        root.mainloop()
    except KeyboardInterrupt:
        controller.close()


if __name__ == "__main__":
    cli.run_cli(main)

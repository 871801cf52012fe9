"""What the command-line scripts share: argument groups, loading a model or a server, one error style.

Every script runs a thin ``main(argv)`` (``commands/``) over the library packages; this module holds the pieces
they have in common so that ``--checkpoint``, ``--server``, ``--config``/``--set`` and the
generation flags mean the same everywhere, and every mistake ends the same way: one line
``error: MESSAGE`` on stderr and exit status 2 (:func:`run_cli`), never a traceback.

Nothing here imports torch at module level: a script checks its arguments and inputs first and
loads the model afterwards, so a typo is reported at once.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import sys
import typing
from pathlib import Path

from config import DTYPE_NAMES, Config, ConfigError, load_config
from errors import UserError, one_line

# On CPUs with AVX512-BF16, importing bitsandbytes (peft and transformers import it when it is
# installed) tries to fetch an optional kernel from the model hub and logs a warning when it
# cannot; bitsandbytes then uses its own CPU kernel. Offline that warning is noise on every
# command's stderr, so it is silenced (errors still show).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

DEFAULT_CONFIG = "config.yaml"


# -- errors -------------------------------------------------------------------------------------


def fail(message: str) -> typing.NoReturn:
    """Exit a command-line script with status 2 and one clear line on stderr, no traceback."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


def entry_point(main: typing.Callable[[list[str] | None], int | None]):
    """Decorate a script's ``main(argv)``: a :class:`errors.UserError` raised anywhere below it
    becomes :func:`fail` (one line, exit status 2), also when a test calls ``main`` in-process."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int | None:
        try:
            return main(argv)
        except UserError as exc:
            fail(str(exc))

    return wrapper


@contextlib.contextmanager
def on_interrupt(message: str) -> typing.Iterator[None]:
    """Ctrl-C inside the block ends the script with ``message`` (what was kept, how to resume) as
    one line on stderr and exit status 130 (what a shell reports for SIGINT), not a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"\ninterrupted: {message}", file=sys.stderr)
        raise SystemExit(130) from None


def _close_progress_bars() -> None:
    """Close the progress bars still open (the Trainer's), so that they are not redrawn at exit
    below the line that says what happened."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        bar.close()


def run_cli(main: typing.Callable[[], int | None]) -> typing.NoReturn:
    """Run a script's ``main`` from ``if __name__ == "__main__"``: its return value is the exit
    status; Ctrl-C exits 130 with one line instead of a traceback (what a shell reports for SIGINT)."""
    try:
        status = main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


# -- parsers ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with the scripts' error style: one line, exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def parser_from_doc(doc: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` is the script's manual page: the docstring's first paragraph on
    top, the options, then the rest of the docstring (examples, files, exit status)."""
    head, _, rest = doc.strip().partition("\n\n")
    return _Parser(description=head, epilog=rest or None, formatter_class=argparse.RawDescriptionHelpFormatter)


def finite_float(text: str) -> float:
    """An argparse type: a float that is not nan or infinite (which would silently break sampling)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def shard_argument(text: str) -> tuple[int, int]:
    """An argparse type: ``I/N``, shard I (0 to N-1) of N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N, e.g. 0/4 (shard I of N, I from 0 to N-1)") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: I/N needs N >= 1 and 0 <= I < N")
    return index, count


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (a size, a memory budget)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``--limit -1`` is an error, not "no records")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = DEFAULT_CONFIG) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``. With ``default=None`` the config is
    ``./config.yaml`` when it exists, else the built-in defaults (see :func:`config_from_args`)."""
    parser.add_argument(
        "--config", default=default,
        help=("YAML configuration file (default: %(default)s)" if default else
              f"YAML configuration file (default: ./{DEFAULT_CONFIG} when it exists, else built-in defaults)"),
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.learning_rate=1e-4 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The config named by ``--config`` (else ``./config.yaml`` when present, else the defaults),
    with the ``--set`` overrides; a bad config exits with status 2 and one line."""
    if args.config is None and Path(DEFAULT_CONFIG).is_file():
        args.config = DEFAULT_CONFIG
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as exc:
        fail(str(exc))


def add_model_arguments(parser: argparse.ArgumentParser, server: bool = True, server_timeout: float = 600.0,
                        required: bool = False) -> None:
    """``--checkpoint`` (and, with ``server``, ``--server``/``--model``/``--api-key``/``--timeout``),
    ``--device``, ``--dtype``. ``required``: argparse itself insists on one of checkpoint/server."""
    group = parser.add_argument_group("model")
    source = group.add_mutually_exclusive_group(required=required) if server else group
    source.add_argument("--checkpoint", metavar="DIR",
                        help="training checkpoint (checkpoint-N), run directory (its newest complete "
                             "checkpoint) or export.py output directory")
    if server:
        source.add_argument("--gguf", metavar="DIR_OR_FILE",
                            help="answer with an export.py --format gguf export through llama.cpp "
                                 "(llama-cpp-python; DIR or one of its model-<type>.gguf files)")
        source.add_argument("--server", metavar="URL",
                            help="ask an OpenAI-compatible server (vLLM, transformers serve: POST URL/v1/chat/"
                                 "completions) instead of a checkpoint")
        group.add_argument("--model", metavar="NAME",
                           help="--server: model name (default: the first one GET /v1/models lists)")
        group.add_argument("--api-key", metavar="KEY", help="--server: bearer token (default: $OPENAI_API_KEY)")
        group.add_argument("--timeout", type=finite_float, default=server_timeout, metavar="SECONDS",
                           help="--server: seconds to wait for a reply (default: %(default)s)")
    group.add_argument("--device", help="--checkpoint: cuda, cuda:1, cpu, ... (default: cuda when available, else cpu)")
    group.add_argument("--dtype", choices=DTYPE_NAMES,
                       help="--checkpoint: weights dtype (default: as the checkpoint was trained/exported)")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--set`` (the config's ``generation`` section) and flags that override it."""
    add_config_arguments(parser, default=None)
    group = parser.add_argument_group("generation (override the config's generation section)")
    group.add_argument("--max-new-tokens", type=int, help="generation.max_new_tokens")
    group.add_argument("--temperature", type=finite_float, help="generation.temperature (sampling only)")
    group.add_argument("--top-p", type=finite_float, help="generation.top_p (sampling only)")
    group.add_argument("--top-k", type=int, help="generation.top_k (sampling only; 0: off)")
    sampling = group.add_mutually_exclusive_group()
    sampling.add_argument("--sample", dest="do_sample", action="store_true", default=None,
                          help="sample instead of greedy decoding")
    sampling.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding")
    group.add_argument("--seed", type=int, help="generation.seed (sampling only)")
    group.add_argument("--batch-size", type=int, help="generation.batch_size: questions per batched generation")


def generation_config(args: argparse.Namespace) -> Config:
    """The config (see :func:`config_from_args`) with ``--batch-size`` applied and checked."""
    config = config_from_args(args)
    if getattr(args, "batch_size", None) is not None:
        config.generation.batch_size = args.batch_size
    if config.generation.batch_size < 1:
        fail(f"generation.batch_size must be at least 1, got {config.generation.batch_size}")
    return config


def sampling_settings(config: Config, args: argparse.Namespace | None = None):
    """``SamplingSettings`` from the config's generation section with the flags (if any) on top."""
    from inference.generation import SamplingSettings

    flags = {}
    if args is not None:
        flags = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                     top_k=args.top_k, do_sample=args.do_sample, seed=args.seed)
    try:
        settings = SamplingSettings.from_config(config.generation, **flags)
    except ValueError as exc:
        fail(f"generation settings: {exc}")
    if not settings.do_sample and any(flags.get(k) is not None for k in ("temperature", "top_p", "top_k")):
        print("note: --temperature/--top-p/--top-k only apply with --sample; decoding greedily", file=sys.stderr)
    return settings


# -- the model ----------------------------------------------------------------------------------


def check_model_arguments(args: argparse.Namespace) -> None:
    """Exactly one of ``--checkpoint``/``--gguf``/``--server``, a server URL that can be one, a GGUF
    export with its files, and a checkpoint path that resolves to a complete checkpoint (checked
    before torch is imported)."""
    from model.checkpoints import describe_choice, resolve_checkpoint

    given = [flag for flag in ("checkpoint", "gguf", "server") if getattr(args, flag, None)]
    if len(given) > 1:
        fail(f"give one of --{given[0]} and --{given[1]}, not both")
    if getattr(args, "server", None):
        if not args.server.startswith(("http://", "https://")):
            fail(f"{args.server}: the server URL must start with http:// or https://")
    elif getattr(args, "gguf", None):
        from inference.gguf import export_files, require_llama_cpp

        export_files(args.gguf)
        require_llama_cpp()
    elif not args.checkpoint:
        fail("--checkpoint DIR is required" + (" (or --gguf DIR, --server URL)" if hasattr(args, "server") else ""))
    else:
        note = describe_choice(args.checkpoint, resolve_checkpoint(args.checkpoint, allow_export=True))
        if note:
            print(f"note: {note}", file=sys.stderr)


def torch_device(name: str | None) -> str:
    """``name``, or cuda when available else cpu; a device this machine lacks is a one-line error."""
    import torch

    device = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        fail(f"--device {device}: not usable here ({one_line(exc)})")
    return device


def model_source(args: argparse.Namespace):
    """The :class:`inference.source.ModelSource` the model arguments name (``--checkpoint``,
    ``--gguf`` or ``--server``/``--model``/``--api-key``/``--timeout``, ``--device``, ``--dtype``,
    ``--set model.quantize``)."""
    from inference.source import ModelSource

    if getattr(args, "server", None):
        return ModelSource(server=args.server, model=args.model, api_key=args.api_key, timeout=args.timeout)
    if getattr(args, "gguf", None):
        return ModelSource(gguf=args.gguf)
    return ModelSource(checkpoint=args.checkpoint, device=torch_device(args.device), dtype=args.dtype,
                       quantize=quantize_override(args))


def load_predictor(args: argparse.Namespace, concurrency: int = 8, confidence: bool = False):
    """The predictor of the model the arguments name (:meth:`inference.source.ModelSource.open`)."""
    return model_source(args).open(concurrency=concurrency, confidence=confidence)


def model_identity(args: argparse.Namespace) -> dict:
    """Which model answers, for the ``produced_by`` record of an answers file
    (:meth:`inference.source.ModelSource.identity`), known before the model loads."""
    return model_source(args).identity()


def text_argument(value: str, flag: str) -> str:
    """``value`` unless it holds bytes that are not UTF-8 (Python keeps them as lone surrogates,
    which no tokenizer accepts): then a one-line error naming the flag and the first bad byte."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"character {bad!r}"
        fail(f"{flag}: not valid UTF-8 text ({byte} at position {exc.start}); check the terminal's encoding")
    return value


def quantize_override(args: argparse.Namespace) -> str | None:
    """A checkpoint's own ``quantize`` setting decides how its language model loads; ``--set
    model.quantize=none`` (or ``nf4``/``fp4``) on the command line overrides it, e.g. a QLoRA
    checkpoint on its full-precision base. None when not given."""
    given = [o.split("=", 1)[1].strip() for o in getattr(args, "overrides", None) or []
             if o.split("=", 1)[0].strip() == "model.quantize" and "=" in o]
    return given[-1] if given else None


def check_image(path: str | Path) -> None:
    """Fail (exit 2) unless ``path`` is a readable image; PIL only, so it runs before torch loads."""
    from PIL import Image

    p = Path(path)
    if not p.exists():
        fail(f"{path}: no such image file")
    if p.is_dir():
        fail(f"{path}: is a directory, not an image (use --images DIR for a folder)")
    try:
        with Image.open(p) as image:
            image.load()
    except Exception as exc:  # PIL raises many types for damaged files
        fail(f"{path}: not a readable image ({one_line(exc) or type(exc).__name__})")

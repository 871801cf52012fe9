"""Export formats: one module per format, found by name (``export.py --format NAME``).

Each format module has ``export(checkpoint, output, overwrite, **options) -> Path`` (``checkpoint``:
a path, or an ``exporters.common.Checkpoint`` already opened, so it is resolved, read and loaded
once), ``OPTIONS`` (its own command-line options, which ``export.py`` adds and refuses for other
formats) and ``summary(output, **options)`` (what ``export.py`` prints), and builds on
``exporters.common`` (the merged LM weights, output checks, atomic writing). A new format is one
module plus one line below.
"""

from importlib import import_module

FORMATS = {
    "llava": "exporters.llava",  # transformers LlavaForConditionalGeneration: transformers, vLLM
    "gguf": "exporters.gguf",  # llama.cpp: language model GGUF + mmproj GGUF
}


def exporter(name: str):
    """The module that writes format ``name``."""
    return import_module(FORMATS[name])

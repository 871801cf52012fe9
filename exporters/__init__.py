"""Export formats: one module per format, found by name (``export.py --format NAME``).

Each format module has ``export(checkpoint, output, dtype, overwrite) -> Path`` and builds on
``exporters.common`` (loading once, the merged LM weights, output checks). A new format (GGUF) is
one module plus one line below.
"""

from importlib import import_module

FORMATS = {
    "llava": "exporters.llava",  # transformers LlavaForConditionalGeneration: transformers, vLLM
    "gguf": "exporters.gguf",  # llama.cpp: language model GGUF + mmproj GGUF
}


def exporter(name: str):
    """The module that writes format ``name``."""
    return import_module(FORMATS[name])

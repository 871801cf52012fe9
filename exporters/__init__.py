"""Export formats: one module per format, found by name (``export.py --format NAME``).

Each format module has ``export(checkpoint, output, overwrite, **options) -> Path`` (``checkpoint``:
a path, or an ``exporters.common.Checkpoint`` already opened, so it is resolved, read and loaded
once) and ``summary(output, **options)`` (what ``export.py`` prints); its own command-line options
are declared with it below (``export.py`` adds them and refuses them with another format). It builds on
``exporters.common`` (the merged LM weights, output checks, atomic writing). A new format is one
module plus one line below.
"""

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Option:
    """A command-line option of one export format (``export.py`` adds it; another format's
    options given with this format are refused)."""

    flag: str
    default: object
    help: str
    choices: tuple[str, ...] | None = None
    type: type = str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Format:
    """Where a format's module is, and the options its ``export`` takes (declared here, without
    importing the module: ``export.py`` builds its command line before torch loads)."""

    module: str
    options: tuple[Option, ...] = ()


FORMATS = {
    # transformers LlavaForConditionalGeneration: transformers, vLLM
    "llava": Format("exporters.llava", (
        Option("--dtype", "bfloat16", "weight dtype of the export", ("bfloat16", "float32")),
        Option("--quantize", "none", "awq or gptq: the language model in 4 bits (gptqmodel; exporters/quantize.py)"),
        Option("--group-size", 128, "4-bit quantization group (inputs per scale); must divide the LM's layer inputs",
               type=int),
        Option("--calibration", None, "merged qa.json to calibrate --quantize on; None: the training data the checkpoint's run.json names"),
        Option("--calibration-samples", 128, "records of --calibration used", type=int),
    )),
    # llama.cpp: language model GGUF + mmproj GGUF
    "gguf": Format("exporters.gguf", (Option("--quantize", "f16", "language-model type: f16 (default), f32, q8_0 "
                                             "or q4_k_m"),)),
}


def exporter(name: str):
    """The module that writes format ``name``."""
    return import_module(FORMATS[name].module)

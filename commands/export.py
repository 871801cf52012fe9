"""Export a trained checkpoint for serving (transformers LLaVA: transformers, vLLM; GGUF: llama.cpp).

examples:
  python export.py --checkpoint checkpoints/run --output exports/vqa
  python export.py --checkpoint checkpoints/run/checkpoint-500 --output exports/vqa --dtype float32 --overwrite
  vllm serve exports/vqa --chat-template-content-format openai
  python export.py --checkpoint checkpoints/run --output exports/vqa-gguf --format gguf --quantize q8_0

--format llava (the default) writes a LlavaForConditionalGeneration directory: the LoRA adapter
merged into the Qwen weights, a LlavaConfig that computes exactly what the checkpoint computes,
safetensors in the llava-hf layout, a LlavaProcessor (SigLIP image processor, tokenizer, ChatML
chat template with one image placeholder per image part), generation_config.json and a model card
README.md with the serving commands. See docs/export.md and exporters/llava.py.

--format gguf writes model-<type>.gguf (the language model, LoRA merged, as a llama.cpp qwen2/qwen3
GGUF with tokenizer and chat template; --quantize f16 (default), f32, q8_0 or q4_k_m) and
mmproj-f16.gguf (the SigLIP tower + projector; mmproj-f32.gguf with --quantize f32), the chat
template and a README.md with llama-mtmd-cli, llama-server and llama-cpp-python commands. It needs
the gguf package; q4_k_m also llama-cpp-python, whose quantizer makes it from an f32 file
(requirements-gguf.txt, make gguf). infer.py/evaluate.py/gui.py --gguf DIR answer with the export.
See docs/export.md and exporters/gguf.py.

Everything is written to a temporary sibling directory and renamed into place at the end, so a
crash never leaves a half export.

exit status: 0 exported; 2 refused (unsupported vision backend, a non-empty output directory
without --overwrite, an incomplete checkpoint, an unknown --quantize type, gguf or llama-cpp-python not installed),
with one line on stderr.
"""

from __future__ import annotations

import sys

import cli
from atomic import check_writable
from exporters import FORMATS, exporter
from model.checkpoints import describe_choice


def qlora_note(config) -> str | None:
    """What happens to a QLoRA checkpoint's 4-bit base, said once."""
    quantize = getattr(config, "quantize", "none")
    if quantize in (None, "none"):
        return None
    return (f"a QLoRA checkpoint ({quantize}): its adapter is merged into the full-precision base model, "
            "the usual QLoRA practice; the export is not quantized")


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser_from_doc(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run directory (newest checkpoint-N)")
    parser.add_argument("--output", required=True, help="the export directory (must not exist or be empty)")
    parser.add_argument("--format", default="llava", choices=sorted(FORMATS), help="export format (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    declared = {}  # flag -> (format, option): each format declares its own options
    for name in sorted(FORMATS):
        group = parser.add_argument_group(f"--format {name}")
        for option in FORMATS[name].options:
            declared[option.flag] = (name, option)
            group.add_argument(option.flag, default=None, choices=option.choices,
                               help=f"{option.help} (default: {option.default})")
    args = parser.parse_args(argv)
    options = {}
    for flag, (name, option) in declared.items():
        value = getattr(args, option.dest)
        if name == args.format:
            options[option.dest] = option.default if value is None else value
        elif value is not None:
            cli.fail(f"{flag} applies to --format {name}, not {args.format} (see {parser.prog} --help)")
    with cli.on_interrupt(f"nothing was exported; {args.output} is as it was"):
        check_writable(args.output)
        from exporters.common import Checkpoint  # torch from here on

        source = Checkpoint(args.checkpoint)  # resolved, its config read and its model loaded once
        for note in (describe_choice(args.checkpoint, source.path), qlora_note(source.config)):
            if note:
                print(f"note: {note}", file=sys.stderr)
        module = exporter(args.format)
        out = module.export(source, args.output, args.overwrite, **options)
    first, *rest = module.summary(out, **options)
    print(f"exported {args.checkpoint} -> {out} ({first})")
    for line in rest:
        print(line)
    return 0

"""Export a trained checkpoint for serving (transformers LLaVA: transformers, vLLM; GGUF: llama.cpp).

examples:
  python export.py --checkpoint checkpoints/run --output exports/vqa
  python export.py --checkpoint checkpoints/run/checkpoint-500 --output exports/vqa --dtype float32 --overwrite
  vllm serve exports/vqa --chat-template-content-format openai
  python export.py --checkpoint checkpoints/run --output exports/vqa-gguf --format gguf --quantize q8_0
  python export.py --checkpoint checkpoints/run --output exports/vqa-awq --quantize awq --calibration data/merged/qa.json

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

--format llava --quantize awq|gptq also quantizes the language model to 4 bits (group --group-size,
default 128) with gptqmodel, calibrated on merged data through the LLaVA splice (--calibration
qa.json, default the checkpoint's training data); vision tower, projector and lm_head stay 16-bit.
vLLM and transformers (with gptqmodel + optimum) load it. See exporters/quantize.py.

exit status: 0 exported; 2 refused (unsupported vision backend, a non-empty output directory
without --overwrite, an incomplete checkpoint, an unknown --quantize type, a --group-size that does
not divide the model, gguf, llama-cpp-python or gptqmodel not installed), with one line on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cli
from atomic import check_writable
from errors import UserError
from exporters import FORMATS, exporter
from model.checkpoints import describe_choice


def qlora_note(config) -> str | None:
    """What happens to a QLoRA checkpoint's 4-bit base, said once."""
    quantize = getattr(config, "quantize", "none")
    if quantize in (None, "none"):
        return None
    return (f"a QLoRA checkpoint ({quantize}): its adapter is merged into the full-precision base model, "
            "the usual QLoRA practice; the export is not quantized")


def calibration_records(checkpoint, given: str | None) -> list:
    """(image, question, answer) of each record of the merged data to calibrate a 4-bit export on:
    ``--calibration``, else the training data the checkpoint's run record names."""
    from dataset.records import MergedDataError, first_turn_answer, first_turn_question, image_path, load_merged
    from exporters.quantize import calibration_file

    qa_file = calibration_file(checkpoint, given and Path(given))
    try:
        records, table = load_merged(qa_file)
    except MergedDataError as exc:
        raise UserError(f"--calibration: {exc}") from None
    return [(image_path(r, table), first_turn_question(r), first_turn_answer(r)) for r in records
            if isinstance(r, dict) and image_path(r, table) and first_turn_question(r)]


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser_from_doc(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run directory (newest checkpoint-N)")
    parser.add_argument("--output", required=True, help="the export directory (must not exist or be empty)")
    parser.add_argument("--format", default="llava", choices=sorted(FORMATS), help="export format (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    declared: dict[str, dict] = {}  # flag -> {format: option}: each format declares its own options
    for name in sorted(FORMATS):
        for option in FORMATS[name].options:
            declared.setdefault(option.flag, {})[name] = option
    group = parser.add_argument_group("format options (each applies to the formats it names)")
    for flag, by_format in declared.items():  # a flag two formats share (--quantize) is added once
        first = next(iter(by_format.values()))
        group.add_argument(flag, default=None, choices=first.choices if len(by_format) == 1 else None, type=first.type,
                           help="; ".join(f"--format {n}: {o.help} (default: {o.default})" for n, o in by_format.items()))
    args = parser.parse_args(argv)
    options = {}
    for flag, by_format in declared.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if args.format in by_format:
            option = by_format[args.format]
            options[option.dest] = option.default if value is None else value
        elif value is not None:
            cli.fail(f"{flag} applies to --format {' or '.join(by_format)}, not {args.format} (see {parser.prog} --help)")
    with cli.on_interrupt(f"nothing was exported; {args.output} is as it was"):
        check_writable(args.output)
        from exporters.common import Checkpoint  # torch from here on

        source = Checkpoint(args.checkpoint)  # resolved, its config read and its model loaded once
        for note in (describe_choice(args.checkpoint, source.path), qlora_note(source.config)):
            if note:
                print(f"note: {note}", file=sys.stderr)
        from exporters.quantize import METHODS as QUANTIZE_METHODS

        if args.format == "llava" and options["quantize"] in QUANTIZE_METHODS:
            options["calibration"] = calibration_records(source.path, options["calibration"])
        module = exporter(args.format)
        out = module.export(source, args.output, args.overwrite, **options)
    first, *rest = module.summary(out, **options)
    print(f"exported {args.checkpoint} -> {out} ({first})")
    for line in rest:
        print(line)
    return 0

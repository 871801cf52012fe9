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


def qlora_note(checkpoint) -> str | None:
    """What happens to a QLoRA checkpoint's 4-bit base, said once."""
    import json

    try:
        quantize = json.loads((checkpoint / "config.json").read_text(encoding="utf-8")).get("quantize", "none")
    except (OSError, ValueError):
        return None
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
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weight dtype of the export (llava)")
    parser.add_argument("--quantize", default=None, help="gguf: language-model type f16 (default), f32, q8_0 or q4_k_m")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    args = parser.parse_args(argv)
    if args.quantize is not None and args.format != "gguf":
        cli.fail(f"--quantize applies to --format gguf, not {args.format} (see {parser.prog} --help)")
    options = {"quantize": args.quantize or "f16"} if args.format == "gguf" else {}
    with cli.on_interrupt(f"nothing was exported; {args.output} is as it was"):
        check_writable(args.output)
        from exporters.common import resolve  # torch from here on

        resolved = resolve(args.checkpoint)
        for note in (describe_choice(args.checkpoint, resolved), qlora_note(resolved)):
            if note:
                print(f"note: {note}", file=sys.stderr)
        out = exporter(args.format).export(args.checkpoint, args.output, args.dtype, args.overwrite, **options)
    if args.format == "gguf":
        print(f"exported {args.checkpoint} -> {out} (gguf, {options['quantize']})")
        print(f"run it with llama.cpp: see {out.resolve() / 'README.md'}")
        return 0
    print(f"exported {args.checkpoint} -> {out} ({args.format}, {args.dtype})")
    print(f"serve it with: vllm serve {out.resolve()} --chat-template-content-format openai")
    return 0


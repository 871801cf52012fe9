"""Merge raw VQA data sources into one data set: an image table and conversation records.

examples:
  python process_image.py --config config.yaml
  python process_image.py --config config.yaml --set data.seed=1 --set data.output_dir=data/merged_seed1

config keys read:
  data.sources           the raw sources, in order: [{type, annotations, image_dir, name}], type one of
                         ai_challenger (captions), llava (LLaVA-format JSON such as LLaVA-Instruct
                         complex_reasoning_77k.json / detail_23k.json / mix665k), swift_jsonl
                         (ms-swift JSONL), reviewed (an infer.py answers file and the review log
                         gui.py --review wrote beside it: accepted and edited answers are kept);
                         name (default: the type) prefixes record ids
  data.output_dir        where the merged files go
  data.seed              the RNG that picks AI Challenger captions and question templates
  data.question_templates  AI Challenger questions (each holds the image placeholder once)
  data.on_error          skip (count and skip bad records) or stop (first bad record is an error)
  data.check_images      check that every record's image file exists
  model.image_token      the placeholder <image> is replaced with

files written into data.output_dir (only after everything succeeded, each atomically, so a failed
run leaves the previous output untouched):
  images.json            image id -> {path (relative to data.output_dir), source}
  qa.json                records: {id, image_id, source, messages: [{role, content}], ...}
  stats.json             per-source and total counts, skip reasons with their first examples
  preferences.jsonl      only when a reviewed source holds edited answers: preference pairs in the
                         ms-swift format {messages, rejected_response, images} (chosen: the reviewer's
                         answer, rejected: the model's), image paths as in images.json

The schema, the per-source rules and the skip reasons are in docs/data_format.md. A file that
cannot be read or parsed always stops the run: dropping a whole source would silently change the
data set.

exit status: 0 merged; 2 a file that cannot be read, a bad setting, a bad record with
data.on_error: stop, or no record accepted (one line on stderr).
"""

from __future__ import annotations

import sys

import cli
from atomic import check_writable
from dataset.merge import NothingAccepted, format_report, run
from dataset.writer import OUTPUT_FILES, PREFERENCES_FILE


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser_from_doc(__doc__)
    cli.add_config_arguments(parser)
    config = cli.config_from_args(parser.parse_args(argv))
    check_writable(config.data.output_dir)
    with cli.on_interrupt(f"nothing was written; {config.data.output_dir} keeps its previous files"):
        try:
            stats = run(config)
        except NothingAccepted as exc:
            print(format_report(exc.stats))
            raise
    print(format_report(stats))
    for s in stats.sources:
        if s.records == 0:
            print(f"warning: source {s.name} ({s.annotations}) contributed no records", file=sys.stderr)
    written = OUTPUT_FILES + ((PREFERENCES_FILE,) if stats.preference_pairs else ())
    print(f"wrote {', '.join(written)} to {config.data.output_dir}")
    return 0


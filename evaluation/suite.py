"""Results tables: a suite of benchmarks run by one command (``evaluate.py --suite``), written as
``table.md`` / ``table.png`` / ``table.json`` beside the numbers a reference model published.

``llava-1.5`` is the table researchers compare a new model against: the twelve columns of
LLaVA-1.5's results (Liu et al., "Improved Baselines with Visual Instruction Tuning", CVPR 2024,
arXiv:2310.03744), with LLaVA-1.5-7B's published numbers as the model zoo of haotian-liu/LLaVA
lists them for the released checkpoint (``docs/MODEL_ZOO.md`` at 19d8945e1ce3b2b56a7533bc02876fc355e18f65),
plus COCO and AI Challenger captioning, which that table does not have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from atomic import write_bytes, write_documents


@dataclass(frozen=True)
class Column:
    """One column of a results table: the benchmark that fills it, its title, the split and metric
    the reference reports, and the reference's number (None where it published none)."""

    benchmark: str
    title: str
    reported: str
    published: float | None


@dataclass(frozen=True)
class Suite:
    name: str
    reference: str  # whose published numbers stand beside ours
    source: str  # where they are published
    columns: tuple[Column, ...]


LLAVA_15 = Suite(
    "llava-1.5", "LLaVA-1.5-7B",
    "haotian-liu/LLaVA docs/MODEL_ZOO.md at 19d8945 (liuhaotian/llava-v1.5-7b, full fine-tune)",
    (
        Column("vqav2", "VQAv2", "test-dev accuracy (EvalAI server)", 78.5),
        Column("gqa", "GQA", "test-dev balanced accuracy", 62.0),
        Column("vizwiz", "VizWiz", "test-dev accuracy (EvalAI server)", 50.0),
        Column("scienceqa", "SciQA-IMG", "test questions with an image: accuracy", 66.8),
        Column("textvqa", "TextVQA", "val accuracy", 58.2),
        Column("pope", "POPE", "F1 averaged over random, popular, adversarial", 85.9),
        Column("mme", "MME", "perception score", 1510.7),
        Column("mmbench", "MMBench", "dev (English), circular accuracy", 64.3),
        Column("mmbench_cn", "MMBench-CN", "dev (Chinese), circular accuracy", 58.3),
        # The model zoo's SEED column also counts the video questions; ours asks the image ones only.
        Column("seedbench", "SEED", "image dimensions 1-9: accuracy (published: image and video)", 58.6),
        Column("llava_bench", "LLaVA-Bench (Wild)", "relative score (judge model)", 65.4),
        Column("mmvet", "MM-Vet", "total score (judge model)", 31.1),
        Column("coco_caption", "COCO Caption", "Karpathy test: CIDEr", None),
        Column("aic_caption", "AIC Caption", "AI Challenger validation: CIDEr", None),
    ),
)
SUITES = {s.name: s for s in (LLAVA_15,)}


@dataclass
class Row:
    """One column's result: our number (None if not scored), and what to say about it."""

    benchmark: str
    title: str
    reported: str
    published: float | None
    value: float | None = None
    split: str = ""
    note: str = ""  # why there is no number, a partial coverage, a server file to upload
    output: str = ""

    @classmethod
    def missing(cls, column: Column, reason: str, split: str = "") -> Row:
        return cls(column.benchmark, column.title, column.reported, column.published, split=split, note=reason)

    @classmethod
    def scored(cls, column: Column, split: str, bench, metrics: Mapping, output: Path) -> Row:
        value = bench.table_value(metrics)
        notes = []
        if not metrics.get("coverage", {}).get("complete", True):
            notes.append("partial: " + ", ".join(f"{k} {v}" for k, v in metrics["coverage"].items()
                                                  if k in ("questions", "answered", "skipped", "not_asked") and v))
        if "submission" in metrics:
            notes.append(f"no public answers: upload {metrics['submission']['file']} to {metrics['submission']['upload']}")
        return cls(column.benchmark, column.title, column.reported, column.published, value, split,
                   "; ".join(notes), str(output))


def cell(value: float | None) -> str:
    """A number as the reference table prints it (one decimal), or a dash."""
    return "—" if value is None else f"{value:.1f}"


def markdown(suite: Suite, rows: Sequence[Row], produced_by: Mapping, data_root: Path) -> str:
    model = produced_by.get("model", {})
    who = model.get("checkpoint") or model.get("gguf") or model.get("server") or "?"
    lines = [f"# {suite.name}: ours beside {suite.reference}", "",
             f"- **ours**: `{who}` ({model.get('fingerprint') or model.get('model') or ''})",
             f"- **{suite.reference}**: {suite.source}",
             f"- **benchmark files**: `{data_root}` (paths below are relative to it)", "",
             f"| benchmark | what is reported | split run | ours | {suite.reference} | notes |",
             "|---|---|---|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row.title} | {row.reported} | {row.split or '—'} | {cell(row.value)} | {cell(row.published)} "
                     f"| {row.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def picture(suite: Suite, rows: Sequence[Row]) -> bytes:
    """``table.png``: the same table as an image (for slides and READMEs)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [[row.title, row.split or "—", cell(row.value), cell(row.published),
              (row.note[:60] + "…") if len(row.note) > 60 else row.note] for row in rows]
    fig, ax = plt.subplots(figsize=(11, 0.42 * (len(rows) + 2)))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=["benchmark", "split", "ours", suite.reference, "notes"],
                     cellLoc="left", colWidths=[0.17, 0.14, 0.08, 0.12, 0.49], loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.3)
    ax.set_title(f"{suite.name}: ours vs {suite.reference}", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write_table(output: Path, suite: Suite, rows: Sequence[Row], produced_by: Mapping, data_root: Path) -> Path:
    """``table.md`` and ``table.json`` (together, atomically), then ``table.png``; returns table.md's path."""
    record = {"suite": suite.name, "reference": suite.reference, "source": suite.source,
              "produced_by": dict(produced_by), "data_root": str(data_root), "rows": [asdict(row) for row in rows]}
    write_documents(output, {"table.md": [markdown(suite, rows, produced_by, data_root)],
                             "table.json": [json.dumps(record, ensure_ascii=False, indent=1) + "\n"]})
    write_bytes(output / "table.png", picture(suite, rows))
    return output / "table.md"

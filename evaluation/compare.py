"""A/B between two evaluation runs over the same questions: is the difference real? (``evaluate.py --compare``)

Each run's output folder holds every scored question's credit: ``scores.jsonl`` for a benchmark
(``Benchmark.question_scores``: the official per-question accuracy, or right/wrong), the
``vqa_accuracy`` column of ``predictions.jsonl`` for held-out merged data. Two runs are compared
only over the same questions (same ids, same question text) of the same benchmark, as a paired
experiment:

- the difference B - A of the mean credit, in points, with a 95% interval from a paired bootstrap
  (percentile method, questions resampled with replacement; a fixed seed so a report can be
  regenerated exactly; :func:`mean_interval`);
- McNemar's exact test on the questions where the two runs differ: under "no difference" each
  such question is equally likely to favour A or B, so the count favouring B is Binomial(n, 1/2)
  (scipy's binomtest). With right/wrong credit this is McNemar's exact test; with VQA's fractional
  credit it is the same test on which run scored higher (the sign test);
- the same per question / answer type (or split, subtask), uncorrected for multiple comparisons;
- the questions whose credit changed, both ways, with their images, so that a person can look.

POPE's F1 and MME's acc + acc+ are not means of per-question credit; for them the comparison is of
per-question accuracy, and the report says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from atomic import write_bytes, write_documents
from dataset.produced_by import is_header
from errors import UserError
from evaluation.benchmarks.base import load_jsonl
from evaluation.benchmarks.runner import SCORES

RESAMPLES = 10_000
SEED = 0
SHOWN_FLIPS = 100  # per direction in compare.md; flips.jsonl holds all of them
NOT_MEANS = {"pope": "F1 and the yes ratio", "mme": "acc + acc+ per subtask"}


@dataclass
class Scored:
    """One question as a run answered and scored it."""

    question: str
    answer: str
    score: float
    group: dict
    image: str | None


@dataclass
class Run:
    path: Path
    kind: str  # the benchmark's name, or "merged data"
    model: str  # what produced the answers, in words
    items: dict[str, Scored]


@dataclass
class Difference:
    """B - A over a set of paired questions, in points (percent)."""

    count: int
    a: float
    b: float
    difference: float
    low: float
    high: float
    a_better: int  # questions where A's credit is higher
    b_better: int
    p_value: float

    @property
    def significant(self) -> bool:
        return significant(self.p_value, self.low, self.high)


def significant(p_value: float, low: float, high: float) -> bool:
    """Significant at 5%: the test rejects "no difference" and the 95% interval leaves out 0 (both
    must agree, so that a report never calls a difference real whose interval holds 0)."""
    return p_value < 0.05 and not low <= 0 <= high


def _model(metrics: Mapping) -> str:
    """What produced a run's answers, in words: the model (and its fingerprint) or the results file scored."""
    produced_by = metrics.get("produced_by")
    if metrics.get("predictions"):
        return f"results file {metrics['predictions']}"
    model = produced_by.get("model") if isinstance(produced_by, Mapping) else None
    if isinstance(model, Mapping):
        parts = [f"{k} {model[k]}" for k in ("checkpoint", "gguf", "server", "model") if model.get(k)]
        if model.get("fingerprint"):
            parts.append(f"fingerprint {str(model['fingerprint']).removeprefix('sha256:')[:12]}")
        return ", ".join(parts) or json.dumps(model, ensure_ascii=False)
    return str(model) if model else "unknown (no produced_by in metrics.json)"


def _rows(path: Path) -> list[dict]:
    """A JSONL output's rows without its ``produced_by`` line (a bad line: one error naming it)."""
    return [row for row in load_jsonl(path, "evaluation output") if isinstance(row, dict) and not is_header(row)]


def read_run(path: str | Path) -> Run:
    """A run's per-question credit from its output folder (a benchmark's or merged data's)."""
    path = Path(path)
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        raise UserError(f"{path}: no metrics.json (not an evaluate.py output folder)")
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{metrics_file}: not valid JSON ({exc})") from None
    items: dict[str, Scored] = {}
    if "benchmark" in metrics:
        kind = metrics["benchmark"]
        if not (path / SCORES).is_file():
            raise UserError(f"{path}: no {SCORES} (written by evaluate.py since --compare exists, only for splits with "
                            "public answers); run the same evaluate.py command again: it resumes from predictions.jsonl, "
                            f"asks nothing and writes {SCORES}")
        for row in _rows(path / SCORES):
            items[str(row["qid"])] = Scored(row["question"], row["answer"], float(row["score"]), row.get("group") or {},
                                            row.get("image"))
    elif "vqa_accuracy" in metrics:
        kind = "merged data"
        for row in _rows(path / "predictions.jsonl"):
            group = {k: str(row[k]) for k in ("question_type", "answer_type") if row.get(k) is not None}
            items[str(row["id"])] = Scored(row["question"], row["prediction"], float(row["vqa_accuracy"]), group,
                                           row.get("image"))
    else:
        raise UserError(f"{metrics_file}: neither a benchmark's nor merged data's metrics")
    if len(items) != metrics.get("count"):
        raise UserError(f"{path}: holds {len(items)} scored questions but metrics.json counts {metrics.get('count')} "
                        "(a folder mixed from two runs?); evaluate it again")
    return Run(path, kind, _model(metrics), items)


def paired_questions(a: Run, b: Run) -> list[str]:
    """The question ids both runs scored, in A's order; refuses runs that are not over the same
    questions of the same benchmark (naming what differs)."""
    if a.kind != b.kind:
        raise UserError(f"{a.path} is {a.kind} but {b.path} is {b.kind}: only runs of the same benchmark compare")
    only_a, only_b = a.items.keys() - b.items.keys(), b.items.keys() - a.items.keys()
    if only_a or only_b:
        example = sorted(only_a or only_b)[0]
        raise UserError(f"the runs are not over the same questions: {len(only_a)} only in {a.path}, {len(only_b)} only "
                        f"in {b.path} (e.g. {example}); evaluate both on the same question set")
    changed = [qid for qid in a.items if a.items[qid].question != b.items[qid].question]
    if changed:
        raise UserError(f"question {changed[0]} reads differently in the two runs ({len(changed)} such): "
                        "not the same data")
    return list(a.items)


def mean_interval(*samples: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The 95% bootstrap interval (percentile method, a fixed seed so that a report can be regenerated
    exactly) of one sample's mean, or of ``mean(second) - mean(first)`` for two independent samples,
    each resampled on its own (requests of two A/B variants are not paired).

    Resampling n values with replacement draws each distinct value a Multinomial(n, its frequency)
    number of times, so each resample's mean is drawn from those counts: the same distribution as
    drawing every value (what ``scipy.stats.bootstrap`` does), in time that grows with the distinct
    values rather than with n. Credit and judgements take a handful of values, and a benchmark or a
    request log holds 10^5 of them: seconds instead of minutes. (A sample of mostly distinct values
    is resampled value by value.) All-constant samples have no spread: the interval is the statistic."""
    import numpy as np

    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    if not 1 <= len(arrays) <= 2 or any(len(x) == 0 for x in arrays):
        raise ValueError("mean_interval needs one or two non-empty samples")
    if all(x.min() == x.max() for x in arrays):
        value = float(arrays[-1][0] - (arrays[0][0] if len(arrays) == 2 else 0.0))
        return value, value
    rng = np.random.default_rng(seed)
    means = []
    for x in arrays:
        values, counts = np.unique(x, return_counts=True)
        few = len(values) * 20 <= len(x)  # else drawing indices is cheaper than a multinomial over every value
        rows = max(1, 20_000_000 // (len(values) if few else len(x)))  # resamples per batch: bounded memory
        means.append(np.concatenate([
            rng.multinomial(len(x), counts / len(x), size=size) @ values / len(x) if few
            else x[rng.integers(0, len(x), size=(size, len(x)))].mean(axis=1)
            for size in (min(rows, resamples - start) for start in range(0, resamples, rows))]))
    low, high = np.percentile(means[-1] - (means[0] if len(means) == 2 else 0.0), [2.5, 97.5])
    return float(low), float(high)


def difference(a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> Difference:
    """B - A with its paired-bootstrap 95% interval and McNemar's exact p-value (see the module doc)."""
    import numpy as np
    from scipy.stats import binomtest

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = 100 * (b_arr - a_arr)
    a_better, b_better = int((d < 0).sum()), int((d > 0).sum())
    low, high = mean_interval(d, resamples=resamples, seed=seed)  # all equal (one question, say): that value
    # identical credit everywhere: nothing to test; else the sign test on the questions that differ
    p_value = float(binomtest(b_better, a_better + b_better, 0.5).pvalue) if a_better + b_better else 1.0
    return Difference(count=len(d), a=100 * float(a_arr.mean()), b=100 * float(b_arr.mean()), difference=float(d.mean()),
                      low=low, high=high, a_better=a_better, b_better=b_better, p_value=p_value)


@dataclass
class Comparison:
    a: Run
    b: Run
    overall: Difference
    groups: dict[str, dict[str, Difference]]
    flips: dict[str, list[str]]  # "a_better" / "b_better" -> question ids, largest change first


def compare(a: Run, b: Run, resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    qids = paired_questions(a, b)
    overall = difference([a.items[q].score for q in qids], [b.items[q].score for q in qids], resamples, seed)
    groups: dict[str, dict[str, list[str]]] = {}
    for q in qids:
        for key, value in a.items[q].group.items():
            if key != "image":  # MME's pairs of questions per image: a group of two, not a type
                groups.setdefault(key, {}).setdefault(str(value), []).append(q)
    per_group = {key: {value: difference([a.items[q].score for q in members], [b.items[q].score for q in members],
                                         resamples, seed)
                       for value, members in sorted(values.items())}
                 for key, values in sorted(groups.items()) if len(values) > 1}
    change = {q: b.items[q].score - a.items[q].score for q in qids}
    flips = {"a_better": sorted((q for q in qids if change[q] < 0), key=lambda q: change[q]),
             "b_better": sorted((q for q in qids if change[q] > 0), key=lambda q: -change[q])}
    return Comparison(a, b, overall, per_group, flips)


# -- what people read ----------------------------------------------------------------------------


def points(value: float) -> str:
    """A signed difference as reports print it (0 unsigned)."""
    return f"{value:+.2f}" if value else "0.00"


def p_text(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def verdict(d, test: str = "McNemar", unit: str = " points", names: tuple[str, str] = ("A", "B"),
            against_a: bool = False) -> str:
    """The result in words: which of ``names`` (A, B) is better (``against_a``: whether B is better or
    worse than A), or no significant difference; ``d`` has ``difference`` (B - A), ``low``, ``high``,
    ``p_value`` and ``significant``."""
    said = (f"{points(d.difference)}{unit} (95% interval {d.low:+.2f} to {d.high:+.2f}, {test} p = "
            f"{p_text(d.p_value)})")
    if not d.significant:
        return f"**no significant difference**: {said}"
    if against_a:
        return f"**{names[1]} is {'better' if d.difference > 0 else 'worse'}**: {said}"
    return f"**{names[1] if d.difference > 0 else names[0]} is better**: {said}"


def _row(name: str, d: Difference) -> str:
    return (f"| {name} | {d.count} | {d.a:.2f} | {d.b:.2f} | {points(d.difference)} | {d.low:+.2f} to {d.high:+.2f} "
            f"| {p_text(d.p_value)} | {d.a_better} | {d.b_better} |")


def _image_cell(image: str | None, output: Path) -> str:
    if not image:
        return ""
    path = Path(image)
    if not path.is_file():
        return path.name
    return f'<img src="{Path(os.path.relpath(path.resolve(), output.resolve())).as_posix()}" width="96">'


def cell(text: str) -> str:
    """Text for a markdown table cell: its pipes escaped, on one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(c: Comparison, output: Path) -> str:
    header = ("| | questions | A | B | B - A | 95% interval | McNemar p | A better | B better |\n"
              "|---|---|---|---|---|---|---|---|---|")
    lines = [f"# A/B comparison: {c.a.kind}", "",
             f"- **A**: `{c.a.path}` ({c.a.model})", f"- **B**: `{c.b.path}` ({c.b.model})",
             f"- **questions**: {c.overall.count}, the same in both runs, paired",
             f"- **result**: {verdict(c.overall)}", "",
             "Credit per question as the benchmark's official metric gives it, in percent"
             + (f" (per-question accuracy: {NOT_MEANS[c.a.kind]} are not means of it)" if c.a.kind in NOT_MEANS else "")
             + f". Interval: paired bootstrap, {RESAMPLES:,} resamples (seed {SEED}); p: McNemar's exact test on the "
             "questions where the runs differ (the sign test for fractional credit). Per-type p-values are not "
             "corrected for multiple comparisons.", "", "## Overall", "", header, _row("all", c.overall)]
    for key, values in c.groups.items():
        lines += ["", f"## Per {key}", "", header.replace("| |", f"| {key} |", 1)]
        lines += [_row(cell(name), d) for name, d in values.items()]
    for direction, title in (("a_better", "A scored higher (B regressed)"), ("b_better", "B scored higher (B improved)")):
        flips = c.flips[direction]
        lines += ["", f"## {title}: {len(flips)} questions", ""]
        if not flips:
            continue
        if len(flips) > SHOWN_FLIPS:
            lines += [f"The {SHOWN_FLIPS} largest changes; all of them are in flips.jsonl.", ""]
        lines += ["| image | id | question | A's answer (credit) | B's answer (credit) |", "|---|---|---|---|---|"]
        for qid in flips[:SHOWN_FLIPS]:
            x, y = c.a.items[qid], c.b.items[qid]
            lines.append(f"| {_image_cell(x.image, output)} | {cell(qid)} | {cell(x.question)} | "
                         f"{cell(x.answer)} ({x.score:.2f}) | {cell(y.answer)} ({y.score:.2f}) |")
    return "\n".join(lines) + "\n"


def plot(c: Comparison) -> bytes:
    """``compare.png``: B - A with its 95% interval, overall and per type (a forest plot)."""
    panels = {"overall": {"all": c.overall}, **c.groups}
    height = sum(0.9 + 0.3 * len(rows) for rows in panels.values())
    fig, axes = figure(len(panels), 1, figsize=(8, height), squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], panels.items()):
        labels = list(rows)
        for y, key in enumerate(labels):
            d = rows[key]
            colour = "#8c8c8c" if not d.significant else "#c44e52" if d.difference < 0 else "#55a868"
            ax.errorbar([d.difference], [y], xerr=[[d.difference - d.low], [d.high - d.difference]], fmt="o",
                        color=colour, markersize=4, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(labels)), [f"{k} (A {rows[k].a:.1f}, B {rows[k].b:.1f})" for k in labels], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("B - A, points (95% paired-bootstrap interval); green/red: significant", fontsize=8)
    fig.suptitle(f"{c.a.kind}: B ({c.b.path.name}) vs A ({c.a.path.name})", fontsize=10)
    return png(fig)


def figure(*args, **kwargs):
    """``plt.subplots`` on matplotlib's file-only backend (no display needed): ``(fig, axes)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def png(fig) -> bytes:
    """A figure laid out, as PNG bytes, and closed (pyplot keeps every open figure otherwise)."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write(c: Comparison, output: Path) -> None:
    """``compare.md``, ``compare.json``, ``flips.jsonl`` (together, atomically) and ``compare.png``."""
    def flip_lines():
        for direction, qids in c.flips.items():
            for qid in qids:
                x, y = c.a.items[qid], c.b.items[qid]
                yield json.dumps({"id": qid, "better": "A" if direction == "a_better" else "B", "question": x.question,
                                  "image": x.image, "a_answer": x.answer, "a_score": x.score, "b_answer": y.answer,
                                  "b_score": y.score}, ensure_ascii=False) + "\n"

    summary = {"kind": c.a.kind, "a": {"path": str(c.a.path), "model": c.a.model},
               "b": {"path": str(c.b.path), "model": c.b.model}, "resamples": RESAMPLES, "seed": SEED,
               "overall": {**asdict(c.overall), "significant": c.overall.significant},
               "groups": {key: {name: asdict(d) for name, d in rows.items()} for key, rows in c.groups.items()},
               "flips": {k: len(v) for k, v in c.flips.items()}}
    write_documents(output, {"compare.md": [markdown(c, output)],
                             "compare.json": [json.dumps(summary, ensure_ascii=False, indent=1, allow_nan=False) + "\n"],
                             "flips.jsonl": flip_lines()})
    write_bytes(output / "compare.png", plot(c))


def run(a: Path, b: Path, output: Path) -> str:
    """``evaluate.py --compare A B``: read, compare, write into ``output``; returns the line to print."""
    comparison = compare(read_run(a), read_run(b))
    try:
        write(comparison, output)
    except OSError as exc:
        raise UserError(f"{output}: {exc}") from None
    return headline(comparison) + f" -> {output / 'compare.md'}"


def headline(c: Comparison) -> str:
    d = c.overall
    return (f"{c.a.kind}: A {d.a:.2f}, B {d.b:.2f} on {d.count} paired questions; "
            + verdict(d).replace("**", "") + f"; {len(c.flips['a_better'])} questions better in A, "
            f"{len(c.flips['b_better'])} in B")

"""Online A/B from the gateway's request log: is one variant really better? (``evaluate.py --compare-log``)

The online counterpart of :mod:`evaluation.compare`. The gateway (``serve.py --route``) writes one
JSON line per request into ``LOGDIR/requests.jsonl`` (rotated by size into ``requests.jsonl.1``,
``.2``, ..., newest first) and one per judgement sent to ``POST /v1/feedback``. This module reads
those lines (SPEC.md, "request log"), joins each judgement to its request by ``request_id`` and
reports, per variant, the traffic (requests, errors, cache hits, latency p50/p99) and, among the
requests a person judged, the accuracy (``correct``) and the mean ``score``, each with a 95%
bootstrap interval; then every other variant against the baseline A:

- B - A with a 95% bootstrap interval for two *independent* samples (each variant's judged requests
  resampled on their own: unlike ``--compare``, a request was answered by one variant only, so
  nothing pairs them); percentile method, a fixed seed (reproducible numbers), compare.mean_interval;
- accuracy: Fisher's exact test on the 2x2 table (variant x right/wrong), exact at any size, which
  matters because judged requests are few;
- score: the two-sided Mann-Whitney U test. Scores are ratings (1-5, 0-10): bounded, ordinal, with
  many ties and far from normal in the small samples feedback gives, which Welch's t assumes away;
  Mann-Whitney needs no such assumption (scipy corrects for ties). The interval is of the mean.
- significant at 5% only when the test rejects "no difference" and the interval leaves out 0.

Reading is forgiving, as an operator's log must be: a line that is not valid JSON or not of the
format (a crash's cut-off last line, say) is counted and shown, not fatal; so is feedback for a
request that is not in the logs given (its request rotated away, or another replica's log). The
latest judgement wins, field by field (by the lines' ``time``, then the order read): a later
``{"score": 4}`` does not erase an earlier ``{"correct": true}``. A request logged twice (the same
log given twice) counts once. The baseline A is ``--baseline NAME``, else the variant with the most
requests (the incumbent usually takes the larger share, as in ``--route old=...:0.9``), ties
alphabetical; the report says which and why.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from atomic import write_bytes, write_documents
from errors import UserError
from evaluation.compare import RESAMPLES, SEED, cell, figure, mean_interval, p_text, png, points, significant, verdict

LOG_NAME = "requests.jsonl"
ROTATION = re.compile(re.escape(LOG_NAME) + r"\.(\d+)")
CACHE = {"hit", "miss", "off", "uncacheable"}
NO_VARIANT = "(none)"  # requests of a gateway without --route
EXAMPLES = 5  # unreadable lines shown in the report


class BadLine(Exception):
    """A line that is not what the request-log format says; the message says why."""


@dataclass(slots=True)
class Request:
    variant: str
    model: tuple[str, str | None]  # name, fingerprint
    latency_ms: float
    failed: bool  # status >= 400, or an error recorded (a stream the backend cut after its 200)
    cache_hit: bool
    correct: bool | None = None
    score: float | None = None


@dataclass
class Log:
    files: list[Path]
    requests: dict[str, Request] = field(default_factory=dict)
    lines: int = 0
    feedback: int = 0
    unknown_feedback: int = 0
    duplicates: int = 0
    unreadable: int = 0
    examples: list[str] = field(default_factory=list)  # "file:line: why", the first EXAMPLES
    first: datetime | None = None
    last: datetime | None = None


def log_files(path: Path) -> list[Path]:
    """A log argument's files, oldest first: a directory's rotations (highest number first) and then
    its ``requests.jsonl``, or the file itself."""
    if path.is_dir():
        rotations = [(int(m.group(1)), p) for p in path.iterdir() if (m := ROTATION.fullmatch(p.name)) and p.is_file()]
        files = [p for _, p in sorted(rotations, reverse=True)] + [p for p in [path / LOG_NAME] if p.is_file()]
        if not files:
            raise UserError(f"{path}: holds no {LOG_NAME} (nor its rotations): not a gateway's log directory")
        return files
    if path.is_file():
        return [path]
    raise UserError(f"{path}: no such log file or directory")


def _value(entry: dict, key: str, kinds: tuple[type, ...], what: str, optional: bool = False):
    value = entry.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds) or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and not _finite(value)):
        raise BadLine(f"{key!r} is {json.dumps(value)[:40]}, not {what}")
    return value


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer beyond any float
        return False


def _time(entry: dict) -> datetime:
    text = _value(entry, "time", (str,), "an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(text)
        return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise BadLine(f"'time' is {text[:40]!r}, not an ISO 8601 time") from None


def _request(entry: dict) -> Request:
    model = entry.get("model")
    if not isinstance(model, dict):
        raise BadLine("'model' is not an object with a 'name'")
    latency = _value(entry, "latency_ms", (int, float), "a number of milliseconds")
    if latency < 0:
        raise BadLine(f"'latency_ms' is negative ({latency})")
    if entry.get("cache") not in CACHE:
        raise BadLine(f"'cache' is {json.dumps(entry.get('cache'))[:40]}, not one of {', '.join(sorted(CACHE))}")
    status = _value(entry, "status", (int,), "an HTTP status")
    error = _value(entry, "error", (str,), "a string or null", optional=True)
    return Request(variant=_value(entry, "variant", (str,), "a string or null", optional=True) or NO_VARIANT,
                   model=(_value(model, "name", (str,), "a model name"),
                          _value(model, "fingerprint", (str,), "a string or null", optional=True)),
                   latency_ms=float(latency), failed=status >= 400 or error is not None, cache_hit=entry["cache"] == "hit")


def _line(raw: bytes) -> tuple[str, datetime, Request | tuple[float | None, bool | None]]:
    """One log line: its request id, time, and the request or the judgement (score, correct); BadLine if it is neither."""
    try:
        entry = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadLine("not UTF-8") from None
    except (json.JSONDecodeError, RecursionError):
        raise BadLine("not valid JSON") from None
    if not isinstance(entry, dict):
        raise BadLine("not a JSON object")
    moment, request_id = _time(entry), _value(entry, "request_id", (str,), "a request id")
    if entry.get("type") == "request":
        return request_id, moment, _request(entry)
    if entry.get("type") == "feedback":
        return request_id, moment, (_value(entry, "score", (int, float), "a number or null", optional=True),
                                    _value(entry, "correct", (bool,), "true, false or null", optional=True))
    raise BadLine(f"'type' is {json.dumps(entry.get('type'))[:40]}, not \"request\" or \"feedback\"")


def read_logs(paths: list[Path]) -> Log:
    """Every request of the logs (each once) with its latest judgement; what could not be read, counted."""
    files = list(dict.fromkeys(p.resolve() for path in paths for p in log_files(Path(path))))
    log = Log(files)
    judgements: list[tuple[datetime, str, float | None, bool | None]] = []
    for path in files:
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        with f:  # streamed: a log may be larger than memory would like
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                log.lines += 1
                try:
                    request_id, moment, content = _line(raw)
                except BadLine as exc:
                    log.unreadable += 1
                    if len(log.examples) < EXAMPLES:
                        log.examples.append(f"{path}:{number}: {exc}")
                    continue
                if isinstance(content, tuple):
                    judgements.append((moment, request_id, *content))
                elif request_id in log.requests:
                    log.duplicates += 1
                else:
                    log.requests[request_id] = content
                    log.first, log.last = min(log.first or moment, moment), max(log.last or moment, moment)
    log.feedback = len(judgements)
    for _, request_id, score, correct in sorted(judgements, key=lambda j: j[0]):  # stable: equal times in read order
        request = log.requests.get(request_id)
        if request is None:
            log.unknown_feedback += 1
            continue
        request.score = float(score) if score is not None else request.score
        request.correct = correct if correct is not None else request.correct
    return log


# -- per variant, and against the baseline -------------------------------------------------------


@dataclass
class Estimate:
    """A mean over the judged requests (accuracy in percent, or the score) with its 95% bootstrap interval."""

    count: int
    mean: float | None = None
    low: float | None = None
    high: float | None = None


def estimate(values: list[float]) -> Estimate:
    if not values:
        return Estimate(0)
    low, high = mean_interval(values)
    return Estimate(len(values), sum(values) / len(values), low, high)


@dataclass
class Variant:
    name: str
    requests: int
    errors: int
    cache_hits: int
    latency_p50_ms: float | None  # over the requests that did not fail
    latency_p99_ms: float | None
    models: list[dict]  # {"name", "fingerprint", "requests"}: more than one when the variant's model changed
    accuracy: Estimate
    score: Estimate


@dataclass
class Contrast:
    """B - A of one measure between two variants' judged requests (independent samples)."""

    measure: str  # "accuracy" (percent) or "score"
    test: str
    a_count: int
    b_count: int
    a: float
    b: float
    difference: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return significant(self.p_value, self.low, self.high)


def judged(requests: list[Request]) -> dict[str, list[float]]:
    """The values each measure averages: 100 per correct answer and 0 per wrong one; the scores."""
    return {"accuracy": [100.0 * r.correct for r in requests if r.correct is not None],
            "score": [r.score for r in requests if r.score is not None]}


def variant(name: str, requests: list[Request]) -> Variant:
    import numpy as np

    latencies = [r.latency_ms for r in requests if not r.failed]
    p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99])) if latencies else (None, None)
    values = judged(requests)
    return Variant(name=name, requests=len(requests), errors=sum(r.failed for r in requests),
                   cache_hits=sum(r.cache_hit for r in requests), latency_p50_ms=p50, latency_p99_ms=p99,
                   models=[{"name": m[0], "fingerprint": m[1], "requests": n}
                           for m, n in Counter(r.model for r in requests).most_common()],
                   accuracy=estimate(values["accuracy"]), score=estimate(values["score"]))


def contrast(measure: str, a: list[float], b: list[float]) -> Contrast | None:
    """B - A with its bootstrap interval and the measure's test (see the module doc); None when a side has no judgement."""
    if not a or not b:
        return None
    from scipy.stats import fisher_exact, mannwhitneyu

    if measure == "accuracy":
        right_a, right_b = sum(v > 0 for v in a), sum(v > 0 for v in b)
        test, p_value = "Fisher", float(fisher_exact([[right_b, len(b) - right_b], [right_a, len(a) - right_a]]).pvalue)
    else:
        test, p_value = "Mann-Whitney", float(mannwhitneyu(b, a, alternative="two-sided").pvalue)
    low, high = mean_interval(a, b)
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    return Contrast(measure, test, len(a), len(b), mean_a, mean_b, mean_b - mean_a, low, high,
                    1.0 if math.isnan(p_value) else p_value)  # all tied: nothing tells them apart


@dataclass
class Report:
    log: Log
    baseline: str
    chosen: str  # why this baseline, in words
    variants: dict[str, Variant]  # the baseline first, then by name
    contrasts: dict[str, dict[str, Contrast | None]]  # other variant -> measure -> B - A


def analyse(log: Log, baseline: str | None = None) -> Report:
    groups: dict[str, list[Request]] = {}
    for request in log.requests.values():
        groups.setdefault(request.variant, []).append(request)
    if not groups:
        raise UserError(f"{', '.join(map(str, log.files))}: no request in the log ({log.lines} lines, "
                        f"{log.unreadable} unreadable)")
    if baseline is not None and baseline not in groups:
        raise UserError(f"--baseline {baseline}: no such variant in the log (it has {', '.join(sorted(groups))})")
    chosen = "chosen by --baseline"
    if baseline is None:
        baseline = min(groups, key=lambda name: (-len(groups[name]), name))
        chosen = "the variant with the most requests; --baseline NAME chooses another"
    order = [baseline] + sorted(set(groups) - {baseline})
    values = {name: judged(groups[name]) for name in order}
    return Report(log, baseline, chosen, {name: variant(name, groups[name]) for name in order},
                  {name: {m: contrast(m, values[baseline][m], values[name][m]) for m in ("accuracy", "score")}
                   for name in order[1:]})


# -- what people read ----------------------------------------------------------------------------


UNITS = {"accuracy": " points", "score": ""}


def said(r: Report, name: str, measure: str) -> str:
    """One comparison in words (markdown bold kept)."""
    c = r.contrasts[name][measure]
    if c is None:
        missing = [n for n in (r.baseline, name) if not getattr(r.variants[n], measure).count]
        return f"not comparable: no {measure} judged for {' nor '.join(missing)}"
    return verdict(c, test=c.test, unit=UNITS[measure], names=(r.baseline, name), against_a=True)


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fingerprint(text: str | None) -> str:
    """A weights hash shortened to 12 hex digits; a server's identity (URL and model) in full."""
    return "-" if text is None else text[7:19] if text.startswith("sha256:") else text


def _interval(e: Estimate) -> str:
    return "-" if e.low is None else f"{e.low:.2f} to {e.high:.2f}"


def markdown(r: Report) -> str:
    log, judgements = r.log, any(v.accuracy.count or v.score.count for v in r.variants.values())
    period = f"{log.first:%Y-%m-%d %H:%M:%S} to {log.last:%Y-%m-%d %H:%M:%S} UTC" if log.first else "-"
    lines = ["# Online A/B: the gateway's request log", "",
             f"- **logs**: {', '.join(f'`{p}`' for p in log.files)}",
             f"- **requests**: {len(log.requests):,} from {period}, in {len(r.variants)} variant(s)",
             f"- **lines**: {log.lines:,} read; {log.feedback:,} feedback ({log.unknown_feedback:,} for requests not in "
             f"these logs, ignored); {log.unreadable:,} unreadable; {log.duplicates:,} requests logged twice (counted once)",
             f"- **baseline (A)**: `{r.baseline}` ({r.chosen})"]
    for name in r.contrasts:
        lines += [f"- **{cell(name)} vs {cell(r.baseline)}**: accuracy {said(r, name, 'accuracy')}; score "
                  f"{said(r, name, 'score')}"]
    lines += ["", "## Traffic", "", "Latency over the requests that did not fail (cache hits included); errors: "
              "HTTP status 400 or more, or an error the backend gave after the answer began.", "",
              "| variant | requests | errors | cache hits | latency p50 (ms) | latency p99 (ms) | model (requests) |",
              "|---|---|---|---|---|---|---|"]
    for v in r.variants.values():
        models = ", ".join(f"{m['name']} {_fingerprint(m['fingerprint'])} ({m['requests']})" for m in v.models)
        lines.append(f"| {cell(v.name)} | {v.requests} | {v.errors} | {v.cache_hits} | {_number(v.latency_p50_ms, 1)} "
                     f"| {_number(v.latency_p99_ms, 1)} | {cell(models)} |")
    lines += ["", "## Judgements", ""]
    if not judgements:
        lines += ["No judgement was recorded (no feedback line joins a request in these logs): traffic and latency only. "
                  "`POST /v1/feedback {request_id, correct | score}` records one."]
    else:
        lines += [f"Among the requests a person judged (`POST /v1/feedback`); 95% intervals: bootstrap, {RESAMPLES:,} "
                  f"resamples (seed {SEED}).", "",
                  "| variant | judged | accuracy % | 95% interval | scored | mean score | 95% interval |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {cell(v.name)} | {v.accuracy.count} | {_number(v.accuracy.mean)} | {_interval(v.accuracy)} | "
                  f"{v.score.count} | {_number(v.score.mean)} | {_interval(v.score)} |" for v in r.variants.values()]
        lines += ["", f"## Against the baseline `{cell(r.baseline)}` (B - A)", "",
                  "Requests are not paired across variants: the interval resamples each variant's judged requests on "
                  "their own. Accuracy: Fisher's exact test; score: two-sided Mann-Whitney U (ratings are ordinal and "
                  "tied, not normal). Significant at 5% when p < 0.05 and the interval leaves out 0; with several "
                  "variants, uncorrected for multiple comparisons.", "",
                  "| B | measure | judged A / B | A | B | B - A | 95% interval | test | p |", "|---|---|---|---|---|---|---|---|---|"]
        for name, measures in r.contrasts.items():
            lines += [f"| {cell(name)} | {m} | {c.a_count} / {c.b_count} | {c.a:.2f} | {c.b:.2f} | {points(c.difference)} | "
                      f"{c.low:+.2f} to {c.high:+.2f} | {c.test} | {p_text(c.p_value)} |" for m, c in measures.items() if c]
    if log.examples:
        lines += ["", f"## Lines not read: {log.unreadable}", ""] + [f"- {cell(e)}" for e in log.examples]
    return "\n".join(lines) + "\n"


def plot(r: Report) -> bytes:
    """``compare_log.png``: per variant, accuracy and mean score with their 95% intervals, and latency p50/p99."""
    fig, axes = figure(1, 3, figsize=(12, 3.8))
    colours = ["#8c8c8c"] + ["#4c72b0"] * (len(r.variants) - 1)  # the baseline grey
    for ax, measure, title in ((axes[0], "accuracy", "accuracy, %"), (axes[1], "score", "mean score")):
        shown = [(v.name, getattr(v, measure), c) for v, c in zip(r.variants.values(), colours) if getattr(v, measure).count]
        if not shown:
            ax.text(0.5, 0.5, "no judgement recorded", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.bar(range(len(shown)), [e.mean for _, e, _ in shown], color=[c for *_, c in shown], capsize=4,
                   yerr=[[max(0.0, e.mean - e.low) for _, e, _ in shown], [max(0.0, e.high - e.mean) for _, e, _ in shown]])
            ax.set_xticks(range(len(shown)), [f"{n}\n({e.count} judged)" for n, e, _ in shown], fontsize=7)
        ax.set_title(f"{title} (95% bootstrap interval)", fontsize=9)
    timed = [v for v in r.variants.values() if v.latency_p50_ms is not None]
    for offset, key, label in ((-0.2, "latency_p50_ms", "p50"), (0.2, "latency_p99_ms", "p99")):
        axes[2].bar([i + offset for i in range(len(timed))], [getattr(v, key) for v in timed], width=0.4, label=label)
    axes[2].set_xticks(range(len(timed)), [f"{v.name}\n({v.requests} requests)" for v in timed], fontsize=7)
    axes[2].set_title("latency, ms", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.suptitle(f"online A/B: baseline {r.baseline}", fontsize=10)
    return png(fig)


def summary(r: Report) -> dict:
    log = r.log
    return {"logs": [str(p) for p in log.files], "first": log.first and log.first.isoformat(),
            "last": log.last and log.last.isoformat(), "requests": len(log.requests), "lines": log.lines,
            "feedback": log.feedback, "unknown_feedback": log.unknown_feedback, "duplicates": log.duplicates,
            "unreadable": log.unreadable, "unreadable_examples": log.examples, "baseline": r.baseline, "chosen": r.chosen,
            "resamples": RESAMPLES, "seed": SEED, "variants": {name: asdict(v) for name, v in r.variants.items()},
            "contrasts": {name: {m: c and {**asdict(c), "significant": c.significant} for m, c in measures.items()}
                          for name, measures in r.contrasts.items()}}


def headline(r: Report) -> str:
    judged_count = sum(1 for q in r.log.requests.values() if q.correct is not None or q.score is not None)
    counts = ", ".join(f"{v.name} {v.requests}" for v in r.variants.values())
    text = f"request log: {len(r.log.requests)} requests ({counts}), {judged_count} judged"
    if not judged_count:
        return text + "; no judgement was recorded: traffic and latency only"
    if not r.contrasts:
        return text + "; one variant, nothing to compare"
    return text + "".join(f"; {name} vs {r.baseline}: accuracy {said(r, name, 'accuracy')}, score "
                          f"{said(r, name, 'score')}" for name in r.contrasts).replace("**", "")


def run(logs: list[Path], output: Path, baseline: str | None = None) -> str:
    """``evaluate.py --compare-log LOG ...``: read, analyse, write into ``output``; returns the line to print."""
    report = analyse(read_logs(logs), baseline)
    try:
        write_documents(output, {"compare_log.md": [markdown(report)],
                                 "compare_log.json": [json.dumps(summary(report), ensure_ascii=False, indent=1,
                                                                 allow_nan=False) + "\n"]})
        write_bytes(output / "compare_log.png", plot(report))
    except OSError as exc:
        raise UserError(f"{output}: {exc}") from None
    return headline(report) + f" -> {output / 'compare_log.md'}"

"""evaluate.py --compare-log: online A/B from the gateway's request log, on logs written by hand.

Every number is checked against an independent computation written out here: counts and means by
hand, percentiles by their definition (linear interpolation between order statistics), Fisher's
exact and Mann-Whitney p-values by calling scipy directly on the same samples, and the bootstrap
interval of a difference against the normal approximation for two independent samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy.stats import fisher_exact, mannwhitneyu

from commands import evaluate
from evaluation.compare import mean_interval

FINGERPRINT = {"old": "sha256:" + "a" * 64, "new": "sha256:" + "b" * 64, "big": "sha256:" + "c" * 64}


def request(n: int, variant: str | None, latency: float, *, status: int = 200, error: str | None = None,
            cache: str = "miss", minute: int = 0) -> dict:
    """A request line as the gateway writes it (SPEC.md, "request log")."""
    return {"type": "request", "time": f"2026-12-07T10:{minute:02d}:{n % 60:02d}.000Z", "request_id": f"req-{n:032x}",
            "user": f"user{n}", "variant": variant,
            "model": {"name": variant or "demo", "fingerprint": FINGERPRINT.get(variant or "", None)},
            "latency_ms": latency, "prompt_tokens": 12, "completion_tokens": 3, "cache": cache,
            "image_sha256": ["0" * 64], "question": "What colour is it?", "answer": None if error or status >= 400 else "red",
            "status": status, "error": error, "stream": False}


def feedback(n: int, *, score: float | None = None, correct: bool | None = None, second: int = 0) -> dict:
    return {"type": "feedback", "time": f"2026-12-07T11:00:{second:02d}Z", "request_id": f"req-{n:032x}", "score": score,
            "correct": correct}


def write_log(path: Path, lines: list) -> Path:
    """JSON lines; a str is written as it is (a malformed line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def compare_log(*logs: Path, out: Path, extra: tuple = ()) -> dict:
    assert evaluate.main(["--compare-log", *map(str, logs), "--output", str(out), *extra]) == 0
    return json.loads((out / "compare_log.json").read_text())


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by its definition: linear between the order statistics around (n - 1) q / 100."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def test_rotated_logs_bad_lines_unknown_and_repeated_feedback(tmp_path, capsys):
    logs = tmp_path / "logs"
    # The older file (rotated away as requests.jsonl.1) and the current one, as RotatingFileHandler names them.
    write_log(logs / "requests.jsonl.1", [
        request(1, "old", 10.0, cache="hit"), request(2, "old", 20.0), request(3, "old", 40.0),
        request(4, "old", 999.0, status=502, error="backend: connection refused"),
        request(5, "new", 30.0), request(6, "new", 50.0, cache="hit"),
        '{"type": "request", "time": "2026-12-07T10:00:07Z", "request_id": "req-cut',  # a crash's cut-off line
        feedback(1, correct=True, score=4),
    ])
    write_log(logs / "requests.jsonl", [
        request(7, "new", 70.0, error="the backend cut the stream"),  # status 200, then an error: failed
        request(8, "old", 80.0, cache="uncacheable"),
        request(2, "old", 20.0),  # the same request logged again: counted once
        feedback(2, correct=False, second=1), feedback(2, correct=True, second=2),  # the later judgement wins
        feedback(1, score=2, second=3),  # a later score only: request 1 stays correct, its score is now 2
        feedback(5, correct=True, score=5), feedback(6, correct=False, score=3), feedback(7, correct=False),
        feedback(99, correct=True),  # a request not in these logs
        {"type": "feedback", "time": "yesterday", "request_id": "req-1", "correct": True},  # not a time
        {"type": "metrics", "time": "2026-12-07T11:00:00Z", "request_id": "req-1"},  # not a kind of line
        request(9, "old", -1.0),  # a negative latency
        "",  # blank lines are not lines
    ])
    capsys.readouterr()
    # The directory (both files, oldest first) and its current file again: each file is read once.
    result = compare_log(logs, logs / "requests.jsonl", out=tmp_path / "ab")
    assert (result["requests"], result["duplicates"], result["unreadable"]) == (8, 1, 4)
    assert (result["feedback"], result["unknown_feedback"]) == (8, 1)
    assert result["lines"] == 8 + 13  # the blank line is not counted
    assert any("requests.jsonl.1:7: not valid JSON" in e for e in result["unreadable_examples"])
    assert any("'latency_ms' is negative" in e for e in result["unreadable_examples"])
    assert result["baseline"] == "old" and "most requests" in result["chosen"]  # old 5 requests, new 3
    old, new = result["variants"]["old"], result["variants"]["new"]
    assert (old["requests"], old["errors"], old["cache_hits"]) == (5, 1, 1)
    assert (new["requests"], new["errors"], new["cache_hits"]) == (3, 1, 1)
    # latency over the requests that did not fail: old 10, 20, 40, 80; new 30, 50
    assert old["latency_p50_ms"] == pytest.approx((20 + 40) / 2) == pytest.approx(percentile([10, 20, 40, 80], 50))
    assert old["latency_p99_ms"] == pytest.approx(40 + 0.97 * (80 - 40))  # position 3 x 0.99 = 2.97
    assert (new["latency_p50_ms"], new["latency_p99_ms"]) == (pytest.approx(40.0), pytest.approx(30 + 0.99 * 20))
    assert old["models"] == [{"name": "old", "fingerprint": FINGERPRINT["old"], "requests": 5}]
    # judgements: old 1 right (score 4 then 2: 2), 2 right (wrong, then right); new 5 right (5), 6 wrong (3), 7 wrong
    assert old["accuracy"] == {"count": 2, "mean": 100.0, "low": 100.0, "high": 100.0}  # constant: its interval
    assert old["score"] == {"count": 1, "mean": 2.0, "low": 2.0, "high": 2.0}
    assert (new["accuracy"]["count"], new["accuracy"]["mean"]) == (3, pytest.approx(100 / 3))
    assert (new["score"]["count"], new["score"]["mean"]) == (2, 4.0)
    accuracy = result["contrasts"]["new"]["accuracy"]
    assert (accuracy["a_count"], accuracy["b_count"], accuracy["a"]) == (2, 3, 100.0)
    assert accuracy["difference"] == pytest.approx(100 / 3 - 100)
    assert accuracy["p_value"] == pytest.approx(fisher_exact([[1, 2], [2, 0]]).pvalue)
    assert not accuracy["significant"]  # 2 vs 3 judgements prove nothing
    score = result["contrasts"]["new"]["score"]
    assert score["p_value"] == pytest.approx(mannwhitneyu([5, 3], [2], alternative="two-sided").pvalue)
    # B - A of a one-judgement baseline: only B's two scores vary, so the interval lies within 3 - 2 and 5 - 2
    assert 1.0 <= score["low"] <= score["high"] <= 3.0
    report = (tmp_path / "ab" / "compare_log.md").read_text()
    assert "## Lines not read: 4" in report and "1 for requests not in these logs" in report
    assert "| old | 5 | 1 | 1 | 30.0 | 78.8 |" in report
    assert capsys.readouterr().out.startswith("request log: 8 requests (old 5, new 3), 5 judged; new vs old: accuracy "
                                              "no significant difference")


def judged_log(path: Path, variants: dict[str, tuple[list[bool], list[float]]], extra: int = 0) -> Path:
    """Per variant: one request per judgement (correct and score paired in order); ``extra`` unjudged
    requests for the first variant, so that it has the most traffic."""
    lines, n = [], 0
    for index, (name, (right, scores)) in enumerate(variants.items()):
        for k in range(max(len(right), len(scores)) + (extra if index == 0 else 0)):
            n += 1
            lines.append(request(n, name, 10.0 + k % 7, minute=n // 60 % 60))
            if k < max(len(right), len(scores)):
                lines.append(feedback(n, correct=right[k] if k < len(right) else None,
                                      score=scores[k] if k < len(scores) else None))
    return write_log(path, lines)


def normal_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(b) - mean(a) -/+ 1.96 standard errors (independent samples)."""
    def var(x):
        m = sum(x) / len(x)
        return sum((v - m) ** 2 for v in x) / (len(x) - 1)

    d = sum(b) / len(b) - sum(a) / len(a)
    se = math.sqrt(var(a) / len(a) + var(b) / len(b))
    return d - 1.96 * se, d + 1.96 * se


def test_a_clearly_better_variant_is_significant(tmp_path, capsys):
    old_right = [k < 50 for k in range(100)]  # 50 of 100
    new_right = [k < 85 for k in range(100)]  # 85 of 100
    old_scores, new_scores = [2.0, 3.0] * 40, [4.0, 5.0, 4.0, 3.0] * 20
    log = judged_log(tmp_path / "requests.jsonl", {"old": (old_right, old_scores), "new": (new_right, new_scores)},
                     extra=30)
    capsys.readouterr()
    result = compare_log(log, out=tmp_path / "ab")
    assert result["baseline"] == "old" and result["variants"]["old"]["requests"] == 130
    accuracy = result["contrasts"]["new"]["accuracy"]
    assert (accuracy["a"], accuracy["b"], accuracy["difference"]) == (50.0, 85.0, 35.0)
    assert accuracy["p_value"] == pytest.approx(fisher_exact([[85, 15], [50, 50]]).pvalue, rel=1e-9)
    low, high = normal_interval([100.0 * r for r in old_right], [100.0 * r for r in new_right])
    assert accuracy["low"] == pytest.approx(low, abs=2.0) and accuracy["high"] == pytest.approx(high, abs=2.0)
    assert accuracy["significant"] and accuracy["test"] == "Fisher"
    score = result["contrasts"]["new"]["score"]
    assert (score["a"], score["b"]) == (2.5, 4.0) and score["test"] == "Mann-Whitney"
    assert score["p_value"] == pytest.approx(mannwhitneyu(new_scores, old_scores, alternative="two-sided").pvalue,
                                             rel=1e-9)
    low, high = normal_interval(old_scores, new_scores)
    assert score["low"] == pytest.approx(low, abs=0.06) and score["high"] == pytest.approx(high, abs=0.06)
    assert score["significant"]
    # each variant's own interval: around its accuracy, by the normal approximation of a proportion
    own = result["variants"]["new"]["accuracy"]
    half = 1.96 * math.sqrt(85 * 15 / 100 ** 3) * 100
    assert own["low"] == pytest.approx(85 - half, abs=2.0) and own["high"] == pytest.approx(85 + half, abs=2.0)
    report = (tmp_path / "ab" / "compare_log.md").read_text()
    assert "accuracy **new is better**: +35.00 points" in report and "score **new is better**: +1.50 (" in report
    assert (tmp_path / "ab" / "compare_log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "; new vs old: accuracy new is better: +35.00 points" in capsys.readouterr().out
    # The baseline chosen the other way round: the same difference, negated: old is worse than new.
    flipped = compare_log(log, out=tmp_path / "ba", extra=("--baseline", "new"))["contrasts"]["old"]["accuracy"]
    assert flipped["difference"] == -35.0 and flipped["p_value"] == pytest.approx(accuracy["p_value"])
    assert "accuracy **old is worse**: -35.00 points" in (tmp_path / "ba" / "compare_log.md").read_text()
    # Reproducible: the same log gives the same numbers, intervals included.
    assert compare_log(log, out=tmp_path / "again") == result


def test_a_tie_is_not_significant_and_three_variants_each_face_the_baseline(tmp_path):
    right = [k % 5 < 3 for k in range(60)]  # 60% each
    scores = [1.0, 2.0, 3.0, 4.0, 5.0] * 12
    log = judged_log(tmp_path / "requests.jsonl", {"a": (right, scores), "b": (right[::-1], scores[::-1]),
                                                   "c": ([True] * 40, [5.0] * 40)})
    result = compare_log(log, out=tmp_path / "ab", extra=("--baseline", "a"))
    assert result["baseline"] == "a" and result["chosen"] == "chosen by --baseline"
    assert set(result["contrasts"]) == {"b", "c"}
    tie = result["contrasts"]["b"]
    assert tie["accuracy"]["difference"] == 0 and tie["accuracy"]["p_value"] == pytest.approx(1.0)
    assert tie["accuracy"]["low"] < 0 < tie["accuracy"]["high"] and not tie["accuracy"]["significant"]
    assert tie["score"]["p_value"] == pytest.approx(1.0) and not tie["score"]["significant"]
    better = result["contrasts"]["c"]
    assert better["accuracy"]["p_value"] == pytest.approx(fisher_exact([[40, 0], [36, 24]]).pvalue)
    assert better["accuracy"]["significant"] and better["score"]["significant"]
    # c's judgements are constant: its own intervals are the constants
    c = result["variants"]["c"]
    assert (c["accuracy"]["low"], c["accuracy"]["high"], c["score"]["low"], c["score"]["high"]) == (100, 100, 5, 5)
    report = (tmp_path / "ab" / "compare_log.md").read_text()
    assert "- **b vs a**: accuracy **no significant difference**: 0.00 points" in report
    assert "- **c vs a**: accuracy **c is better**" in report


def test_the_bootstrap_interval_of_constants_is_the_constant():
    assert mean_interval([0.7] * 9) == (pytest.approx(0.7), pytest.approx(0.7))
    assert mean_interval([3.0]) == (3.0, 3.0)
    assert mean_interval([2.0, 2.0], [5.0, 5.0, 5.0]) == (3.0, 3.0)
    # one side of one observation: only the other side varies (the difference of its mean from 2)
    low, high = mean_interval([2.0], [1.0, 3.0, 5.0])
    assert 1.0 - 2.0 <= low < 3.0 - 2.0 < high <= 5.0 - 2.0
    assert mean_interval([1.0, 5.0, 2.0, 8.0]) == mean_interval([1.0, 5.0, 2.0, 8.0])  # seeded


def test_a_log_without_feedback_still_reports_traffic(tmp_path, capsys):
    log = write_log(tmp_path / "logs" / "requests.jsonl", [request(n, None, 5.0 * n) for n in range(1, 5)])
    capsys.readouterr()
    result = compare_log(log.parent, out=tmp_path / "ab")
    variant = result["variants"]["(none)"]
    assert (variant["requests"], variant["latency_p50_ms"]) == (4, 12.5)
    assert variant["accuracy"] == {"count": 0, "mean": None, "low": None, "high": None}
    assert result["contrasts"] == {}
    assert "No judgement was recorded" in (tmp_path / "ab" / "compare_log.md").read_text()
    assert "4 requests ((none) 4), 0 judged; no judgement was recorded" in capsys.readouterr().out
    # two variants, only one of them judged: no comparison, and the report says which side lacks it
    log = write_log(tmp_path / "two.jsonl", [request(1, "old", 1.0), request(2, "new", 2.0), request(3, "old", 3.0),
                                             feedback(2, correct=True)])
    result = compare_log(log, out=tmp_path / "two")
    assert result["contrasts"]["new"] == {"accuracy": None, "score": None}
    assert "accuracy not comparable: no accuracy judged for old" in (tmp_path / "two" / "compare_log.md").read_text()


def test_the_gateways_own_rotated_log_reads_back(tmp_path):
    """The gateway's writer (a real RotatingFileHandler, rotating every few lines) and this reader agree."""
    from serving.requestlog import RequestLog

    log = RequestLog(tmp_path / "logs", max_bytes=2000, backups=50)
    try:
        for n in range(40):
            fields = request(n, "old" if n % 2 else "new", float(n))
            log.request(**{k: v for k, v in fields.items() if k not in ("type", "time")})
            log.feedback(fields["request_id"], score=None, correct=n % 4 == 1)
    finally:
        log.close()
    assert (tmp_path / "logs" / "requests.jsonl.3").is_file()  # it did rotate
    result = compare_log(tmp_path / "logs", out=tmp_path / "ab")
    assert (result["requests"], result["feedback"], result["unreadable"], result["unknown_feedback"]) == (40, 40, 0, 0)
    assert result["variants"]["old"]["accuracy"]["mean"] == 50.0  # n = 1, 5, 9, ... of the odd ones
    assert result["variants"]["new"]["accuracy"]["mean"] == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--compare-log", "{tmp}/missing", "--output", "{tmp}/o"], "missing: no such log file or directory"),
    (["--compare-log", "{tmp}", "--output", "{tmp}/o"], "holds no requests.jsonl"),
    (["--compare-log", "{tmp}/bad.jsonl", "--output", "{tmp}/o"], "no request in the log (2 lines, 2 unreadable)"),
    (["--compare-log", "{tmp}/log.jsonl", "--baseline", "nope", "--output", "{tmp}/o"],
     "--baseline nope: no such variant in the log (it has new, old)"),
    (["--compare-log", "{tmp}/log.jsonl", "--checkpoint", "ckpt", "--output", "{tmp}/o"],
     "--compare-log reads request logs and asks no model; drop --checkpoint"),
    (["--compare", "{tmp}/a", "{tmp}/b", "--compare-log", "{tmp}/log.jsonl", "--output", "{tmp}/o"], "drop --compare-log"),
    (["--data", "qa.json", "--baseline", "old", "--output", "{tmp}/o"], "--baseline goes with --compare-log"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    write_log(tmp_path / "bad.jsonl", ["not json", {"type": "request"}])
    write_log(tmp_path / "log.jsonl", [request(1, "old", 1.0), request(2, "new", 1.0)])
    with pytest.raises(SystemExit) as exc:
        evaluate.main([arg.format(tmp=tmp_path) for arg in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_split_through_the_real_gateway_is_reported(tmp_path, capsys):
    """serve.py --route over two OpenAI-compatible backends (one answers right, one wrong), judged
    through POST /v1/feedback: the report counts what the gateway said it routed, and calls it."""
    from PIL import Image

    from tests.fake_openai import FakeOpenAI
    from tests.test_serve import chat_body, gateway, post

    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), "red").save(image)
    right, wrong = FakeOpenAI("red", model_id="m-old"), FakeOpenAI("blue", model_id="m-new")
    routed = {"old": 0, "new": 0}
    try:
        with gateway("--route", f"old={right.url}:0.5", "--route", f"new={wrong.url}:0.5", "--cache", "off",
                     "--log-dir", str(tmp_path / "logs"), "--timeout", "30") as served:
            for n in range(24):
                status, head, reply = post(served.url + "/v1/chat/completions", chat_body(image, user=f"user{n}"))
                assert status == 200, reply
                routed[head["X-Variant"]] += 1
                answer = reply["choices"][0]["message"]["content"]
                assert post(served.url + "/v1/feedback", {"request_id": head["X-Request-Id"], "correct": answer == "red",
                                                          "score": 5 if answer == "red" else 1})[0] == 200
    finally:
        right.close()
        wrong.close()
    assert routed["old"] and routed["new"]  # sticky per user, and both variants got users
    capsys.readouterr()
    result = compare_log(tmp_path / "logs", out=tmp_path / "ab", extra=("--baseline", "old"))
    old, new = result["variants"]["old"], result["variants"]["new"]
    assert (old["requests"], new["requests"], old["errors"] + new["errors"]) == (routed["old"], routed["new"], 0)
    assert (old["accuracy"]["mean"], new["accuracy"]["mean"], old["score"]["mean"], new["score"]["mean"]) == (100, 0, 5, 1)
    accuracy = result["contrasts"]["new"]["accuracy"]
    assert accuracy["p_value"] == pytest.approx(fisher_exact([[0, routed["new"]], [routed["old"], 0]]).pvalue)
    assert accuracy["significant"] and accuracy["difference"] == -100
    assert old["models"][0]["name"].endswith("m-old") and new["models"][0]["name"].endswith("m-new")
    assert "new vs old: accuracy new is worse: -100.00 points" in capsys.readouterr().out

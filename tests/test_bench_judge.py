"""LLaVA-Bench (In-the-Wild) and MM-Vet, scored by a judge model over an OpenAI-compatible server
(tests/fake_openai.py stands in for it): the requests each official script sends, its reading of the
judge's replies (and what it does with a reply without a score), and its arithmetic, every number
computed by hand from that code (haotian-liu/LLaVA eval_gpt_review_bench.py + summarize_gpt_review.py;
yuweihao/MM-Vet mm-vet_evaluator.py). Formats: the released llava-bench-in-the-wild files and
mm-vet.json; the results files are LLaVA's answers JSONL and MM-Vet's ``{"v1_0": answer}``.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from commands import evaluate
from evaluation.benchmarks import BENCHMARKS
from evaluation.benchmarks.llava_bench import RULE, SYSTEM, parse_score
from evaluation.benchmarks.mmvet import PROMPT, RETRY, parse_correctness
from tests.fake_openai import FakeOpenAI


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def jsonl(path: Path, rows) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


class ScriptedJudge:
    """The judge's replies, by the answer being judged: a list is replied in turn (its last item
    again once it runs out). ``find`` pulls the judged answer out of the request."""

    def __init__(self, replies: dict[str, list[str]], find):
        self.replies, self.find, self.asked = replies, find, defaultdict(int)

    def __call__(self, body: dict) -> str:
        answer = self.find(body["messages"][-1]["content"])
        n = self.asked[answer]
        self.asked[answer] += 1
        replies = self.replies[answer]
        return replies[min(n, len(replies) - 1)]


def llava_answer(content: str) -> str:
    return content.split("[Assistant 2]\n")[1].split("\n\n[End of Assistant 2]")[0]


def mmvet_answer(content: str) -> str:
    return content.removesuffix(RETRY).rsplit(" | ", 2)[1]


def run(name, tmp_path, questions, predictions, server, output="out", extra=()):
    """evaluate.py --benchmark NAME --predictions ... --judge-server ...: the metrics.json it writes."""
    args = ["--benchmark", name, "--predictions", str(predictions), "--output", str(tmp_path / output),
            "--judge-server", server.url, "--judge-model", "judge-x", *extra]
    for q in questions:
        args += ["--questions", str(q)]
    assert evaluate.main(args) == 0
    return json.loads((tmp_path / output / "metrics.json").read_text())


# -- LLaVA-Bench -----------------------------------------------------------------------------------

CATEGORIES = ["conv", "detail", "complex", "complex", "conv", "detail"]


def llava_bench_files(root: Path, images: dict[str, Path] | None = None) -> Path:
    for name, source in (images or {}).items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / "images" / name)
    jsonl(root / "questions.jsonl", [{"image": "001.png" if n < 3 else "002.png", "text": f"Question {n}?",
                                      "category": c, "question_id": n} for n, c in enumerate(CATEGORIES)])
    jsonl(root / "context.jsonl", [{"id": "a", "image": "001.png", "caption": ["a red square", "on white"]},
                                   {"id": "b", "image": "002.png", "caption": "a blue square"}])
    jsonl(root / "answers_gpt4.jsonl", [{"question_id": n, "prompt": f"Question {n}?", "text": f"Reference {n}.",
                                         "answer_id": f"g{n}", "model_id": "gpt-4-0314", "metadata": {}}
                                        for n in range(len(CATEGORIES))])
    return root / "questions.jsonl"


def llava_answers(path: Path, texts: list[str]) -> Path:
    return jsonl(path, [{"question_id": n, "prompt": f"Question {n}?", "text": t, "answer_id": f"a{n}",
                         "model_id": "ours", "metadata": {}} for n, t in enumerate(texts)])


def test_parse_score_reads_the_first_line_as_eval_gpt_review_bench_does():
    # First line only, commas -> spaces, split on single spaces, exactly two floats.
    assert parse_score("8 7\nAssistant 1 is better") == (8.0, 7.0)
    assert parse_score("8,7") == (8.0, 7.0)  # "8 7"
    assert parse_score("8, 7") is None  # "8  7" -> ["8", "", "7"]: three parts
    assert parse_score("8.5 7\r\nwhy") == (8.5, 7.0)  # cut at "\n" only; float() ignores the "\r"
    for reply in ("8/10 7/10", "Scores: 8 7", " 8 7", "8 7 ", "", "\n8 7"):
        assert parse_score(reply) is None, reply


def test_llava_bench_relative_score_as_summarize_gpt_review(tmp_path, capsys):
    questions = llava_bench_files(tmp_path / "llava-bench-in-the-wild")
    answers = llava_answers(tmp_path / "answers.jsonl", ["A0", "A1", "A2", "A3", "A4", "A5"])
    judge = ScriptedJudge({"A0": ["6 3\nexplanation"], "A1": ["6,3"], "A2": ["8 4"],
                           "A3": ["8, 7\nno score: three parts"],  # every try: [-1, -1]
                           "A4": ["Scores: 9 9", "9 9"], "A5": ["8 7"]}, llava_answer)
    server = FakeOpenAI(judge)
    try:
        m = run("llava_bench", tmp_path, [questions], answers, server)
        # (gpt4, ours): q0 (6,3) q1 (6,3) q2 (8,4) q3 (-1,-1) after 3 tries, q4 (9,9) on its 2nd try, q5 (8,7).
        # conv    q0,q4: means 7.5, 6.0 -> 6.0/7.5*100 = 80.0; x10: 75.0, 60.0
        # detail  q1,q5: means 7.0, 5.0 -> 71.428.. -> 71.4;   70.0, 50.0
        # complex q2,q3: means (8-1)/2 = 3.5, (4-1)/2 = 1.5 -> 42.857.. -> 42.9; 35.0, 15.0 (the -1s count)
        # all: sums 36, 25 over 6 -> 6.0 and 4.1666.. rounded to 4.167 FIRST -> 4.167/6.0*100 = 69.45 -> 69.5
        #      (from the unrounded means it would be 69.44.. -> 69.4); x10: 60.0, 41.67 -> 41.7
        assert m["overall"] == 69.5
        assert m["summary"] == {
            "all": {"relative": 69.5, "gpt4": 60.0, "model": 41.7, "count": 6},
            "llava_bench_complex": {"relative": 42.9, "gpt4": 35.0, "model": 15.0, "count": 2},
            "llava_bench_conv": {"relative": 80.0, "gpt4": 75.0, "model": 60.0, "count": 2},
            "llava_bench_detail": {"relative": 71.4, "gpt4": 70.0, "model": 50.0, "count": 2}}
        assert m["relative"] == {"complex": 42.9, "conv": 80.0, "detail": 71.4}
        out = capsys.readouterr().out
        assert "all 69.5 60.0 41.7; llava_bench_complex 42.9 35.0 15.0" in out
        assert f"[judge judge-x at {server.url}: 1 of 6 without a score]" in out
        assert BENCHMARKS["llava_bench"]().table_value(m) == 69.5
        # 1 + 1 + 1 + 3 + 2 + 1 requests; one grading without a score, two retried.
        assert len(server.requests) == 9
        assert {k: m["judge"][k] for k in ("server", "model", "requests_sent", "unparsed", "retried")} == {
            "server": server.url, "model": "judge-x", "requests_sent": 9, "unparsed": 1, "retried": 2}
        first = next(r for r in server.requests if llava_answer(r["messages"][1]["content"]) == "A0")
        assert first["model"] == "judge-x" and first["temperature"] == 0.2 and first["max_tokens"] == 1024
        assert first["messages"][0] == {"role": "system", "content": SYSTEM}
        # The review: the caption list joined by newlines, GPT-4 as Assistant 1, ours as Assistant 2.
        assert first["messages"][1]["content"] == (
            "[Context]\na red square\non white\n\n[Question]\nQuestion 0?\n\n[Assistant 1]\nReference 0.\n\n"
            "[End of Assistant 1]\n\n[Assistant 2]\nA0\n\n[End of Assistant 2]\n\n[System]\n" + RULE + "\n\n")
        scores = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
        assert [s["score"] for s in scores] == [0.3, 0.3, 0.4, 0.0, 0.9, 0.7]  # ours / 10; a failure 0

        # A re-run asks the judge nothing (judge.jsonl holds every reply); a changed answer is asked anew.
        log = [json.loads(line) for line in (tmp_path / "out" / "judge.jsonl").read_text().splitlines()]
        assert len(log) == 9 and [e["reply"] for e in log if e["qid"] == "4"] == ["Scores: 9 9", "9 9"]
        assert run("llava_bench", tmp_path, [questions], answers, server)["overall"] == 69.5
        assert len(server.requests) == 9
        judge.replies["B0"] = ["6 6"]
        changed = llava_answers(tmp_path / "changed.jsonl", ["B0", "A1", "A2", "A3", "A4", "A5"])
        m = run("llava_bench", tmp_path, [questions], changed, server)
        assert len(server.requests) == 10 and m["judge"]["requests_sent"] == 1 and m["judge"]["replies_reused"] == 8
        # conv now (6,6),(9,9): means 7.5, 7.5 -> 100.0
        assert m["relative"]["conv"] == 100.0
    finally:
        server.close()


def test_llava_bench_files_and_refusals(tmp_path, capsys):
    root = tmp_path / "bench"
    questions = llava_bench_files(root)
    bench = BENCHMARKS["llava_bench"]()
    assert "images" in bench.locate(root)  # no images/ folder yet: one line naming what is missing
    (root / "images").mkdir()
    files = bench.locate(root)
    assert files.questions == [root / "questions.jsonl", root / "context.jsonl"]
    assert files.annotations == root / "answers_gpt4.jsonl" and files.images == root / "images"
    # A question whose image has no context line, or without a GPT-4 answer: counted skips.
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    jsonl(root / "questions.jsonl", rows + [{"image": "003.png", "text": "?", "category": "conv", "question_id": 6},
                                            {"image": "001.png", "text": "?", "category": "conv", "question_id": 7}])
    loaded = bench.read([questions], None, None)
    assert len(loaded.questions) == 6 and loaded.skipped == {"no_context": 1, "no_reference_answer": 1}
    assert loaded.questions[0].truth == {"reference": "Reference 0.", "context": "a red square\non white"}
    jsonl(root / "questions.jsonl", rows + [{"image": "001.png", "text": "?", "category": "chat", "question_id": 8}])
    with pytest.raises(Exception, match="category 'chat' has no judge prompt"):
        bench.read([questions], None, None)
    jsonl(root / "questions.jsonl", rows)
    answers = llava_answers(tmp_path / "answers.jsonl", ["A"] * 6)
    with pytest.raises(SystemExit) as exc:  # no judge: one line, nothing written
        evaluate.main(["--benchmark", "llava_bench", "--questions", str(questions), "--predictions", str(answers),
                       "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "--judge-server" in err
    assert not (tmp_path / "out" / "metrics.json").exists()
    server = FakeOpenAI("8 7", fail_with=500)  # a judge that refuses: one line, no metrics
    try:
        with pytest.raises(SystemExit) as exc:
            run("llava_bench", tmp_path, [questions], answers, server)
    finally:
        server.close()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "judging" not in line]  # less the bar
    assert exc.value.code == 2 and len(err) == 1 and "HTTP 500: model exploded" in err[0] and "resume" in err[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


# -- MM-Vet ----------------------------------------------------------------------------------------

MMVET = {
    "v1_0": {"imagename": "v1_0.png", "capability": ["rec"], "question": "What colour is it?", "answer": "red"},
    "v1_1": {"imagename": "v1_1.png", "capability": ["ocr", "math"], "question": "What is x?", "answer": "-1<AND>-5"},
    "v1_2": {"imagename": "v1_2.png", "capability": ["math", "ocr"], "question": "What is y?", "answer": "3"},
    "v1_3": {"imagename": "v1_3.png", "capability": ["rec", "know", "gen"], "question": "Explain.", "answer": "a"},
    "v1_4": {"imagename": "v1_4.png", "capability": ["rec", "ocr", "rec"], "question": "Read it.", "answer": "b"},
}


def test_parse_correctness_as_the_mmvet_evaluator():
    # content.split(" ")[0].strip(), float, within [0, 1].
    assert [parse_correctness(r) for r in ("0.5", "0.5\n", "1.0 ok", "0.55", "0")] == [0.5, 0.5, 1.0, 0.55, 0.0]
    for reply in (" 0.5", "1.5", "0.5.", "-0.1", "", "Correctness: 1"):
        assert parse_correctness(reply) is None, reply


def test_mmvet_capabilities_and_retries_as_the_evaluator(tmp_path, capsys):
    questions = write(tmp_path / "mm-vet" / "mm-vet.json", MMVET)
    results = write(tmp_path / "results.json", {f"v1_{n}": f"P{n}" for n in range(5)})
    judge = ScriptedJudge({"P0": ["1.0"], "P1": ["0.5"], "P2": [" 0.4", "0.4"], "P3": ["1.5"], "P4": ["0.8 because"]},
                          mmvet_answer)
    server = FakeOpenAI(judge)
    try:
        m = run("mmvet", tmp_path, [questions], results, server)
        # Scores: v1_0 1.0, v1_1 0.5, v1_2 0.4 (2nd try), v1_3 0.0 (no score in 5 tries), v1_4 0.8.
        # rec  (v1_0, v1_3, v1_4; v1_4 lists rec twice, counted once): 1.8 / 3 * 100 = 60.0
        # ocr  (v1_1, v1_2, v1_4): 1.7000000000000002 / 3 * 100 = 56.67 -> 56.7
        # math (v1_1, v1_2): 0.9 / 2 * 100 = 45.0; know, gen (v1_3): 0.0
        # total: 2.7 / 5 * 100 = 54.0
        assert m["overall"] == 54.0 and m["count"] == 5
        assert m["capabilities"] == {"ocr": 56.7, "rec": 60.0, "math": 45.0, "gen": 0.0, "know": 0.0}
        assert list(m["capabilities"]) == ["ocr", "rec", "math", "gen", "know"]  # by count, then name
        # Integrations are sets: ["ocr", "math"] and ["math", "ocr"] are one (0.9 / 2); {rec, ocr} 0.8 / 1.
        assert m["capability_integrations"] == {"math_ocr": 45.0, "gen_know_rec": 0.0, "ocr_rec": 80.0, "rec": 100.0}
        assert "total 54.0 (ocr 56.7, rec 60.0" in capsys.readouterr().out
        assert BENCHMARKS["mmvet"]().table_value(m) == 54.0
        assert m["judge"]["unparsed"] == 1 and m["judge"]["retried"] == 2 and m["judge"]["model"] == "judge-x"

        # v1_3: asked 6 times: at 0.0, then retries at 0.0, 0.5, 1.0, 1.5, and a last one at 2.0 never read.
        tries = [r for r in server.requests if mmvet_answer(r["messages"][0]["content"]) == "P3"]
        assert [r["temperature"] for r in tries] == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
        assert all(r["max_tokens"] == 3 and len(r["messages"]) == 1 for r in tries)
        assert not tries[0]["messages"][0]["content"].endswith(RETRY)
        assert all(r["messages"][0]["content"].endswith(RETRY) for r in tries[1:])
        assert len(server.requests) == 1 + 1 + 2 + 6 + 1
        # The message: prompt, newline, "question | truth with spaced <AND> | prediction | ".
        first = next(r for r in server.requests if mmvet_answer(r["messages"][0]["content"]) == "P1")
        assert first["messages"][0]["content"] == PROMPT + "\nWhat is x? | -1 <AND> -5 | P1 | "
    finally:
        server.close()


def test_mmvet_rounds_like_numpy(tmp_path):
    """round() of a numpy float is rint(x * 10) / 10: 0.15 (binary 0.1499..) * 10 = 1.5 -> 2 -> 0.2,
    where Python's correctly rounded round(0.15, 1) is 0.1."""
    data = {f"v1_{n}": {"imagename": f"v1_{n}.png", "capability": ["math"], "question": "q", "answer": "a"}
            for n in range(10)}
    questions = write(tmp_path / "mm-vet.json", data)
    results = write(tmp_path / "results.json", {f"v1_{n}": f"P{n}" for n in range(10)})
    server = FakeOpenAI(lambda body: "0.015" if mmvet_answer(body["messages"][0]["content"]) == "P0" else "0.0")
    try:
        m = run("mmvet", tmp_path, [questions], results, server)
        assert m["overall"] == 0.2 and m["capabilities"] == {"math": 0.2}  # 0.015 / 10 * 100 = 0.15
    finally:
        server.close()


def test_mmvet_results_file_is_checked(tmp_path, capsys):
    questions = write(tmp_path / "mm-vet.json", MMVET)
    bad = write(tmp_path / "bad.json", {"v1_0": "red", "v1_1": 3})
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--benchmark", "mmvet", "--questions", str(questions), "--predictions", str(bad),
                       "--output", str(tmp_path / "out"), "--judge-server", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "v1_1" in err
    root = tmp_path / "root"
    write(root / "mm-vet.json", MMVET)
    (root / "images").mkdir()
    assert BENCHMARKS["mmvet"]().locate(root).questions == [root / "mm-vet.json"]


# -- end to end with the colour checkpoint -----------------------------------------------------------


def test_a_checkpoint_answers_llava_bench_judged_by_a_server(trained, tmp_path):
    root = tmp_path / "llava-bench"
    jsonl(root / "questions.jsonl", [{"image": "001.png", "text": "What colour is it?", "category": "conv", "question_id": 0},
                                     {"image": "002.png", "text": "What colour is it?", "category": "detail", "question_id": 1}])
    jsonl(root / "context.jsonl", [{"id": "a", "image": "001.png", "caption": "red"}, {"id": "b", "image": "002.png",
                                                                                       "caption": "blue"}])
    jsonl(root / "answers_gpt4.jsonl", [{"question_id": 0, "text": "It is red."}, {"question_id": 1, "text": "Blue."}])
    (root / "images").mkdir()
    shutil.copy(trained.red, root / "images" / "001.png")
    shutil.copy(trained.blue, root / "images" / "002.png")

    def judge(body):  # 10 for ours when it names the caption's colour, else 1; GPT-4 always 5
        content = body["messages"][1]["content"]
        caption = content.split("[Context]\n")[1].split("\n")[0]
        return f"5 {10 if llava_answer(content) == caption else 1}\nbecause"

    server = FakeOpenAI(judge)
    out = tmp_path / "out"
    try:
        assert evaluate.main(["--checkpoint", str(trained.checkpoint), "--benchmark", "llava_bench", "--questions",
                              str(root / "questions.jsonl"), "--images", str(root / "images"), "--output", str(out),
                              "--max-new-tokens", "8", "--judge-server", server.url]) == 0
    finally:
        server.close()
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert lines[0]["produced_by"]["prompt_suffix"] == "" and [x["answer"] for x in lines[1:]] == ["red", "blue"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"] == 200.0  # means 5.0 and 10.0: 10.0 / 5.0 * 100
    assert metrics["judge"]["model"] == "tiny-vqa"  # no --judge-model: the one the server lists


def test_a_checkpoint_answers_mmvet_judged_by_a_server(trained, tmp_path):
    data = {"v1_0": {"imagename": "v1_0.png", "capability": ["rec"], "question": "What colour is it?", "answer": "red"},
            "v1_1": {"imagename": "v1_1.png", "capability": ["rec", "ocr"], "question": "What colour is it?",
                     "answer": "blue"}}
    questions = write(tmp_path / "mm-vet" / "mm-vet.json", data)
    images = tmp_path / "mm-vet" / "images"
    images.mkdir()
    shutil.copy(trained.red, images / "v1_0.png")
    shutil.copy(trained.blue, images / "v1_1.png")

    def judge(body):  # 1.0 when the prediction is the ground truth
        parts = body["messages"][0]["content"].rsplit(" | ", 3)
        return "1.0" if parts[1] == parts[2] else "0.0"

    server = FakeOpenAI(judge)
    out = tmp_path / "out"
    try:
        assert evaluate.main(["--checkpoint", str(trained.checkpoint), "--benchmark", "mmvet", "--questions",
                              str(questions), "--images", str(images), "--output", str(out), "--max-new-tokens", "8",
                              "--judge-server", server.url, "--judge-model", "judge-x"]) == 0
    finally:
        server.close()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"] == 100.0 and metrics["capabilities"] == {"rec": 100.0, "ocr": 100.0}
    assert len(server.requests) == 2 and (out / "judge.jsonl").read_text().count("\n") == 2

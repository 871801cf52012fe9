"""A judge model that scores free-form answers, over any OpenAI-compatible server (a vLLM, say).

LLaVA-Bench (In-the-Wild) and MM-Vet are scored by asking a language model (GPT-4 in their papers)
to grade each answer; ``evaluate.py --judge-server URL --judge-model NAME`` names the one to ask.
Each benchmark says what to ask (its own prompts, temperatures, reply lengths: a list of
:class:`Request` s tried in order) and how to read a reply (``parse``: a score, or None when the
reply holds none); :meth:`Judge.grade` asks until a reply parses and otherwise returns a grade
without a value, which the benchmark then scores as its official code does and which is counted
(``unparsed`` in metrics.json).

Every reply is appended, as it comes, to ``<output>/judge.jsonl`` (whole fsynced lines) with the
key of what was asked: the question, the request (judge model, messages -- the prompt, the
question, the answer --, temperature, reply length) and the try's number. A re-run reads the file
and asks the server only what it does not hold, so an interrupted or repeated scoring never asks
the judge twice for the same thing, and another answer or judge model is asked afresh. The server
is reached through :class:`inference.remote.RemotePredictor` (the same HTTP code as ``--server``);
a request the server refuses stops the scoring with one line (what was graded is kept).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from errors import UserError, one_line

if TYPE_CHECKING:  # evaluation.benchmarks imports this module: no import back at run time
    from evaluation.benchmarks.base import JudgeServer, Question

JUDGE_LOG = "judge.jsonl"


@dataclass(frozen=True)
class Request:
    """One chat completion asked of the judge. ``scored`` False: asked and kept, but its reply never
    counts (MM-Vet's last try)."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    temperature: float
    max_tokens: int
    scored: bool = True

    def payload(self, model: str | None) -> dict:
        body = {"messages": [{"role": r, "content": c} for r, c in self.messages],
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        return {"model": model, **body} if model else body


@dataclass
class Grade:
    """A question's grading: the parsed score (None when no reply could be parsed) and every reply."""

    qid: str
    value: Any
    replies: list[str] = field(default_factory=list)


class Judge:
    """The judge server of one scoring, with the replies already kept in ``log`` (None: none kept)."""

    def __init__(self, server: JudgeServer, log: Path | None, benchmark: str, concurrency: int = 8,
                 timeout: float = 600.0) -> None:
        from inference.remote import RemotePredictor

        self.server, self.log, self.benchmark, self.concurrency = server, log, benchmark, max(1, concurrency)
        self.client = RemotePredictor(server.url, server.model, timeout=timeout)
        self.model = self.client.model_name()  # --judge-model, else the first the server lists
        self.kept = self._read_log()
        self.asked = self.reused = 0
        self.served_by: set[str] = set()
        self._graded: dict[tuple[str, ...], Grade] = {}
        self._lock = threading.Lock()

    def _read_log(self) -> dict[str, str]:
        from dataset.jsonl import repair_jsonl

        kept: dict[str, str] = {}
        if self.log is None or not self.log.is_file():
            return kept
        repair_jsonl(self.log)
        with open(self.log, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    if isinstance(entry.get("reply"), str):
                        kept[entry["key"]] = entry["reply"]
                except (ValueError, AttributeError, KeyError, TypeError):
                    continue  # a damaged line: asked again
        return kept

    def key(self, qid: str, attempt: int, request: Request) -> str:
        what = {"benchmark": self.benchmark, "qid": qid, "attempt": attempt, **request.payload(self.model or "")}
        return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def ask(self, qid: str, attempt: int, request: Request) -> str:
        """The judge's reply to ``request`` (the ``attempt``-th try for ``qid``): kept, or asked now and kept."""
        key = self.key(qid, attempt, request)
        with self._lock:
            if key in self.kept:
                self.reused += 1
                return self.kept[key]
        try:
            response = self.client.complete(request.payload(self.model))
        except UserError as exc:
            raise UserError(f"judge: {one_line(exc)} (the replies so far are kept in "
                            f"{self.log or 'no file'}; run again to resume)") from None
        try:
            reply = response["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            reply = ""  # a reply without a message holds no score: parsed as such (and retried)
        entry = {"key": key, "benchmark": self.benchmark, "qid": qid, "attempt": attempt, "judge_model": self.model,
                 "temperature": request.temperature, "max_tokens": request.max_tokens, "reply": reply,
                 "served_by": response.get("model") if isinstance(response, dict) else None}
        with self._lock:
            self.asked += 1
            if isinstance(entry["served_by"], str):
                self.served_by.add(entry["served_by"])
            self.kept[key] = reply
            if self.log is not None:
                from dataset.jsonl import append_lines

                self.log.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log, "a", encoding="utf-8") as f:
                    append_lines(f, [entry])
        return reply

    def grade(self, qid: str, requests: Sequence[Request], parse: Callable[[str], Any]) -> Grade:
        """Ask ``requests`` in order until a scored one's reply parses (``parse`` not None)."""
        replies = []
        for attempt, request in enumerate(requests):
            replies.append(self.ask(qid, attempt, request))
            if request.scored:
                value = parse(replies[-1])
                if value is not None:
                    return Grade(qid, value, replies)
        return Grade(qid, None, replies)

    def grade_all(self, jobs: Sequence[tuple[str, Sequence[Request]]], parse: Callable[[str], Any]) -> dict[str, Grade]:
        """Every job's grade (``{qid: Grade}``), several questions at a time; a grading done before
        in this scoring is returned again without asking or counting anything."""
        from tqdm import tqdm

        keyed = [(qid, requests, tuple(self.key(qid, n, r) for n, r in enumerate(requests))) for qid, requests in jobs]
        todo = [(qid, requests, keys) for qid, requests, keys in keyed if keys not in self._graded]

        def one(job):
            qid, requests, keys = job
            return keys, self.grade(qid, requests, parse)

        with tqdm(total=len(todo), unit="q", desc="judging", dynamic_ncols=True, file=sys.stderr,
                  disable=not todo) as bar, ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for keys, grade in pool.map(one, todo):
                self._graded[keys] = grade
                bar.update(1)
        return {qid: self._graded[keys] for qid, _, keys in keyed}

    def describe(self) -> dict:
        """What metrics.json records about the judge."""
        grades = list(self._graded.values())
        return {"server": self.server.url, "model": self.model, "served_by": sorted(self.served_by),
                "log": str(self.log) if self.log else None, "requests_sent": self.asked, "replies_reused": self.reused,
                "graded": len(grades), "retried": sum(len(g.replies) > 1 for g in grades),
                "unparsed": sum(g.value is None for g in grades)}


class Judged:
    """What a benchmark scored by a judge model (``--judge-server``) shares, mixed in before
    :class:`evaluation.benchmarks.base.Benchmark`: asked as LLaVA-1.5 asks "natural QA" benchmarks --
    the question as it is, no suffix, answers up to 1024 tokens (``model_vqa.py``) -- and graded by
    :class:`Judge`, its replies kept in the output folder."""

    prompt_suffix = ""
    needs = ("questions", "images", "judge")
    max_new_tokens = 1024
    _client: Judge | None = None

    def requests(self, question: Question, answer: str) -> list[Request]:
        raise NotImplementedError

    def parse(self, reply: str) -> Any:
        raise NotImplementedError

    def results_answer(self, reply: str) -> str:
        return reply.strip()  # model_vqa.py writes outputs.strip() as the answer's "text"

    def client(self) -> Judge:
        from evaluation.benchmarks.base import BenchmarkError

        if self.judge is None:
            raise BenchmarkError(f"{self.name} is scored by a judge model: give --judge-server URL (an "
                                 "OpenAI-compatible server) and --judge-model NAME")
        if self._client is None or self._client.server != self.judge:
            self._client = Judge(self.judge, self.workdir / JUDGE_LOG if self.workdir is not None else None, self.name)
        return self._client

    def judge_note(self, metrics: Mapping) -> str:
        """Who judged, and how many gradings had no score, after the official line of the headline."""
        judge = metrics.get("judge")
        if not isinstance(judge, Mapping):
            return ""
        return (f" [judge {judge['model'] or 'server default'} at {judge['server']}: "
                f"{judge['unparsed']} of {judge['graded']} without a score]")

    def grades(self, questions: Sequence[Question], answers: Mapping[str, str]) -> dict[str, Grade]:
        """The judge's grade of every answered question, in question order."""
        asked = [q for q in questions if q.qid in answers]
        return self.client().grade_all([(q.qid, self.requests(q, answers[q.qid])) for q in asked], self.parse)

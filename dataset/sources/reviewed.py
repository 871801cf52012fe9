"""Reviewed pre-annotations: an ``infer.py`` answers file plus the review log ``gui.py --review`` wrote.

``annotations`` is the answers file (``answers.jsonl``); its log (``answers.review.jsonl``) is read
beside it. Accepted and edited answers become training records (the reviewer's final answer);
rejected, skipped and undecided ones are counted skips, and so are decisions about an answer the
file no longer holds (``answer_changed``: the answers file was rewritten after the review began)
and malformed lines in the middle of the log (``bad_review_log_line``). An edited answer also yields a preference
pair (chosen: the reviewer's answer, rejected: the model's), written to ``preferences.jsonl``.
Image paths are as infer.py wrote them, relative to ``image_dir`` (default: the directory
process_image.py runs in, as for infer.py).
"""

from __future__ import annotations

from typing import Any

from dataset.review import ReviewError, changed_detail, log_path, read_answers, read_log
from dataset.sources.base import BadRecord, Candidate, MergeError, Source, message

# Skip reasons for items whose decision keeps them out of training.
NOT_KEPT = {"reject": "review_rejected", "skip": "review_skipped", None: "not_reviewed"}
_PAST = {"reject": "rejected", "skip": "skipped"}


class ReviewedSource(Source):
    def read(self, path: str) -> list[tuple[int, Any]]:
        try:
            answers = read_answers(path)
            state, _ = read_log(log_path(path), answers)  # a cut-off last line is ignored
        except ReviewError as exc:
            raise MergeError(str(exc)) from None
        items = [(item.line, (item, state.current(item.key))) for item in answers.items]
        items += [(line, (reason, detail)) for line, reason, detail in answers.problems]
        items.sort(key=lambda pair: pair[0])
        # The log's own bad lines, after the answers (their positions name log lines).
        return items + [(("log", line), ("bad_review_log_line", why)) for line, why in state.ignored]

    def parse(self, line: int, raw: Any) -> Candidate:
        first, second = raw
        if isinstance(first, str):  # an answers-file line that could not be reviewed
            raise BadRecord(first, second)
        item, decision = first, second
        if decision is not None and decision.model_answer != item.answer:
            raise BadRecord("answer_changed", changed_detail(item, decision))
        kind = decision.decision if decision else None
        if kind not in ("accept", "edit"):
            detail = f"{_PAST[kind]} by {decision.reviewer}" if decision else "no review decision"
            raise BadRecord(NOT_KEPT[kind], detail)
        messages = [message("user", f"{self.image_token}\n{item.question}"),
                    message("assistant", decision.final_answer.strip())]
        return Candidate(item.record_id if item.record_id is not None else f"line{line}", item.image, messages, {},
                         tally="accepted" if kind == "accept" else "edited",
                         rejected=decision.model_answer.strip() if kind == "edit" else None)

    @staticmethod
    def where(line) -> str:
        return f"review log line {line[1]}" if isinstance(line, tuple) else f"line {line}"

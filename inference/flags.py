"""Which pre-annotated answers a person should check, and why.

``infer.py --images ... --output answers.jsonl`` writes ``review: true`` and the rules that fired
(``flags``) for each answer; ``gui.py --review`` shows the flagged ones first. The rules come from
the config's generation section (``review_threshold``, ``review_words``, ``review_max_chars``).
Ranking by confidence is what makes the queue useful (bench/RESULTS.md, review calibration); the
word and length rules catch answers that are confidently hedged or rambling.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

LOW_CONFIDENCE = "low_confidence"
NO_CONFIDENCE = "no_confidence"  # a server that returns no log-probabilities
EMPTY = "empty"
TOO_LONG = "too_long"
HEDGE = "hedge:"  # + the word


def _word_pattern(word: str) -> re.Pattern:
    """Latin words match whole words in any case ("maybe" in "Maybe red", not in "maybelline");
    words in scripts without spaces (可能) match anywhere."""
    escaped = re.escape(word.strip())
    if word.isascii():
        return re.compile(rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])", re.IGNORECASE)
    return re.compile(escaped)


@dataclass(frozen=True)
class ReviewRules:
    threshold: float
    words: tuple[str, ...] = ()
    max_chars: int = 0

    @classmethod
    def from_config(cls, generation, threshold: float | None = None) -> "ReviewRules":
        """From ``config.GenerationSettings``; ``threshold`` (a command-line flag) wins when given."""
        return cls(generation.review_threshold if threshold is None else threshold,
                   tuple(w for w in generation.review_words if w.strip()), generation.review_max_chars)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_patterns", [(w, _word_pattern(w)) for w in self.words])

    def flags(self, answer: str, confidence: float | None) -> list[str]:
        """The rules ``answer`` breaks, in a fixed order; empty when it needs no review."""
        fired = []
        if confidence is None or not math.isfinite(confidence):
            fired.append(NO_CONFIDENCE)
        elif confidence < self.threshold:
            fired.append(LOW_CONFIDENCE)
        text = answer.strip()
        if not text:
            fired.append(EMPTY)
        elif self.max_chars and len(text) > self.max_chars:
            fired.append(TOO_LONG)
        fired += [HEDGE + word for word, pattern in self._patterns if pattern.search(text)]
        return fired

    def describe(self) -> str:
        """One line for the end of a batch run."""
        rules = [f"confidence < {self.threshold}", "empty"]
        if self.max_chars:
            rules.append(f"longer than {self.max_chars} characters")
        if self.words:
            rules.append(f"hedging words ({len(self.words)})")
        return ", ".join(rules)

"""The review queue without any Tk: order, filter, decisions, undo, keys, progress.

``ui.review_window`` draws a :class:`ReviewSession` and turns key presses into its commands
through :func:`action_for_key`; everything else (what a key does, where the queue goes next, what
is written to the log) is here and unit-tested without a display. A decision is written to the
log (``dataset.review``) and fsynced *before* the state changes, so what the window shows has
always reached the disk.
"""

from __future__ import annotations

from dataclasses import asdict

from dataset.review import Answers, Decision, ReviewItem, ReviewLog, ReviewState, UNDO, image_exists, now

# Keys (Tk keysyms) -> commands when no answer is being edited. Any other printable character
# starts an edit with that character, so a correction can simply be typed.
KEYS = {
    "Return": "accept", "KP_Enter": "accept",
    "e": "edit", "E": "edit",
    "Delete": "reject", "KP_Delete": "reject",
    "s": "skip", "S": "skip",
    "u": "undo", "U": "undo",
    "Left": "previous", "Right": "next",
    "f": "toggle_flagged", "F": "toggle_flagged",
}
# Keys while the edit box is open.
EDIT_KEYS = {"Return": "save_edit", "KP_Enter": "save_edit", "Escape": "cancel_edit"}

SHORTCUTS = [
    ("Enter", "accept the model's answer"),
    ("e, or just type", "edit the answer; Enter saves the correction, Esc cancels"),
    ("Delete", "reject (the answer is wrong and should not be trained on)"),
    ("s", "skip (decide later; not trained on)"),
    ("u", "undo the last decision"),
    ("Left / Right", "previous / next item"),
    ("f", "show only flagged items / all items"),
]


def action_for_key(keysym: str, char: str, editing: bool, modifiers: bool = False) -> tuple[str, str] | None:
    """What a key press does: ``(command, text)`` or None (let the widget have it).

    ``text`` is the typed character for ``("type", char)``, which opens the edit box with it.
    Keys with Control/Alt held are left alone (window shortcuts such as Ctrl+Q).
    """
    if modifiers:
        return None
    if editing:
        command = EDIT_KEYS.get(keysym)
        return (command, "") if command else None
    command = KEYS.get(keysym)
    if command:
        return command, ""
    if char and char.isprintable() and not char.isspace():
        return "type", char
    return None


def queue_order(item: ReviewItem) -> tuple:
    """Least confident first; answers without a confidence before all others; then file order."""
    return (item.confidence is not None, item.confidence if item.confidence is not None else 0.0, item.line)


class ReviewSession:
    """One person clearing the queue of an answers file. ``log`` None: read-only (no decisions)."""

    def __init__(self, answers: Answers, state: ReviewState, log: ReviewLog | None, reviewer: str,
                 flagged_only: bool = False) -> None:
        self.answers = answers
        self.state = state
        self.log = log
        self.reviewer = reviewer
        self.queue = sorted(answers.items, key=queue_order)
        self.flagged_only = flagged_only and any(item.flagged for item in self.queue)
        self.message = ""
        self.visible: list[int] = []
        self.position = 0
        self._filter()
        self.position = self._first_undecided(0) or 0

    # -- what is shown --------------------------------------------------------------------

    @property
    def current(self) -> ReviewItem | None:
        return self.queue[self.visible[self.position]] if self.visible else None

    def decision(self, item: ReviewItem | None = None) -> Decision | None:
        item = item or self.current
        return self.state.current(item.key) if item else None

    @property
    def decided(self) -> int:
        return sum(self.state.current(item.key) is not None for item in self.queue)

    @property
    def flagged_left(self) -> int:
        return sum(item.flagged and self.state.current(item.key) is None for item in self.queue)

    def progress(self) -> str:
        return f"{self.decided} / {len(self.queue)} reviewed · {self.flagged_left} flagged left"

    def counts(self) -> dict[str, int]:
        out = {"accept": 0, "edit": 0, "reject": 0, "skip": 0, "undecided": 0}
        for item in self.queue:
            d = self.state.current(item.key)
            out[d.decision if d else "undecided"] += 1
        return out

    # -- commands -------------------------------------------------------------------------

    def command(self, name: str, text: str = "") -> None:
        """Run a command by name (see KEYS); ``text`` is the edited answer for ``save_edit``."""
        if name in ("accept", "reject", "skip"):
            getattr(self, name)()
        elif name == "save_edit":
            self.edit(text)
        elif name == "undo":
            self.undo()
        elif name in ("previous", "next"):
            self.move(-1 if name == "previous" else 1)
        elif name == "toggle_flagged":
            self.toggle_flagged()
        else:
            raise ValueError(f"unknown review command {name!r}")

    def accept(self) -> None:
        self._decide("accept")

    def edit(self, text: str) -> None:
        """Save a corrected answer; the model's own answer saved unchanged counts as accepted."""
        text = " ".join(text.split()) if "\n" in text else text.strip()
        item = self.current
        if item is None:
            return
        if not text:
            self.message = "The corrected answer is empty: type an answer, or press Delete to reject"
            return
        self._decide("accept" if text == item.answer.strip() else "edit", text)

    def reject(self) -> None:
        self._decide("reject")

    def skip(self) -> None:
        self._decide("skip")

    def undo(self) -> None:
        key = self.state.last()
        if key is None:
            self.message = "Nothing to undo"
            return
        self._write({"item": list(key), "decision": UNDO, "reviewer": self.reviewer, "time": now()})
        undone = self.state.current(key)
        self.state.apply({"item": list(key), "decision": UNDO})
        self._go_to(key)
        self.message = f"Undid: {undone.decision}"

    def move(self, step: int) -> None:
        if self.visible:
            self.position = max(0, min(len(self.visible) - 1, self.position + step))
            self.message = ""

    def toggle_flagged(self) -> None:
        if not self.flagged_only and not any(item.flagged for item in self.queue):
            self.message = "No item is flagged"
            return
        current = self.current
        self.flagged_only = not self.flagged_only
        self._filter()
        if current is not None and self._go_to(current.key):
            pass
        else:
            self.position = self._first_undecided(0) or 0
        self.message = "Showing flagged items only" if self.flagged_only else "Showing all items"

    # -- internals ------------------------------------------------------------------------

    def _write(self, entry: dict) -> None:
        if self.log is None:
            raise PermissionError("this review is read-only")
        self.log.write(entry)  # durable before the state (and the screen) changes

    def _decide(self, kind: str, final: str | None = None) -> None:
        item = self.current
        if item is None:
            return
        if kind == "accept":
            final = item.answer.strip()
            if not final:
                self.message = "The model's answer is empty: type one (e), or press Delete to reject"
                return
        decision = Decision(item.key, kind, item.answer, final, self.reviewer, now())
        self._write(decision.to_json())
        self.state.apply(decision.to_json())
        following = self._first_undecided(self.position + 1)
        if following is None:
            self.message = ("All flagged items reviewed (f shows all)" if self.flagged_only
                            else f"All {len(self.queue)} items reviewed")
        else:
            self.position = following
            self.message = f"{_PAST[kind]}: {_short(final if final is not None else item.answer)}"

    def _filter(self) -> None:
        self.visible = [i for i, item in enumerate(self.queue) if item.flagged or not self.flagged_only]
        self.position = min(self.position, max(0, len(self.visible) - 1))

    def _first_undecided(self, start: int) -> int | None:
        """Position of the first undecided visible item from ``start`` on, wrapping around."""
        n = len(self.visible)
        for offset in range(n):
            p = (start + offset) % n
            if self.state.current(self.queue[self.visible[p]].key) is None:
                return p
        return None

    def _go_to(self, key) -> bool:
        for p, index in enumerate(self.visible):
            if self.queue[index].key == key:
                self.position = p
                return True
        return False

    def to_dict(self) -> dict:
        item = self.current
        decision = self.decision()
        return {
            "answers": str(self.answers.path),
            "reviewer": self.reviewer,
            "position": self.position,
            "visible": len(self.visible),
            "flagged_only": self.flagged_only,
            "progress": self.progress(),
            "counts": self.counts(),
            "message": self.message,
            "current": None if item is None else {
                "line": item.line, "image": item.image, "question": item.question, "answer": item.answer,
                "confidence": item.confidence, "flags": item.flags, "flagged": item.flagged,
                "image_exists": image_exists(item),
                "decision": None if decision is None else asdict(decision) | {"item": list(decision.item)},
            },
        }


_PAST = {"accept": "Accepted", "edit": "Corrected", "reject": "Rejected", "skip": "Skipped"}


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"

"""The GUI's logic without any Tk: backends, the worker thread, history, cancellation, errors.

``ui.window`` is a thin Tkinter layer over :class:`Controller`. Everything that can go wrong (a file
that is not an image, a missing checkpoint, a server that does not answer) and everything that
takes time (loading the model, generating) lives here, so it is unit-tested without a display.

Threading model: the controller owns one worker thread that runs jobs (load the backend, answer a
question) one at a time and reports back through a queue. Only :meth:`Controller.poll`, called
from the UI thread (``after`` in Tk), applies those reports to the state (history, status, busy),
so the state is only ever touched by one thread and the UI never waits on the model.

A backend is anything with ``load()`` (slow, may raise :class:`BackendError`), ``description``
and ``ask(image, question, should_stop) -> Iterator[str]`` yielding answer pieces:
:class:`PredictorBackend` (a checkpoint, LLaVA export or GGUF export the app runs itself) and
:class:`ServerBackend` (an OpenAI-compatible ``/v1/chat/completions`` endpoint: vLLM,
``transformers serve``, through ``inference.remote.RemotePredictor``, the client ``infer.py`` uses),
both opened from an :class:`inference.source.ModelSource`, as ``infer.py`` opens its model.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from inference.source import ModelSource
from visual.preprocess import load_image


class BackendError(Exception):
    """A failure the user should see in a dialog (one readable sentence, no traceback)."""


class Backend(Protocol):
    description: str

    def load(self) -> None: ...

    def ask(self, image: str | Path | Image.Image, question: str,
            should_stop: Callable[[], bool]) -> Iterator[str]: ...


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


class PredictorBackend:
    """A model the app runs itself -- a checkpoint, a run directory, a LLaVA export or a GGUF export
    (llama.cpp) -- opened by :meth:`inference.source.ModelSource.open`, as ``infer.py`` opens it."""

    def __init__(self, source: ModelSource, settings=None) -> None:
        self.source = source
        self.settings = settings
        self.predictor = None

    @property
    def description(self) -> str:
        return self.source.describe()

    def load(self) -> None:
        if self.predictor is not None:
            return
        from errors import UserError

        try:
            self.predictor = self.source.open(concurrency=1)  # torch and transformers: off the UI thread
        except (FileNotFoundError, ValueError, OSError, KeyError, UserError) as exc:
            raise BackendError(f"cannot load the model: {exc}") from None

    def ask(self, image, question, should_stop=lambda: False) -> Iterator[str]:
        from errors import UserError

        self.load()
        try:
            yield from self.predictor.stream(image, question, self.settings, should_stop=should_stop)
        except (ValueError, UserError) as exc:  # an image that became unreadable since it was opened
            raise BackendError(str(exc)) from None


class ServerBackend:
    """An OpenAI-compatible server (vLLM, ``transformers serve``) through ``infer.py``'s client,
    :class:`inference.remote.RemotePredictor` (stdlib HTTP; the image goes as a PNG data URL),
    opened by :meth:`inference.source.ModelSource.open` like every other model.

    ``load()`` checks that the server answers ``GET /v1/models`` (so a wrong URL is reported when
    the app starts, not at the first question) and picks the model when none was named. ``ask``
    streams the answer over SSE; with ``stream=False`` it yields the whole answer at once.
    """

    def __init__(self, source: ModelSource, settings=None, stream: bool = True) -> None:
        from inference.remote import RemoteError

        try:
            self.remote = source.open(concurrency=1)
        except RemoteError as exc:
            raise BackendError(str(exc)) from None
        self.settings = settings
        self.stream = stream
        self._checked = False

    @property
    def description(self) -> str:
        model = self.remote.model
        return f"server {self.remote.base}" + (f" ({model})" if model else "")

    def load(self) -> None:
        if self._checked:
            return
        request = urllib.request.Request(self.remote.base + "/v1/models", headers={"Accept": "application/json"})
        if self.remote.api_key:
            request.add_header("Authorization", f"Bearer {self.remote.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.remote.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise BackendError(f"the server at {self.remote.base} refused the request "
                                   f"({exc.code} {exc.reason}): check --api-key") from None
            # Some servers do not list models; the chat endpoint may still work.
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendError(f"cannot reach the server at {self.remote.base}: {reason}") from None
        self.remote.model_name()
        self._checked = True

    def ask(self, image, question, should_stop=lambda: False) -> Iterator[str]:
        from inference.remote import RemoteError

        self.load()
        try:
            if not self.stream:
                text = self.remote.ask(image, question, self.settings).text
                if text and not should_stop():
                    yield text
                return
            yield from self.remote.stream(image, question, self.settings, should_stop=should_stop)
        except RemoteError as exc:
            raise BackendError(str(exc)) from None
        except ValueError as exc:  # the image is not readable (any more)
            raise BackendError(str(exc)) from None
        except OSError as exc:
            raise BackendError(f"the connection to {self.remote.base} failed mid-answer: {exc}") from None


# --------------------------------------------------------------------------------------------
# Controller
# --------------------------------------------------------------------------------------------


@dataclass
class Turn:
    question: str
    answer: str = ""
    # pending -> streaming -> done | stopped | error
    state: str = "pending"
    error: str | None = None


@dataclass
class Event:
    """What :meth:`Controller.poll` reports to the UI.

    kind: ``loaded`` / ``load_error`` (backend), ``started`` / ``piece`` / ``done`` / ``stopped`` /
    ``error`` (the turn at ``index`` of the current history).
    """

    kind: str
    index: int | None = None
    text: str = ""


@dataclass
class _Job:
    kind: str  # "load" | "ask"
    session: int
    index: int = -1
    image: Any = None
    question: str = ""
    backend: Any = None
    stop: threading.Event = field(default_factory=threading.Event)


class Controller:
    """State and jobs of the GUI. Call :meth:`poll` regularly from the UI thread."""

    def __init__(self, backend: Backend, token_delay: float = 0.0) -> None:
        self.backend = backend
        # Test hook (gui.py --test-token-delay): wait this long before each token so tests can
        # act while an answer is being generated. The wait ends at once when Stop is pressed.
        self.token_delay = token_delay
        self.image_path: Path | None = None
        self.image: Image.Image | None = None
        self.history: list[Turn] = []
        self.model_ready = False
        self.loading = False
        self.status = "Ready"
        self.last_error: str | None = None
        self._session = 0  # bumped for every new image: reports for an older history are dropped
        self._current: _Job | None = None
        self._started = time.monotonic()
        self._events: queue.Queue = queue.Queue()
        self._jobs: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="vqa-gui-worker", daemon=True)
        self._worker.start()

    # -- commands (UI thread) -------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.loading or self._current is not None

    @property
    def answering(self) -> bool:
        """An answer is queued or being generated (what Stop would stop)."""
        return self._current is not None

    @property
    def can_ask(self) -> bool:
        return not self.busy and self.image is not None

    def load_backend(self, backend: Backend | None = None) -> None:
        """Load ``backend`` (or the current one) in the background; ``poll`` reports the result."""
        if backend is not None:
            self.backend = backend
            self.model_ready = False
        self.loading = True
        self.status = f"Loading {self.backend.description}…"
        self._jobs.put(_Job("load", self._session, backend=self.backend))

    def open_image(self, path: str | Path) -> Image.Image:
        """Make ``path`` the current image and start a new history.

        Raises ``ValueError`` (nothing changes) when it is not a readable image. An answer still
        being generated for the previous image is stopped and its reports are dropped.
        """
        image = load_image(path)
        self.stop()
        self._current = None
        self._session += 1
        self.image_path = Path(path)
        self.image = image
        self.history = []
        self.status = f"Opened {self.image_path.name} ({image.width}×{image.height})"
        return image

    def ask(self, question: str) -> Turn:
        """Queue ``question`` about the current image; raises ``ValueError`` when that cannot be
        done now (no image, empty question, still busy)."""
        question = question.strip()
        if not question:
            raise ValueError("type a question first")
        if self.image is None:
            raise ValueError("open an image first")
        if self.busy:
            raise ValueError("still busy: wait for the answer or press Stop")
        turn = Turn(question)
        self.history.append(turn)
        job = _Job("ask", self._session, index=len(self.history) - 1, image=self.image_path,
                   question=question, backend=self.backend)
        self._current = job
        self.status = "Generating…" if self.model_ready else f"Loading {self.backend.description}…"
        self._jobs.put(job)
        return turn

    def stop(self) -> bool:
        """Ask the running answer to stop after its current token; True when one was running."""
        if self._current is None:
            return False
        self._current.stop.set()
        self.status = "Stopping…"
        return True

    def close(self) -> None:
        self.stop()
        self._jobs.put(None)

    def poll(self) -> list[Event]:
        """Apply the worker's reports to the state and return them (UI thread only)."""
        events = []
        while True:
            try:
                session, event = self._events.get_nowait()
            except queue.Empty:
                break
            if event.kind in ("loaded", "load_error"):
                self.loading = False
                self.model_ready = event.kind == "loaded"
                if event.kind == "load_error":
                    self.last_error = event.text
                    self.status = f"Model not loaded: {event.text}"
                else:
                    self.status = f"Ready: {event.text}"
                events.append(event)
                continue
            if session != self._session or event.index is None or event.index >= len(self.history):
                continue  # a report about a history that was replaced by a new image
            turn = self.history[event.index]
            if event.kind == "started":
                self.model_ready = True
                self._started = time.monotonic()
                turn.state = "streaming"
                self.status = "Generating… (Esc to stop)"
            elif event.kind == "piece":
                turn.answer += event.text
            else:
                turn.state = event.kind
                if self._current is not None and self._current.index == event.index:
                    self._current = None
                if event.kind == "error":
                    turn.error = self.last_error = event.text
                    self.status = f"Error: {event.text}"
                elif event.kind == "stopped":
                    self.status = "Stopped"
                else:
                    self.status = f"Answered in {time.monotonic() - self._started:.1f} s"
            events.append(event)
        return events

    def to_dict(self) -> dict:
        return {
            "image": str(self.image_path) if self.image_path else None,
            "busy": self.busy,
            "loading": self.loading,
            "model_ready": self.model_ready,
            "status": self.status,
            "last_error": self.last_error,
            "history": [asdict(t) for t in self.history],
        }

    # -- worker thread --------------------------------------------------------------------

    def _report(self, session: int, kind: str, index: int | None = None, text: str = "") -> None:
        self._events.put((session, Event(kind, index, text)))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.kind == "load":
                try:
                    job.backend.load()
                    self._report(job.session, "loaded", text=job.backend.description)
                except BackendError as exc:
                    self._report(job.session, "load_error", text=str(exc))
                except Exception as exc:  # noqa: BLE001 - the app must survive any backend failure
                    traceback.print_exc()
                    self._report(job.session, "load_error", text=f"{type(exc).__name__}: {exc}")
                continue
            self._answer(job)

    def _answer(self, job: _Job) -> None:
        def should_stop() -> bool:
            if self.token_delay and job.stop.wait(self.token_delay):
                return True
            return job.stop.is_set()

        try:
            if job.stop.is_set():
                self._report(job.session, "stopped", job.index)
                return
            job.backend.load()
            self._report(job.session, "started", job.index)
            for piece in job.backend.ask(job.image, job.question, should_stop):
                self._report(job.session, "piece", job.index, piece)
                if job.stop.is_set():
                    break
            self._report(job.session, "stopped" if job.stop.is_set() else "done", job.index)
        except BackendError as exc:
            self._report(job.session, "error", job.index, str(exc))
        except Exception as exc:  # noqa: BLE001 - the app must survive any backend failure
            traceback.print_exc()
            self._report(job.session, "error", job.index, f"{type(exc).__name__}: {exc}")

    def wait_idle(self, timeout: float = 60.0) -> list[Event]:
        """Poll until nothing is running (for tests and scripts without an event loop)."""
        events: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            events += self.poll()
            if not self.busy:
                return events
            if time.monotonic() > deadline:
                raise TimeoutError(f"still busy after {timeout} s: {self.status}")
            time.sleep(0.01)

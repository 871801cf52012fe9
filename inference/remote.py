"""Ask an OpenAI-compatible server (vLLM, ``transformers serve``) instead of a local model.

:class:`RemotePredictor` has the same ``answer``/``stream`` interface as
:class:`inference.predictor.Predictor`, so ``infer.py`` (and anything else) can switch between a local
checkpoint and ``--server URL`` without other changes. Only the standard library is used.

Each question is one ``POST URL/v1/chat/completions`` with one user message whose content is the
image as a PNG ``data:`` URL followed by the question text; greedy decoding is ``temperature 0``.
The answer's confidence (mean token log-probability) comes from ``logprobs`` when the server
returns them (vLLM does); otherwise it is ``None``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from errors import UserError


class RemoteError(UserError, RuntimeError):
    """The server could not be reached or refused a request (one readable line)."""


@dataclass
class RemoteAnswer:
    text: str
    # Mean token log-probability, or None when the server returned no logprobs.
    mean_logprob: float | None
    # Set when the server failed on this question (an HTTP error, an error object, a reply without
    # an answer, a connection cut mid-answer): there is no answer, and callers write an error line
    # that a resumed run asks again, never ``text`` as if it were one.
    error: str | None = None


def image_data_url(image: str | Path | Image.Image) -> str:
    """The image (EXIF-rotated, RGB, as the local model sees it) as a ``data:image/png;base64`` URL."""
    from visual.preprocess import load_image

    buffer = io.BytesIO()
    load_image(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


class ChatCompletionsPredictor:
    """``answer``/``stream`` over OpenAI chat-completion requests and replies (plain dicts).

    Subclasses say how a request is answered: :class:`RemotePredictor` posts it to a server,
    ``inference.gguf.GGUFPredictor`` hands it to llama-cpp-python in this process. Both take the
    same request (one user message: the image as a PNG data URL, then the question) and return
    the same reply, so building the one and reading the other lives here once.
    """

    concurrency = 1
    model: str | None = None
    _logprobs = False  # ask for token log-probabilities (the answer's confidence)

    def model_name(self) -> str | None:
        return self.model

    def complete(self, payload: dict) -> dict:
        """The reply to a chat-completion request."""
        raise NotImplementedError

    def complete_stream(self, payload: dict) -> Iterator[dict]:
        """The chunks of a streamed chat-completion request (``choices[0].delta.content``)."""
        raise NotImplementedError

    def payload(self, image, question: str, settings=None, stream: bool = False) -> dict:
        from inference.generation import SamplingSettings

        s = settings or SamplingSettings()
        body = {
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    {"type": "text", "text": question},
                ],
            }],
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature if s.do_sample else 0.0,
            "stream": stream,
        }
        if self.model_name():
            body["model"] = self.model
        if s.do_sample:
            body["top_p"] = s.top_p
            if s.top_k:
                body["top_k"] = s.top_k  # vLLM extension; other servers ignore it
            if s.seed is not None:
                body["seed"] = s.seed
        if self._logprobs and not stream:
            body["logprobs"] = True
        return body

    # -- questions -------------------------------------------------------------------------

    def check_question(self, question: str, settings=None) -> None:
        """Nothing to check here: the backend knows its model's context and refuses what does not fit."""

    def ask(self, image, question: str, settings=None) -> RemoteAnswer:
        reply = self.complete(self.payload(image, question, settings))
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RemoteError(f"{self.describe()}: the reply held no answer (no choices): "
                              f"{_one_line(json.dumps(reply, default=str))}") from None
        return RemoteAnswer(text.strip(), _mean_logprob(choice.get("logprobs")))

    def describe(self) -> str:
        return type(self).__name__

    def answer(self, images, questions, settings=None) -> list[RemoteAnswer]:
        """Ask every (image, question) pair; up to ``concurrency`` requests in flight (a server
        such as vLLM batches concurrent requests itself). A question the server fails on comes back
        with ``error`` set (the others still count); a server that cannot be reached at all stops
        the run."""
        images, questions = list(images), list(questions)
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        self.model_name()

        def one(pair) -> RemoteAnswer:
            try:
                return self.ask(pair[0], pair[1], settings)
            except RemoteError as exc:
                if str(exc).startswith("cannot reach"):
                    raise
                return RemoteAnswer("", None, error=str(exc))

        if len(images) <= 1 or self.concurrency == 1:
            return [one(pair) for pair in zip(images, questions)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(images))) as pool:
            return list(pool.map(one, zip(images, questions)))

    def stream(self, image, question: str, settings=None, should_stop=lambda: False) -> Iterator[str]:
        """Yield answer pieces as they come; leading whitespace is dropped and trailing whitespace
        held back, so the pieces join to the stripped answer."""
        emitted, pending, answered = False, "", False
        for chunk in self.complete_stream(self.payload(image, question, settings, stream=True)):
            if should_stop():
                return
            try:
                delta = chunk["choices"][0].get("delta") or {}
                answered = True
            except (KeyError, IndexError, TypeError, AttributeError):
                continue
            piece = delta.get("content") or ""
            if not emitted:
                piece = piece.lstrip()
            text = pending + piece
            body = text.rstrip()
            pending = text[len(body):]
            if body:
                emitted = True
                yield body
        if not answered:
            raise RemoteError(f"{self.describe()}: the streamed reply held no answer (no chunk with choices)")


def stream_error(chunk) -> str | None:
    """The message of an error object sent inside a stream (vLLM sends ``{"error": {...}}``, others
    ``{"object": "error", "message": ...}``), or None for an ordinary chunk."""
    if not isinstance(chunk, dict):
        return None
    error = chunk.get("error")
    if error is None and chunk.get("object") != "error":
        return None
    if isinstance(error, dict):
        return _one_line(error.get("message") or json.dumps(error))
    return _one_line(error if isinstance(error, str) else chunk.get("message") or json.dumps(chunk))


class RemotePredictor(ChatCompletionsPredictor):
    def __init__(self, url: str, model: str | None = None, timeout: float = 600.0,
                 api_key: str | None = None, concurrency: int = 8) -> None:
        base = url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        if not base.startswith(("http://", "https://")):
            raise RemoteError(f"{url}: the server URL must start with http:// or https://")
        self.base = base
        self.model = model
        self.timeout = timeout
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.concurrency = max(1, concurrency)
        self._logprobs = True  # switched off when the server refuses the logprobs option
        self._model_resolved = model is not None

    def describe(self) -> str:
        return self.base

    # -- HTTP ------------------------------------------------------------------------------

    def _request(self, path: str, payload: dict | None = None):
        headers = {"Accept": "application/json"}
        data = None
        if payload is not None:
            data = json.dumps(payload).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers,
                                         method="POST" if payload is not None else "GET")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            try:
                body = json.loads(body).get("error", body)
                if isinstance(body, dict):
                    body = body.get("message", body)
            except (ValueError, AttributeError):
                pass
            raise RemoteError(f"{self.base}{path}: HTTP {exc.code}: {_one_line(body)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach the server at {self.base}: {_one_line(reason)}") from None

    def model_name(self) -> str | None:
        """``--model`` if given, else the first model the server lists (``GET /v1/models``)."""
        if not self._model_resolved:
            self._model_resolved = True
            try:
                with self._request("/v1/models") as response:
                    listed = json.loads(response.read().decode("utf-8")).get("data") or []
                self.model = listed[0]["id"] if listed else None
            except (RemoteError, ValueError, KeyError, TypeError, AttributeError):
                self.model = None  # the server picks its only model
        return self.model

    def complete(self, payload: dict) -> dict:
        import http.client

        try:
            with self._request("/v1/chat/completions", payload) as response:
                try:
                    return json.loads(response.read().decode("utf-8"))
                except (OSError, http.client.HTTPException) as exc:
                    raise RemoteError(f"{self.base}: the connection was cut mid-answer ({_one_line(exc)})") from None
        except RemoteError as exc:
            if "logprobs" in payload and "HTTP 4" in str(exc):
                self._logprobs = False  # retry once without the optional logprobs
                return self.complete({k: v for k, v in payload.items() if k != "logprobs"})
            raise
        except ValueError:
            raise RemoteError(f"{self.base}: the server's reply is not JSON") from None

    def complete_stream(self, payload: dict) -> Iterator[dict]:
        """Server-sent events, one chunk per ``data:`` line; a server that ignores ``stream``
        answers with one ordinary completion, passed on as a single chunk. An error object in the
        stream, or a stream that ends before the server said it was done (``[DONE]`` or a
        ``finish_reason``), is a :class:`RemoteError`: an answer cut short is never passed on as
        a whole one."""
        import http.client

        with self._request("/v1/chat/completions", payload) as response:
            if "text/event-stream" not in (response.headers.get("Content-Type") or "text/event-stream"):
                try:
                    text = json.loads(response.read().decode("utf-8"))["choices"][0]["message"].get("content") or ""
                except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                    raise RemoteError(f"{self.base}: unexpected reply to a streamed request") from None
                yield {"choices": [{"delta": {"content": text}}]}
                return
            finished = False
            try:
                for raw in response:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        continue
                    message = stream_error(chunk)
                    if message is not None:
                        raise RemoteError(f"{self.base}: the server reported an error mid-answer: {message}")
                    try:
                        finished = finished or any(c.get("finish_reason") for c in chunk["choices"])
                    except (KeyError, TypeError, AttributeError):
                        pass
                    yield chunk
            except (OSError, http.client.HTTPException) as exc:
                raise RemoteError(f"{self.base}: the connection was cut mid-answer ({_one_line(exc)})") from None
            if not finished:
                raise RemoteError(f"{self.base}: the connection ended mid-answer (the server never said the answer "
                                  "was complete); the answer is incomplete")


def _mean_logprob(logprobs) -> float | None:
    try:
        values = [float(t["logprob"]) for t in logprobs["content"]]
    except (KeyError, TypeError, ValueError):
        return None
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else None

"""Who answers a chat completion: our model in this process, or an OpenAI-compatible server.

Both backends take the same parsed request (:class:`serving.chat.ChatRequest`) and give the same
OpenAI shapes back: :meth:`complete` a ``chat.completion`` dict, :meth:`stream` its
``chat.completion.chunk`` dicts. Any failure is a :class:`BackendError` (the gateway's 502, or an
error event inside a stream); a request this backend cannot answer is a :class:`ChatError` (400).

The embedded backend runs one generation at a time behind a lock (our KV-cache loop is not
re-entrant and a CPU is saturated by one); the remote one reuses ``inference.remote``'s HTTP client,
whose streaming already refuses an error event or a stream that ends before the server said it was
done, in a worker thread (``asyncio.to_thread``), bounded by ``timeout`` seconds per call.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

from errors import UserError, one_line
from serving.chat import ChatError, ChatRequest


class BackendError(RuntimeError):
    """The backend failed (unreachable, an HTTP error, an error or a cut mid-answer): one line."""


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(model: str, text: str, finish_reason: str, prompt_tokens: int | None,
               completion_tokens: int | None) -> dict:
    """A ``chat.completion`` reply in OpenAI's shape."""
    usage = None
    if prompt_tokens is not None and completion_tokens is not None:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
    return {"id": completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage}


def chunks_of(reply: dict) -> list[dict]:
    """A whole ``chat.completion`` as the chunks a stream of it would have sent (a cache hit
    streamed): the role, the text, the finish reason (and the usage, when the reply has one)."""
    base = {"id": reply.get("id") or completion_id(), "object": "chat.completion.chunk",
            "created": reply.get("created") or int(time.time()), "model": reply.get("model")}
    choice = (reply.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""

    def chunk(delta: dict, finish=None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""}), chunk({"content": text}),
           chunk({}, choice.get("finish_reason") or "stop")]
    if reply.get("usage"):
        out.append({**base, "choices": [], "usage": reply["usage"]})
    return out


async def iterate_in_thread(make: Callable[[threading.Event], Iterator], lock: threading.Lock | None = None,
                            wait: float = 600.0) -> AsyncIterator:
    """The items of a blocking iterator, produced in a worker thread (holding ``lock`` when given)
    and handed to the event loop one by one. The iterator gets a stop event, set when the consumer
    goes away (a client that hangs up), and checks it between items; its exceptions are re-raised
    here. A lock not free within ``wait`` seconds is a :class:`BackendError` (busy)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(kind: str, value) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def work() -> None:
        try:
            if lock is not None and not lock.acquire(timeout=wait):
                raise BackendError(f"the model is busy: no generation slot within {wait:g} s")
            try:
                for item in make(stop):
                    if stop.is_set():
                        break
                    put("item", item)
            finally:
                if lock is not None:
                    lock.release()
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which re-raises it)
            put("error", exc)
        finally:
            put("end", None)

    threading.Thread(target=work, name="serving-backend", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


class EmbeddedBackend:
    """Our model (a checkpoint, run directory or LLaVA export) in this process."""

    remote = False

    def __init__(self, name: str, checkpoint: str, *, device: str | None = None, dtype: str | None = None,
                 timeout: float = 600.0, default_max_tokens: int = 128) -> None:
        from inference.identity import checkpoint_identity
        from inference.source import ModelSource

        self.name, self.target = name, checkpoint
        self.fingerprint = checkpoint_identity(checkpoint)["fingerprint"]
        self.predictor = ModelSource(checkpoint=checkpoint, device=device, dtype=dtype).open()
        self.timeout = timeout
        self.default_max_tokens = default_max_tokens
        self._lock = threading.Lock()

    async def model_name(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        """The model as the request log names it."""
        return self.target

    def sampling(self, request: ChatRequest):
        """Our generation settings from the request's: no ``temperature`` (or 0) is greedy
        decoding, our default; any other temperature samples, with ``seed`` when given."""
        from inference.generation import SamplingSettings

        s = request.settings
        if s.get("n", 1) != 1:
            raise ChatError("n: the embedded model answers one choice per request (n must be 1)")
        temperature = float(s.get("temperature") or 0.0)
        try:
            return SamplingSettings(
                max_new_tokens=int(request.max_tokens or self.default_max_tokens),
                do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                top_p=float(s.get("top_p", 1.0)), top_k=int(s.get("top_k") or 0),
                seed=int(s["seed"]) if s.get("seed") is not None else None).validate()
        except (TypeError, ValueError) as exc:
            raise ChatError(f"generation settings: {one_line(exc)}") from None

    def check(self, request: ChatRequest) -> None:
        """Refuse (:class:`ChatError`) what this model cannot answer, before any answer starts."""
        self._prepare(request)

    def _prepare(self, request: ChatRequest):
        if request.url_images:
            raise ChatError("image_url: the embedded model takes images as data: URLs only (it fetches nothing)")
        if not request.question:
            raise ChatError("the last user message holds no question text")
        if len(request.images) != 1:
            raise ChatError(f"the embedded model answers about exactly one image per question; the last user "
                            f"message has {len(request.images)} (image_url parts with data: URLs)")
        settings = self.sampling(request)
        try:
            self.predictor.check_question(request.question, settings)
        except UserError as exc:
            raise ChatError(str(exc)) from None
        return settings

    def _finish(self, tokens: list[int]) -> str:
        return "stop" if tokens and tokens[-1] in self.predictor.eos_token_ids else "length"

    async def complete(self, request: ChatRequest) -> dict:
        settings = self._prepare(request)

        def generate(stop):
            yield self.predictor.answer([request.images[0]], [request.question], settings)[0]

        async for answer in iterate_in_thread(generate, self._lock, self.timeout):
            prompt = len(self.predictor.prompt_ids(request.question))
            return completion(await self.model_name(), answer.text, self._finish(answer.token_ids), prompt,
                              len(answer.token_ids))
        raise BackendError("the model gave no answer")

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict]:
        settings = self._prepare(request)
        base = {"id": completion_id(), "object": "chat.completion.chunk", "created": int(time.time()),
                "model": await self.model_name()}

        def chunk(delta: dict, finish=None) -> dict:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        def pieces(stop):
            return self.predictor.stream(request.images[0], request.question, settings, should_stop=stop.is_set)

        yield chunk({"role": "assistant", "content": ""})
        text = ""
        async for piece in iterate_in_thread(pieces, self._lock, self.timeout):
            text += piece
            yield chunk({"content": piece})
        tokens = self.predictor.tokenizer(text, add_special_tokens=False)["input_ids"]
        yield chunk({}, "length" if len(tokens) >= settings.max_new_tokens else "stop")
        if (request.settings.get("stream_options") or {}).get("include_usage"):
            prompt = len(self.predictor.prompt_ids(request.question))
            yield {**base, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": len(tokens),
                                                    "total_tokens": prompt + len(tokens)}}

    def close(self) -> None:
        pass


class RemoteBackend:
    """An OpenAI-compatible server (vLLM, ``transformers serve``, llama.cpp's server):
    ``http(s)://HOST:PORT[/v1][#MODEL]`` (``#MODEL``: the served model's name; default: the first
    one its ``GET /v1/models`` lists). The request is forwarded as received, with the backend's
    model name; a stream is passed through chunk by chunk."""

    remote = True

    def __init__(self, name: str, url: str, *, timeout: float = 600.0, api_key: str | None = None,
                 max_tokens: int = 1024) -> None:
        from inference.remote import RemotePredictor

        address, _, model = url.partition("#")
        self.name, self.target = name, url
        self.client = RemotePredictor(address, model or None, timeout=timeout, api_key=api_key)
        self._model = model or None
        self.max_tokens = max_tokens

    async def model_name(self) -> str:
        """The served model's name, asked of the server (``inference.remote``: its first listed
        model) until it answers: a backend that is down when the gateway starts is no reason not to."""
        if self._model is None:
            self.client._model_resolved = False
            self._model = await asyncio.to_thread(self.client.model_name)
            if self._model is None:
                raise BackendError(f"{self.client.base}: cannot list its models (GET /v1/models failed or listed none)")
        return self._model

    @property
    def fingerprint(self) -> str | None:
        """``server:URL#MODEL``: the server does not say which weights it serves (None until the
        model's name is known)."""
        return f"server:{self.client.base}#{self._model}" if self._model else None

    @property
    def label(self) -> str:
        """The model as the request log names it."""
        return f"{self.client.base}#{self._model}" if self._model else self.target

    def check(self, request: ChatRequest) -> None:
        """The server checks what its model can answer."""

    async def _payload(self, request: ChatRequest, stream: bool) -> dict:
        payload = {**request.body, "model": await self.model_name(), "stream": stream}
        if request.max_tokens is None:
            payload["max_tokens"] = self.max_tokens  # the gateway's cap holds for the server too
        return payload

    async def complete(self, request: ChatRequest) -> dict:
        from inference.remote import RemoteError

        payload = await self._payload(request, False)

        def call(stop):
            yield self.client.complete(payload)

        try:
            async for reply in iterate_in_thread(call):
                if not isinstance(reply, dict) or not reply.get("choices"):
                    raise BackendError(f"{self.client.base}: the reply held no answer (no choices)")
                return reply
        except RemoteError as exc:
            raise BackendError(str(exc)) from None
        raise BackendError(f"{self.client.base}: no reply")

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict]:
        from inference.remote import RemoteError

        payload = await self._payload(request, True)

        def chunks(stop):
            stream = self.client.complete_stream(payload)
            try:
                yield from stream
            finally:
                stream.close()  # closes the response: the backend stops generating

        try:
            async for chunk in iterate_in_thread(chunks):
                yield chunk
        except RemoteError as exc:
            raise BackendError(str(exc)) from None

    def close(self) -> None:
        pass

"""The gateway as a FastAPI app: ``POST /v1/chat/completions`` (streamed or not), ``GET /v1/models``,
``GET /health``, ``GET /metrics``, ``POST /v1/feedback``.

One request: check the API key, read the body (capped), parse and check it (:mod:`serving.chat`),
pick the variant (:mod:`serving.routing`), answer from the cache when the request is deterministic
and the same image, messages, settings and model fingerprint were answered before, else ask the
variant's backend (:mod:`serving.backends`); log one JSON line and count it in the metrics. Every
response carries ``X-Request-Id``; answers also ``X-Variant`` and ``X-Cache``.

Concurrent identical cacheable requests make one backend call: the first takes a per-key lock
(in this process; replicas each make their own first call) and the others wait for it, then find
its answer in the cache. A waiter never waits longer than the backend timeout: then it asks the
backend itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from serving.backends import BackendError, chunks_of
from serving.chat import ChatError, ChatRequest, Limits, parse_chat
from serving.metrics import Metrics
from serving.requestlog import RequestLog
from serving.routing import Router

REQUEST_ID = re.compile(r"^req-[0-9a-f]{32}$")
OPEN_PATHS = {"/health", "/metrics"}  # no API key: load balancers and Prometheus scrape them


@dataclass
class Gateway:
    """Everything one gateway process serves with; ``close`` releases it (at shutdown)."""

    router: Router
    backends: dict  # variant name -> EmbeddedBackend | RemoteBackend
    cache: object | None = None  # serving.cache.AnswerCache
    log: RequestLog | None = None
    limits: Limits = field(default_factory=Limits)
    api_keys: frozenset[str] = frozenset()
    timeout: float = 600.0  # the longest a request waits for an identical one in flight
    metrics: Metrics = field(default_factory=Metrics)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        if self.cache is not None:
            self.cache.close()
        if self.log is not None:
            self.log.close()


class SingleFlight:
    """Per-key asyncio locks, dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, list] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str, wait: float):
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        acquired = False
        try:
            try:
                acquired = await asyncio.wait_for(entry[0].acquire(), wait)
            except TimeoutError:
                pass  # the first caller is stuck: answer without it rather than hang
            yield
        finally:
            if acquired:
                entry[0].release()
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(key, None)


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """OpenAI's error shape, which ``inference.remote`` and the openai client read."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def error_event(message: str, status: int = 502) -> str:
    """An error inside a stream, as vLLM sends one when its engine fails mid-answer: no ``[DONE]``
    follows, so no client takes what came before for a whole answer."""
    return "data: " + json.dumps({"error": {"message": message, "type": "BackendError", "code": status}}) + "\n\n"


async def read_json(request: Request, limit: int):
    """The body as JSON, refused (413) once it passes ``limit`` bytes, without reading further."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ChatError(f"the request body is {int(declared):,} bytes, more than the gateway's limit of {limit:,}", 413)
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise ChatError(f"the request body is more than the gateway's limit of {limit:,} bytes", 413)
    try:
        return json.loads(bytes(data))
    except ValueError as exc:
        raise ChatError(f"the request body is not JSON ({exc})") from None


def create_app(gateway: Gateway) -> FastAPI:
    flight = SingleFlight()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        gateway.close()

    app = FastAPI(title="VQA gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "error")

    @app.middleware("http")
    async def request_id_and_auth(request: Request, call_next):
        request.state.request_id = f"req-{uuid.uuid4().hex}"
        if gateway.api_keys and request.url.path not in OPEN_PATHS and not authorised(request):
            response = error_response(401, "a valid API key is required (Authorization: Bearer KEY)",
                                      "authentication_error")
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # a bug, not the client's fault: still a JSON error with the request id
                logging.getLogger(__name__).exception("%s failed", request.state.request_id)
                response = error_response(500, f"internal error: {type(exc).__name__}", "internal_error")
        response.headers["X-Request-Id"] = request.state.request_id
        return response

    def authorised(request: Request) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip().encode()
        return scheme.lower() == "bearer" and any(hmac.compare_digest(key, k.encode()) for k in gateway.api_keys)

    @app.get("/health")
    async def health():
        stats = await asyncio.to_thread(gateway.cache.stats) if gateway.cache is not None else None
        return {"status": "ok", "variants": {r.name: {"target": r.target, "weight": r.weight}
                                             for r in gateway.router.routes}, "cache": stats}

    @app.get("/metrics")
    async def metrics():
        stats = await asyncio.to_thread(gateway.cache.stats) if gateway.cache is not None else None
        return Response(gateway.metrics.render(stats), media_type=gateway.metrics.content_type)

    @app.get("/v1/models")
    async def models():
        data = []
        for route in gateway.router.routes:
            backend = gateway.backends[route.name]
            data.append({"id": route.name, "object": "model", "created": 0, "owned_by": "vqa-gateway",
                         "fingerprint": backend.fingerprint, "weight": route.weight})
        return {"object": "list", "data": data}

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        try:
            body = await read_json(request, 64 << 10)
            request_id, score, correct = check_feedback(body)
        except ChatError as exc:
            return error_response(exc.status, str(exc))
        if gateway.log is None:
            return error_response(501, "this gateway keeps no request log to record feedback in (start it with "
                                       "--log-dir DIR)", "not_implemented")
        gateway.log.feedback(request_id, score, correct)
        gateway.metrics.feedback.inc()
        return {"request_id": request_id, "recorded": True}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        started = time.perf_counter()
        rid = request.state.request_id
        record = Record(gateway, rid, started)
        try:
            chat_request = parse_chat(await read_json(request, gateway.limits.max_body_bytes),
                                      gateway.limits, request.headers.get("x-user"))
        except ChatError as exc:
            return refuse(record, exc, {})
        record.request = chat_request
        wanted = chat_request.body.get("model")
        route = next((r for r in gateway.router.routes if r.name == wanted), None) or \
            gateway.router.choose(chat_request.user)
        backend = gateway.backends[route.name]
        record.variant, record.backend = route.name, backend
        headers = {"X-Variant": route.name}
        try:
            backend.check(chat_request)
            await backend.model_name()  # a server that cannot even list its model is a 502 before any stream
            key = await cache_key_of(gateway, backend, chat_request)
        except (ChatError, BackendError) as exc:
            return refuse(record, exc, headers)
        record.cache = "off" if gateway.cache is None else "uncacheable" if key is None else "miss"
        held = contextlib.AsyncExitStack()
        if key is not None:
            await held.enter_async_context(flight.hold(key, gateway.timeout))
            stored = await asyncio.to_thread(gateway.cache.get, key)
            if stored is not None:
                await held.aclose()
                record.cache = "hit"
        else:
            stored = None
        headers["X-Cache"] = record.cache
        if chat_request.stream:
            source = as_async(chunks_of(stored)) if stored is not None else backend.stream(chat_request)
            return StreamingResponse(stream_events(gateway, record, source, key, held),
                                     media_type="text/event-stream", headers=headers)
        try:
            reply = stored if stored is not None else await backend.complete(chat_request)
            if stored is None and key is not None:
                await asyncio.to_thread(gateway.cache.put, key, reply, backend.fingerprint)
        except (ChatError, BackendError) as exc:
            return refuse(record, exc, headers)
        finally:
            await held.aclose()
        record.reply(reply)
        record.done(200, None)
        return JSONResponse(reply, headers=headers)

    return app


def refuse(record: "Record", exc: ChatError | BackendError, headers: dict) -> Response:
    """The JSON error for a refused request (4xx) or a failed backend (502), logged and counted."""
    status = exc.status if isinstance(exc, ChatError) else 502
    if status == 502:
        record.gateway.metrics.backend_errors.labels(record.variant or "-").inc()
    record.done(status, str(exc))
    response = error_response(status, str(exc), "backend_error" if status == 502 else "invalid_request_error")
    response.headers.update(headers)
    return response


async def as_async(items: list) -> AsyncIterator:
    for item in items:
        yield item


async def cache_key_of(gateway: Gateway, backend, request: ChatRequest) -> str | None:
    """The request's cache key, or None when it is not cached (no cache, an image the gateway did not
    see, or a request that may be answered differently each time)."""
    if gateway.cache is None or not request.cacheable:
        return None
    from serving.cache import cache_key, is_deterministic

    settings = dict(request.settings)
    if not backend.remote:
        settings.setdefault("temperature", 0.0)  # our model decodes greedily unless asked to sample
    if not is_deterministic(settings):
        return None
    return cache_key(messages=request.key_messages, settings=settings, model_fingerprint=backend.fingerprint)


def check_feedback(body) -> tuple[str, float | None, bool | None]:
    if not isinstance(body, dict):
        raise ChatError("the feedback must be a JSON object {request_id, score | correct}")
    request_id, score, correct = body.get("request_id"), body.get("score"), body.get("correct")
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
        raise ChatError(f"request_id: expected the X-Request-Id of an answer (req-<32 hex digits>), got {request_id!r}")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
        raise ChatError(f"score: expected a number, got {score!r}")
    if correct is not None and not isinstance(correct, bool):
        raise ChatError(f"correct: expected true or false, got {correct!r}")
    if score is None and correct is None:
        raise ChatError("give score (a number) or correct (true/false), or both")
    return request_id, None if score is None else float(score), correct


class Record:
    """What one request's log line and metrics say, filled in as it goes."""

    def __init__(self, gateway: Gateway, request_id: str, started: float) -> None:
        self.gateway, self.request_id, self.started = gateway, request_id, started
        self.request: ChatRequest | None = None
        self.variant: str | None = None
        self.backend = None
        self.cache = "off"
        self.answer: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def reply(self, reply: dict) -> None:
        self.answer = ((reply.get("choices") or [{}])[0].get("message") or {}).get("content")
        self.usage(reply.get("usage"))

    def usage(self, usage) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens, self.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")

    def done(self, status: int, error: str | None) -> None:
        seconds = time.perf_counter() - self.started
        r = self.request
        variant = self.variant or "-"
        self.gateway.metrics.observe(variant, status, seconds, self.cache, self.prompt_tokens, self.completion_tokens)
        if self.gateway.log is None:
            return
        model = {"name": self.backend.label if self.backend else "-",  # "-": refused before a model was chosen
                 "fingerprint": self.backend.fingerprint if self.backend else None}
        self.gateway.log.request(
            request_id=self.request_id, user=r.user if r else None, variant=self.variant, model=model,
            latency_ms=round(seconds * 1000, 3), prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens, cache=self.cache, image_sha256=r.image_sha256 if r else [],
            question=r.question if r else "", answer=self.answer if status == 200 else None, status=status,
            error=error, stream=r.stream if r else False)


async def stream_events(gateway: Gateway, record: Record, source: AsyncIterator[dict], key: str | None,
                        held: contextlib.AsyncExitStack) -> AsyncIterator[str]:
    """Server-sent events of ``source``'s chunks, then ``[DONE]``; a backend failure is an error
    event instead (no ``[DONE]``). A whole answer from the backend goes into the cache."""
    text, finish, status, error = "", None, 200, None
    try:
        async for chunk in source:
            for choice in chunk.get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
            record.usage(chunk.get("usage"))
            yield "data: " + json.dumps(chunk, ensure_ascii=False) + "\n\n"
        record.answer = text
        if key is not None and record.cache == "miss":
            from serving.backends import completion

            reply = completion(await record.backend.model_name(), text, finish or "stop",
                               record.prompt_tokens, record.completion_tokens)
            await asyncio.to_thread(gateway.cache.put, key, reply, record.backend.fingerprint)
        yield "data: [DONE]\n\n"
    except (BackendError, ChatError) as exc:
        status, error = getattr(exc, "status", 502), str(exc)
        if status == 502:
            gateway.metrics.backend_errors.labels(record.variant).inc()
        yield error_event(error, status)
    except BaseException:
        status, error = 499, "the client went away mid-answer"
        raise
    finally:
        await held.aclose()
        record.done(status, error)

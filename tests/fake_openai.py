"""An OpenAI-compatible chat server on localhost, for the clients' tests (infer --server, the GUI)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def word_pieces(answer: str) -> list[str]:
    """Stream an answer a word at a time, the way a server streams tokens."""
    words = answer.split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


class FakeOpenAI:
    """``GET /v1/models`` lists ``model_id``; ``POST /v1/chat/completions`` answers ``answer``
    (a string, or a function of the request body that may also check it) as one JSON completion
    with logprobs or, for a streamed request, as server-sent chunks cut by ``pieces``.

    ``fail_with``: answer every request with that HTTP error. ``delay``: seconds between chunks.
    ``ignore_stream``: answer streamed requests with one JSON completion, as some servers do.
    ``misbehave``: ``"stream_error"`` (an error object after the first piece, as vLLM sends when
    its engine dies), ``"no_choices"`` (a 200 reply, or chunks, without choices) or ``"cut"`` (the
    connection closed half-way through the reply).
    ``requests`` holds every request body; ``closed_early`` is set when the client hung up
    while chunks were still being sent."""

    def __init__(self, answer: str | Callable[[dict], str], *, model_id: str = "tiny-vqa",
                 pieces: Callable[[str], list[str]] = word_pieces, delay: float = 0.0,
                 fail_with: int | None = None, ignore_stream: bool = False, misbehave: str | None = None) -> None:
        self.answer, self.model_id, self.pieces, self.delay = answer, model_id, pieces, delay
        self.fail_with, self.ignore_stream, self.misbehave = fail_with, ignore_stream, misbehave
        self.requests: list[dict] = []
        self.closed_early = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": fake.model_id, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                fake.requests.append(body)
                if fake.fail_with:
                    return self._json(fake.fail_with, {"error": {"message": "model exploded"}})
                answer = fake.answer(body) if callable(fake.answer) else fake.answer
                if not body.get("stream") or fake.ignore_stream:
                    logprobs = {"content": [{"token": "x", "logprob": -0.5}, {"token": "y", "logprob": -1.5}]}
                    if fake.misbehave == "no_choices":
                        return self._json(200, {"object": "chat.completion", "choices": []})
                    reply = {"object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": answer}, "logprobs": logprobs,
                         "finish_reason": "stop"}]}
                    if fake.misbehave == "cut":  # promise the whole reply, send half of it, hang up
                        data = json.dumps(reply).encode()
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    return self._json(200, reply)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for n, piece in enumerate(fake.pieces(answer)):
                        if fake.misbehave == "stream_error" and n == 1:
                            error = {"error": {"message": "EngineCore encountered an issue", "type": "InternalServerError",
                                               "code": 500}}
                            self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())
                            return
                        if fake.misbehave == "cut" and n == 1:
                            return  # hang up without [DONE]
                        chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                        if fake.misbehave == "no_choices":
                            chunk = {"object": "chat.completion.chunk"}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(fake.delay)
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    fake.closed_early.set()

        return Handler

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

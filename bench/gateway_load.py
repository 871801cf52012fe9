#!/usr/bin/env python
"""Load test of the OpenAI-compatible gateway (serve.py) with real concurrency.

    .venv/bin/python bench/gateway_load.py [--clients 32] [--requests 1000] [--repeats 3] [--delay 0.05]
    .venv/bin/python bench/gateway_load.py --requests 200 --repeats 1      # a quick run
    .venv/bin/python bench/gateway_load.py --backend-url http://127.0.0.1:8001 --skip-embedded   # a running vLLM

The fixed workload: ``--requests`` chat requests (one 48x48 PNG and one question each, greedy:
temperature 0, max_tokens 8, not streamed); 30% of them (a fixed, seeded choice) repeat an earlier
(image, question) pair, the rest are new pairs (distinct images, 4 questions). ``--clients``
threads, each with its own keep-alive ``http.client`` connection, send them as fast as answers come
back. The gateway is the real ``serve.py`` in its own process (uvicorn, nothing stubbed); the
backends:

- embedded: a random tiny checkpoint (tiny-siglip + tiny-qwen2 of tools/build_tiny_checkpoints.py,
  the real Qwen2.5 vocabulary) served in the gateway's process on the CPU;
- remote: a minimal OpenAI-compatible server (this file, ``--fake-backend``; a threading HTTP
  server in its own process) that answers every request after a fixed ``--delay``, standing in
  for vLLM. The same workload is sent to it directly and through the gateway (``--cache off``, so
  every request reaches the backend), side by side, ``--repeats`` times each, alternating: gateway
  overhead = (through gateway - direct) / direct at p50, medians over the repeats. Also with 1
  client (``--single`` requests), where nothing queues.
- kill: the gateway in front of a fresh remote backend; when half the requests are answered the
  backend process is killed (SIGKILL). Every request must end with a complete answer (HTTP 200,
  a choice with content and a finish reason) or an explicit error (an HTTP error with a JSON error
  body); "lost" = neither (a reset connection, a timeout, a malformed reply).

Hits and misses are told apart by the gateway's ``X-Cache`` header. Each gateway run starts with
an empty disk cache.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from base64 import b64encode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
QUESTIONS = ["What colour is it?", "What is in the picture?", "Is it bright or dark?", "Describe the image."]
REPEAT_SHARE = 0.3
IMAGE_SIDE = 48
MAX_TOKENS = 8
FAKE_ANSWER = "a small square of one colour"


# -- the stand-in for vLLM: run as its own process (``--fake-backend PORT``) so it can be killed ----

def serve_fake_backend(port: int, delay: float) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as vLLM (uvicorn) does

        def setup(self):
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn (vLLM) does

        def log_message(self, *args):
            pass

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path in ("/v1/models", "/v1/models/"):
                self._json(200, {"object": "list", "data": [{"id": "fake-vllm", "object": "model"}]})
            elif self.path == "/health":
                self._json(200, {})
            else:
                self._json(404, {"error": {"message": "not found"}})

        def do_POST(self):
            json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(delay)
            self._json(200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": "fake-vllm", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": FAKE_ANSWER}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}})

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 256
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


# -- processes ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url}: not up after {seconds:.0f} s")


def start_fake_backend(delay: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([PYTHON, __file__, "--fake-backend", str(port), "--delay", str(delay)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url + "/health", process)
    return process, url


def start_gateway(model_args: list[str], work: Path, cache: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    argv = [PYTHON, "serve.py", *model_args, "--port", str(port), "--timeout", "30",
            *(["--cache", "disk", "--cache-dir", str(cache_dir)] if cache else ["--cache", "off"])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url + "/health", process)
    return process, url


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the workload --------------------------------------------------------------------------------------

def png(seed: int) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    image = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(6):  # a few squares, so every image is different bytes and pixels
        x, y = rng.randrange(IMAGE_SIDE - 8), rng.randrange(IMAGE_SIDE - 8)
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 8, y + 8))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def workload(n: int, model: str) -> tuple[list[bytes], list[bool]]:
    """(request bodies, whether each repeats an earlier pair): a fixed seeded order."""
    rng = random.Random(0)
    repeats = set(rng.sample(range(1, n), round(REPEAT_SHARE * n))) if n > 1 else set()
    pairs: list[tuple[int, str]] = []
    order: list[tuple[int, str]] = []
    for k in range(n):
        if k in repeats:
            order.append(rng.choice(order))
        else:
            pair = (len(pairs) // len(QUESTIONS), QUESTIONS[len(pairs) % len(QUESTIONS)])
            pairs.append(pair)
            order.append(pair)
    images = {i: "data:image/png;base64," + b64encode(png(i)).decode() for i in {p[0] for p in pairs}}
    bodies = [json.dumps({"model": model, "temperature": 0, "max_tokens": MAX_TOKENS, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": images[i]}},
                                     {"type": "text", "text": q}]}]}).encode() for i, q in order]
    return bodies, [k in repeats for k in range(n)]


def warm_up(bodies: list[bytes]) -> list[bytes]:
    """The same requests with a question the workload never asks (nothing they leave in a cache is hit later)."""
    out = []
    for body in bodies:
        request = json.loads(body)
        request["messages"][0]["content"][1]["text"] = "Warm-up: " + request["messages"][0]["content"][1]["text"]
        out.append(json.dumps(request).encode())
    return out


def outcome(status: int, data: bytes) -> str:
    """"answer" (complete), "error" (explicit) or "lost" (neither)."""
    try:
        reply = json.loads(data)
    except ValueError:
        return "lost"
    if status == 200:
        try:
            choice = reply["choices"][0]
            ok = isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
        except (KeyError, IndexError, TypeError):
            ok = False
        return "answer" if ok else "lost"
    return "error" if status >= 400 and isinstance(reply, dict) and "error" in reply else "lost"


def load(url: str, bodies: list[bytes], clients: int, on_done=None) -> tuple[float, list[dict]]:
    """Send every body with ``clients`` threads; (wall seconds, one record per request)."""
    host, port = url.removeprefix("http://").split(":")
    records: list[dict | None] = [None] * len(bodies)
    nxt = iter(range(len(bodies)))
    lock = threading.Lock()
    done = [0]

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                k = next(nxt, None)
            if k is None:
                break
            begun = time.perf_counter()
            try:
                conn.request("POST", "/v1/chat/completions", body=bodies[k], headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                data = reply.read()
                record = {"status": reply.status, "cache": reply.getheader("X-Cache"), "outcome": outcome(reply.status, data)}
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                record = {"status": None, "cache": None, "outcome": "lost", "exception": type(exc).__name__}
            record["seconds"] = time.perf_counter() - begun
            records[k] = record
            with lock:
                done[0] += 1
                count = done[0]
            if on_done is not None:
                on_done(count)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    begun = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - begun, records


# -- summaries ---------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(wall: float, records: list[dict]) -> dict:
    answered = [r for r in records if r["outcome"] == "answer"]
    ms = {kind: [1000 * r["seconds"] for r in answered if kind is None or r["cache"] == kind] for kind in (None, "hit", "miss")}
    return {"rps": len(answered) / wall, "n": len(records), "answers": len(answered),
            "errors": sum(r["outcome"] == "error" for r in records), "lost": sum(r["outcome"] == "lost" for r in records),
            "hits": len(ms["hit"]), "misses": len(ms["miss"]),
            "p50": percentile(ms[None], 50), "p99": percentile(ms[None], 99),
            "hit_p50": percentile(ms["hit"], 50), "hit_p99": percentile(ms["hit"], 99),
            "miss_p50": percentile(ms["miss"], 50), "miss_p99": percentile(ms["miss"], 99),
            "statuses": sorted({str(r["status"]) for r in records}),
            "exceptions": sorted({r["exception"] for r in records if "exception" in r})}


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def build_checkpoint(work: Path) -> Path:
    """A random tiny VQA checkpoint from the offline tiny bases (greedy answers are deterministic)."""
    import torch

    from config import ModelSettings
    from model import VQAModel
    from tools.build_tiny_checkpoints import build_all

    tiny = build_all()
    torch.manual_seed(0)
    model = VQAModel.from_settings(ModelSettings(vision_model=str(tiny["tiny-siglip"]),
                                                 language_model=str(tiny["tiny-qwen2"]), dtype="float32"))
    checkpoint = work / "checkpoint"
    model.save_pretrained(checkpoint)
    model.tokenizer.save_pretrained(checkpoint)
    return checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="direct vs gateway runs, each (median shown)")
    parser.add_argument("--single", type=int, default=100, help="requests sent one at a time, direct and through the gateway")
    parser.add_argument("--delay", type=float, default=0.05, help="the fake backend's seconds per request")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--backend-url", metavar="URL", help="a running OpenAI-compatible server (vLLM) instead of the "
                        "fake one: its first /v1/models id is asked; no kill run (the bench did not start it)")
    parser.add_argument("--fake-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_backend:
        serve_fake_backend(args.fake_backend, args.delay)
        return 0

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    rows: list[tuple[str, dict]] = []
    notes: list[str] = []
    try:
        bodies, _ = workload(args.requests, "default")
        if args.backend_url:
            with urllib.request.urlopen(args.backend_url.rstrip("/") + "/v1/models", timeout=30) as reply:
                served = json.load(reply)["data"][0]["id"]
        direct_bodies, _ = workload(args.requests, served if args.backend_url else "fake-vllm")
        single = min(args.single, args.requests)

        # remote: direct vs through the gateway (cache off), alternating, then the gateway with its cache
        if args.backend_url:
            backend, backend_url = None, args.backend_url.rstrip("/")
        else:
            backend, backend_url = start_fake_backend(args.delay)
        gateway_off, off_url = start_gateway(["--backend", backend_url], work, cache=False)
        try:
            load(off_url, warm_up(bodies[:64]), args.clients)  # warm-up (connections, imports, the model id)
            load(backend_url, warm_up(direct_bodies[:64]), args.clients)
            runs: dict[str, list[dict]] = {"direct": [], "gateway": [], "direct-1": [], "gateway-1": []}
            for _ in range(args.repeats):
                runs["direct"].append(summary(*load(backend_url, direct_bodies, args.clients)))
                runs["gateway"].append(summary(*load(off_url, bodies, args.clients)))
                runs["direct-1"].append(summary(*load(backend_url, direct_bodies[:single], 1)))
                runs["gateway-1"].append(summary(*load(off_url, bodies[:single], 1)))
        finally:
            stop(gateway_off)
        median = {name: {**ss[-1], **{key: statistics.median(s[key] for s in ss) for key in ("rps", "p50", "p99")}}
                  for name, ss in runs.items()}
        for name, label in (("direct", f"remote, direct ({args.clients} clients)"),
                            ("gateway", f"remote via gateway, cache off ({args.clients} clients)"),
                            ("direct-1", "remote, direct (1 client)"), ("gateway-1", "remote via gateway, cache off (1 client)")):
            rows.append((label, median[name]))
        for clients, a, b in ((args.clients, "direct", "gateway"), (1, "direct-1", "gateway-1")):
            each = [(g["p50"] - d["p50"]) / d["p50"] for d, g in zip(runs[a], runs[b])]
            notes.append(f"gateway overhead at p50, {clients} client(s): {100 * statistics.median(each):+.1f}% "
                         f"(each repeat: {', '.join(f'{100 * e:+.1f}%' for e in each)})")

        gateway_on, on_url = start_gateway(["--backend", backend_url], work, cache=True)
        try:
            load(on_url, warm_up(bodies[:64]), args.clients)
            rows.append((f"remote via gateway, disk cache ({args.clients} clients)", summary(*load(on_url, bodies, args.clients))))
            rows.append(("remote via gateway, cached requests again (1 client)", summary(*load(on_url, bodies[:single], 1))))
        finally:
            stop(gateway_on)
            if backend is not None:
                stop(backend)

        if not args.backend_url:  # a server the bench did not start is not the bench's to kill
            # kill: the backend dies when half the requests are answered
            backend, backend_url = start_fake_backend(args.delay)
            gateway_kill, kill_url = start_gateway(["--backend", backend_url], work, cache=False)
            killed_at: list[float] = []

            def kill_halfway(count: int) -> None:
                if count == args.requests // 2 and not killed_at:
                    backend.kill()
                    killed_at.append(time.perf_counter())

            try:
                load(kill_url, warm_up(bodies[:16]), args.clients)
                row = summary(*load(kill_url, bodies, args.clients, on_done=kill_halfway))
                rows.append((f"remote via gateway, backend SIGKILLed at {args.requests // 2} answers", row))
                notes.append(f"kill run: {row['answers']} answers, {row['errors']} explicit errors, {row['lost']} lost; "
                             f"HTTP statuses {row['statuses']}; client exceptions {row['exceptions'] or 'none'}")
            finally:
                stop(gateway_kill)
                stop(backend)

        if not args.skip_embedded:
            checkpoint = build_checkpoint(work)
            gateway_emb, emb_url = start_gateway(["--checkpoint", str(checkpoint), "--device", "cpu"], work, cache=True)
            try:
                load(emb_url, warm_up(bodies[:8]), 4)  # questions the workload never asks: its cache stays cold
                rows.append((f"embedded tiny checkpoint, disk cache ({args.clients} clients)", summary(*load(emb_url, bodies, args.clients))))
                rows.append(("embedded, cached requests again (1 client)", summary(*load(emb_url, bodies[:single], 1))))
            finally:
                stop(gateway_emb)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.requests} requests ({round(REPEAT_SHARE * args.requests)} repeat an earlier pair), "
          + (f"backend {args.backend_url}" if args.backend_url else f"fake backend delay {1000 * args.delay:.0f} ms")
          + f", {os.cpu_count()} CPU cores, repeats {args.repeats}\n")
    print("| run | req/s | p50 ms | p99 ms | hits | hit p50 ms | hit p99 ms | miss p50 ms | miss p99 ms | errors | lost |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, s in rows:
        print(f"| {label} | {fmt(s['rps'])} | {fmt(s['p50'])} | {fmt(s['p99'])} | {s['hits']} | {fmt(s['hit_p50'])} | "
              f"{fmt(s['hit_p99'])} | {fmt(s['miss_p50'])} | {fmt(s['miss_p99'])} | {s['errors']} | {s['lost']} |")
    print()
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""serve.py: the OpenAI-compatible gateway, run as a real uvicorn server on a free port.

The embedded backend is the ``trained`` checkpoint (answers "red"/"blue"); a second variant is a copy
of it with one weight nudged (another fingerprint, the same answers). Remote backends are
tests/fake_openai.py servers, which can also fail mid-answer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import COLOUR_QUESTION, free_port
from tests.fake_openai import FakeOpenAI

STARTUP = 60.0  # seconds a gateway may take to start before the test fails (it never hangs)


@contextlib.contextmanager
def gateway(*argv: str):
    """``serve.py ARGV`` as a uvicorn server in a thread (the arguments and the app built exactly as
    ``main`` builds them); stopped, and its app's resources closed, on the way out."""
    import uvicorn

    from commands.serve import build_gateway, build_parser
    from serving.app import create_app

    args = build_parser().parse_args(list(argv))
    built = build_gateway(args)
    server = uvicorn.Server(uvicorn.Config(create_app(built), host="127.0.0.1", port=free_port(),
                                           log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.02)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{server.config.port}", gateway=built)
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the gateway did not shut down"


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def chat_body(image: Path | None, question: str = COLOUR_QUESTION, **settings) -> dict:
    content = [{"type": "text", "text": question}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 8, **settings}


def post(url: str, body, headers: dict | None = None, raw: bytes | None = None):
    """(status, headers, parsed JSON or text) of a POST; HTTP errors are returned, not raised."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, head, text = response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, head, text = exc.code, exc.headers, exc.read().decode()
    try:
        return status, head, json.loads(text)
    except ValueError:
        return status, head, text


def get(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def answer_of(reply: dict) -> str:
    return reply["choices"][0]["message"]["content"]


def log_lines(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "requests.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def nudged(trained, tmp_path_factory) -> Path:
    """A copy of the trained checkpoint with one projector bias nudged: another model by fingerprint
    that still answers the same."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    copy = tmp_path_factory.mktemp("nudged") / "checkpoint-25"
    shutil.copytree(trained.checkpoint, copy)
    weights = copy / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k in tensors if k.endswith("linear_2.bias"))
    tensors[name] = tensors[name] + 1e-4
    save_file(tensors, str(weights), metadata=metadata)
    return copy


@pytest.fixture(scope="module")
def ab(trained, nudged, tmp_path_factory, one_torch_thread):
    """Two embedded variants (a: trained, b: nudged) behind one gateway with a disk cache and a log."""
    root = tmp_path_factory.mktemp("gateway")
    with gateway("--route", f"a={trained.checkpoint}:0.5", "--route", f"b={nudged}:0.5", "--cache-dir",
                 str(root / "cache"), "--log-dir", str(root / "logs"), "--max-tokens", "200",
                 "--max-image-pixels", "5000", "--max-body-bytes", "200000", "--device", "cpu") as served:
        served.logs = root / "logs"
        yield served


def test_infer_server_and_the_openai_client_get_answers_streamed_and_not(ab, trained, capsys):
    from openai import OpenAI

    from commands.infer import main as infer

    assert infer(["--server", ab.url, "--model", "a", "--image", str(trained.red), "--question", COLOUR_QUESTION]) in (0, None)
    assert capsys.readouterr().out.strip() == "red"

    client = OpenAI(base_url=ab.url + "/v1", api_key="unused", timeout=60, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["a", "b"]
    body = chat_body(trained.blue)
    reply = client.chat.completions.create(model="a", messages=body["messages"], temperature=0, max_tokens=8)
    assert reply.choices[0].message.content == "blue" and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens >= 1
    pieces = client.chat.completions.create(model="b", messages=body["messages"], temperature=0.0, max_tokens=8,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == "blue"


def test_a_repeated_question_is_a_cache_hit_and_another_model_a_miss(ab, trained):
    body = chat_body(trained.red, "What colour is it?  ", model="a")  # a question no other test asks
    first = post(ab.url + "/v1/chat/completions", body)
    second = post(ab.url + "/v1/chat/completions", body)
    assert (first[0], first[1]["X-Cache"], first[1]["X-Variant"]) == (200, "miss", "a")
    assert (second[0], second[1]["X-Cache"]) == (200, "hit")
    assert answer_of(second[2]) == answer_of(first[2]) == "red"
    other = post(ab.url + "/v1/chat/completions", {**body, "model": "b"})
    assert (other[1]["X-Cache"], other[1]["X-Variant"], answer_of(other[2])) == ("miss", "b", "red")

    # a hit streams too, ending as a stream ends
    status, head, text = post(ab.url + "/v1/chat/completions", {**body, "stream": True})
    assert (status, head["X-Cache"]) == (200, "hit")
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join((json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                   for e in events[:-1]) == "red"
    # sampling without a seed is never cached
    sampled = post(ab.url + "/v1/chat/completions", {**body, "temperature": 0.7})
    assert (sampled[0], sampled[1]["X-Cache"]) == (200, "uncacheable")
    metrics = get(ab.url + "/metrics")[1]
    assert 'vqa_gateway_cache_total{result="hit"} 2.0' in metrics
    assert 'vqa_gateway_cache_available 1.0' in metrics


def test_users_stick_to_one_variant_and_both_variants_get_users(ab, trained):
    body = chat_body(trained.red)
    seen = {}
    for n in range(12):
        user = f"user-{n}"
        variants = {post(ab.url + "/v1/chat/completions", {**body, "user": user})[1]["X-Variant"],
                    post(ab.url + "/v1/chat/completions", body, {"X-User": user})[1]["X-Variant"]}
        assert len(variants) == 1, f"{user} was sent to both variants"
        seen[user] = variants.pop()
    assert set(seen.values()) == {"a", "b"}
    logged = {e["user"]: e["variant"] for e in log_lines(ab.logs) if e["type"] == "request" and e["user"]}
    assert {u: logged[u] for u in seen} == seen


def test_feedback_is_recorded_in_the_log_next_to_its_request(ab, trained):
    status, head, reply = post(ab.url + "/v1/chat/completions", chat_body(trained.blue, model="a", user="carol"))
    request_id = head["X-Request-Id"]
    assert status == 200 and request_id.startswith("req-")
    assert post(ab.url + "/v1/feedback", {"request_id": request_id, "correct": True, "score": 1})[0] == 200
    assert post(ab.url + "/v1/feedback", {"request_id": request_id})[0] == 400
    assert post(ab.url + "/v1/feedback", {"request_id": "nope", "correct": True})[0] == 400
    entries = log_lines(ab.logs)
    request = next(e for e in entries if e["type"] == "request" and e["request_id"] == request_id)
    assert request["answer"] == "blue" and request["question"] == COLOUR_QUESTION and request["variant"] == "a"
    assert request["status"] == 200 and request["model"]["fingerprint"] == ab.gateway.backends["a"].fingerprint
    assert request["image_sha256"] == [__import__("hashlib").sha256(trained.blue.read_bytes()).hexdigest()]
    assert "base64" not in (ab.logs / "requests.jsonl").read_text()  # never the image itself
    feedback = [e for e in entries if e["type"] == "feedback"]
    assert feedback == [{"type": "feedback", "time": feedback[0]["time"], "request_id": request_id,
                         "score": 1.0, "correct": True}]
    # evaluate.py --compare-log reads every line the gateway wrote, refused requests included
    from evaluation.compare_log import read_logs

    assert post(ab.url + "/v1/chat/completions", {"messages": []})[0] == 400
    read = read_logs([ab.logs])
    assert (read.unreadable, read.examples, read.unknown_feedback) == (0, [], 0)
    assert read.requests[request_id].correct is True and read.requests[request_id].variant == "a"


@pytest.mark.parametrize("body, status, words", [
    ({"messages": []}, 400, "messages"),
    ({"temperature": 0}, 400, "messages"),
    ("a string", 400, "JSON object"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
                                                {"type": "text", "text": "What?"}]}]}, 400, "not a readable image"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
                                                {"type": "text", "text": "What?"}]}]}, 400, "base64"),
    ({"messages": [{"role": "user", "content": "What colour is it?"}]}, 400, "exactly one image"),
    ("TOO_MANY_TOKENS", 400, "max_tokens: 201 is more than the gateway's limit of 200"),
    ("BIG_IMAGE", 413, "pixels"),
    ("BIG_BODY", 413, "limit of 200,000"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(ab, trained, tmp_path, body, status, words):
    from PIL import Image

    raw = None
    if body == "TOO_MANY_TOKENS":
        body = chat_body(trained.red, max_tokens=201)
    elif body == "BIG_IMAGE":
        Image.new("RGB", (100, 60), (1, 2, 3)).save(tmp_path / "big.png")
        body = chat_body(tmp_path / "big.png")
    elif body == "BIG_BODY":
        raw = json.dumps(chat_body(trained.red, question="x" * 300_000)).encode()
    got, head, reply = post(ab.url + "/v1/chat/completions", body, raw=raw)
    assert got == status, reply
    assert words in reply["error"]["message"] and head["X-Request-Id"].startswith("req-")


def test_an_api_key_is_required_and_never_logged(tmp_path):
    fake = FakeOpenAI("a cat")
    (tmp_path / "keys.txt").write_text("# the team's keys\nsecret-key-1\nsecret-key-2\n")
    try:
        with gateway("--backend", fake.url, "--api-keys", str(tmp_path / "keys.txt"), "--cache", "off",
                     "--log-dir", str(tmp_path / "logs"), "--log-max-bytes", "1500", "--log-backups", "2") as served:
            url = served.url + "/v1/chat/completions"
            body = chat_body(None, "What is it?")
            assert post(url, body)[0] == 401
            assert post(url, body, {"Authorization": "Bearer wrong"})[0] == 401
            assert get(served.url + "/v1/models")[0] == 401
            status, head, reply = post(url, body, {"Authorization": "Bearer secret-key-2"})
            assert (status, answer_of(reply), head["X-Cache"]) == (200, "a cat", "off")
            assert "Authorization" not in json.dumps(fake.requests)  # the client's key is not forwarded either
            assert get(served.url + "/health")[0] == 200
            for n in range(6):
                assert post(url, {**body, "user": f"u{n}"}, {"Authorization": "Bearer secret-key-1"})[0] == 200
    finally:
        fake.close()
    # rotated by size, newest first, whole lines only; the keys are nowhere
    files = [tmp_path / "logs" / name for name in ("requests.jsonl", "requests.jsonl.1", "requests.jsonl.2")]
    assert all(f.exists() for f in files) and not (tmp_path / "logs" / "requests.jsonl.3").exists()
    entries = [json.loads(line) for f in reversed(files) for line in f.read_text().splitlines()]
    users = [e["user"] for e in entries if e["status"] == 200 and e["user"]]
    assert users == sorted(users) and users[-1] == "u5"
    assert not any("secret-key" in f.read_text() for f in files)


@pytest.mark.parametrize("misbehave", ["stream_error", "cut"])
def test_a_backend_that_dies_mid_stream_gives_an_error_event_never_a_whole_answer(tmp_path, trained, misbehave):
    from inference.remote import RemoteError, RemotePredictor

    fake = FakeOpenAI("a small red square", misbehave=misbehave)
    try:
        with gateway("--backend", fake.url, "--cache-dir", str(tmp_path / "cache"),
                     "--log-dir", str(tmp_path / "logs")) as served:
            client = RemotePredictor(served.url, timeout=30)
            pieces = []
            with pytest.raises(RemoteError, match="error mid-answer"):
                for piece in client.stream(trained.red, "What is it?"):
                    pieces.append(piece)
            assert "".join(pieces) == "a"
            # nothing half was cached: the same request goes to the backend again
            status, head, text = post(served.url + "/v1/chat/completions",
                                      {**chat_body(trained.red, "What is it?"), "stream": True})
            assert head["X-Cache"] == "miss" and "[DONE]" not in text and '"error"' in text
            # not streamed: a 502 naming the failure
            status, head, reply = post(served.url + "/v1/chat/completions", chat_body(trained.red, "What is it?"))
            if misbehave == "cut":
                assert status == 502 and "cut mid-answer" in reply["error"]["message"]
            assert 'vqa_gateway_backend_errors_total{variant="default"}' in get(served.url + "/metrics")[1]
    finally:
        fake.close()
    failed = [e for e in log_lines(tmp_path / "logs") if e["stream"]]
    assert failed and all(e["status"] == 502 and e["answer"] is None and e["error"] for e in failed)


def test_concurrent_identical_requests_make_one_backend_call(tmp_path, trained):
    def slow(body):
        time.sleep(0.5)  # long enough for every request to arrive while the first is answered
        return "a red square"

    fake = FakeOpenAI(slow)
    try:
        with gateway("--backend", fake.url, "--cache-dir", str(tmp_path / "cache")) as served:
            body = chat_body(trained.red, "What is it?")
            with ThreadPoolExecutor(6) as pool:
                replies = list(pool.map(lambda _: post(served.url + "/v1/chat/completions", body), range(6)))
            assert [r[0] for r in replies] == [200] * 6
            assert {answer_of(r[2]) for r in replies} == {"a red square"}
            assert sorted(r[1]["X-Cache"] for r in replies) == ["hit"] * 5 + ["miss"]
            assert len(fake.requests) == 1
            # another question is another call
            post(served.url + "/v1/chat/completions", chat_body(trained.blue, "What is it?"))
            assert len(fake.requests) == 2
    finally:
        fake.close()


def test_replicas_share_a_redis_cache_and_answer_uncached_while_it_is_down(tmp_path, trained):
    from tests.test_serving_cache import REDIS_SERVER, RedisServer

    assert Path(REDIS_SERVER).exists(), "redis-server is not installed (Debian package redis-server)"
    redis, fake = RedisServer(tmp_path), FakeOpenAI("a cat")
    redis.start()
    body = chat_body(trained.red, "What is it?")
    try:
        with gateway("--backend", fake.url, "--cache", redis.url) as one, \
                gateway("--backend", fake.url, "--cache", redis.url) as two:
            asked = [post(g.url + "/v1/chat/completions", body) for g in (one, two)]
            assert [(r[0], r[1]["X-Cache"], answer_of(r[2])) for r in asked] == [(200, "miss", "a cat"),
                                                                                 (200, "hit", "a cat")]
            assert len(fake.requests) == 1
            redis.stop()
            for _ in range(2):
                status, head, reply = post(two.url + "/v1/chat/completions", body)
                assert (status, head["X-Cache"], answer_of(reply)) == (200, "miss", "a cat")
            assert len(fake.requests) == 3
            assert "vqa_gateway_cache_available 0.0" in get(two.url + "/metrics")[1]
            redis.start()  # back (empty: no persistence): stored again, then shared again
            deadline = time.monotonic() + 30  # the cache tries a failed store again after a while
            while not json.loads(get(two.url + "/health")[1])["cache"]["available"]:
                assert time.monotonic() < deadline, "the cache never came back"
                time.sleep(0.1)
            assert post(two.url + "/v1/chat/completions", body)[1]["X-Cache"] == "miss"
            assert post(one.url + "/v1/chat/completions", body)[1]["X-Cache"] == "hit"
            assert "vqa_gateway_cache_available 1.0" in get(one.url + "/metrics")[1]
    finally:
        redis.stop()
        fake.close()


def test_cache_stats_and_clear_by_model(ab, trained, capsys):
    from commands.serve import main

    cache_dir = str(ab.gateway.cache.description.split(" at ", 1)[1].split(" (")[0])
    post(ab.url + "/v1/chat/completions", chat_body(trained.red, model="b"))
    assert main(["--cache-dir", cache_dir, "--cache-stats"]) == 0
    assert "entries:" in capsys.readouterr().out
    fingerprint = ab.gateway.backends["b"].fingerprint
    assert main(["--cache-dir", cache_dir, "--cache-clear", "--model", fingerprint]) == 0
    cleared = capsys.readouterr().out
    assert cleared.startswith("removed ") and not cleared.startswith("removed 0 ")
    after = post(ab.url + "/v1/chat/completions", chat_body(trained.red, model="b"))
    assert after[1]["X-Cache"] == "miss", (cleared, after)
    assert post(ab.url + "/v1/chat/completions", chat_body(trained.red, model="b"))[1]["X-Cache"] == "hit"


def test_bad_arguments_are_one_line_errors(trained, tmp_path, capsys):
    from commands.serve import main

    for argv, words in [([], "give one of --checkpoint"),
                        (["--route", "a"], "expected NAME=URL_OR_CHECKPOINT:WEIGHT"),
                        (["--route", f"a={trained.checkpoint}:x"], "not a number"),
                        (["--checkpoint", str(tmp_path)], str(tmp_path)),
                        (["--backend", "http://127.0.0.1:9", "--cache", "memcached"], "--cache memcached")]:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_sigterm_lets_the_request_in_flight_finish(tmp_path, trained):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import OFFLINE_ENV, ROOT

    def slow(body):
        time.sleep(1.5)  # still answering when the gateway is told to stop
        return "a red square"

    fake = FakeOpenAI(slow)
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--backend", fake.url, "--port", str(port),
                                "--cache", "off", "--graceful-timeout", "20"],
                               cwd=tmp_path, env=OFFLINE_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.poll() else ""
            with contextlib.suppress(OSError):
                if get(url + "/health")[0] == 200:
                    break
            time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(post, url + "/v1/chat/completions", chat_body(trained.red, "What is it?"))
            while not fake.requests:
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            status, head, body = reply.result(timeout=60)
        assert (status, answer_of(body)) == (200, "a red square")
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(OSError):
            get(url + "/health")
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        fake.close()


def test_a_route_weight_follows_the_last_colon_but_never_eats_a_port():
    from serving.routing import Route, parse_route

    assert parse_route("old=http://gpu:8000") == Route("old", "http://gpu:8000", 1.0)
    assert parse_route("old=http://gpu:8000:0.9") == Route("old", "http://gpu:8000", 0.9)
    assert parse_route("new=http://gpu:8001/v1#my-vqa:0.1") == Route("new", "http://gpu:8001/v1#my-vqa", 0.1)
    assert parse_route("new=checkpoints/run-b:0.1") == Route("new", "checkpoints/run-b", 0.1)

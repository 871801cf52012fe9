"""The answer cache on real stores: diskcache in a temporary directory (shared by two processes)
and a real ``redis-server`` on a free port, stopped and started again to check that an outage
means misses, never an exception, and that the cache comes back with the server."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from errors import UserError
from serving.cache import cache_key, describe_stats, image_digest, is_deterministic, open_cache
from tests.conftest import ROOT, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
OTHER_PNG = PNG + b"\x00"  # other bytes: another image as far as the key is concerned
REPLY = {"id": "chatcmpl-1", "object": "chat.completion", "model": "demo",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "red"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}


def messages(question="What colour is it?", image=PNG, mime="image/png"):
    url = f"data:{mime};base64," + base64.b64encode(image).decode("ascii")
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}]


def keyed(msgs):
    """What the gateway keys (serving/chat.py): each data: image part as the digest of its decoded bytes."""
    def part(p):
        if p.get("type") != "image_url":
            return p
        return {"type": "image", "sha256": image_digest(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))}
    return [{**m, "content": [part(p) for p in m["content"]]} for m in msgs]


def key(msgs=None, settings=None, model="fp-old"):
    return cache_key(messages=keyed(msgs if msgs is not None else messages()),
                     settings={"max_tokens": 16, "temperature": 0} if settings is None else settings, model_fingerprint=model)


def wait_until(condition, what, deadline_s=20.0):
    """Poll ``condition`` until true; a deadline only so that a broken store fails instead of hanging."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class RedisServer:
    """A real redis-server on a free port in its own directory, no persistence; stop/start keep the port."""

    def __init__(self, directory: Path):
        self.directory, self.port, self.process = directory, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], cwd=self.directory,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)

        def answers():
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited with status {self.process.returncode}")
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_until(answers, "redis-server to answer")
        client.close()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_server(tmp_path):
    if not Path(REDIS_SERVER).exists():
        pytest.fail("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["disk", "redis"])
def cache(request, tmp_path):
    """Each backend on a fresh store."""
    spec = request.getfixturevalue("redis_server").url if request.param == "redis" else "disk"
    c = open_cache(spec, tmp_path / "cache", 10**8)
    yield c
    c.close()


# -- keys --------------------------------------------------------------------------------------------

def test_the_key_changes_with_everything_that_changes_the_answer_and_nothing_else():
    base = key()
    assert key() == base and len(base) == 64
    assert key(model="fp-new") != base
    assert key(messages(image=OTHER_PNG)) != base
    assert key(messages(question="What shape is it?")) != base
    assert key(settings={"max_tokens": 17, "temperature": 0}) != base
    assert key(settings={"max_tokens": 16, "temperature": 0, "seed": 1}) != base
    # the same request written differently
    assert key(settings={"temperature": 0.0, "max_tokens": 16.0}) == base
    assert key(settings={"max_tokens": 16, "temperature": 0, "top_p": None}) == base


def test_images_are_keyed_by_their_decoded_bytes():
    # two data URLs of the same bytes are the same image; the key never holds the image itself
    assert key(messages(mime="image/x-png")) == key(messages(mime="image/png"))
    assert keyed(messages())[0]["content"][0] == {"type": "image", "sha256": image_digest(PNG)}
    with pytest.raises(ValueError, match="replaced by their digest"):
        cache_key(messages=messages(), settings={}, model_fingerprint="fp")
    with pytest.raises(ValueError, match="fingerprint"):
        cache_key(messages=[], settings={}, model_fingerprint="")


@pytest.mark.parametrize("settings, deterministic", [
    ({"temperature": 0}, True),
    ({"temperature": 0.0, "top_p": 0.9}, True),
    ({"temperature": 0.7, "seed": 3}, True),
    ({"top_k": 1, "temperature": 1.0}, True),
    ({}, False),  # OpenAI's and vLLM's default temperature is 1.0: sampling
    ({"temperature": 0.7}, False),
    ({"temperature": 0.7, "seed": None}, False),
    ({"temperature": True}, False),
    ({"temperature": 0.7, "seed": "3"}, False),
])
def test_only_deterministic_requests_are_cacheable(settings, deterministic):
    assert is_deterministic(settings) is deterministic


# -- both stores -----------------------------------------------------------------------------------

def test_a_stored_answer_comes_back_and_is_counted(cache):
    k = key()
    assert cache.get(k) is None
    cache.put(k, REPLY, model="fp-old")
    assert cache.get(k) == REPLY
    stats = cache.stats()
    assert (stats["entries"], stats["hits"], stats["misses"], stats["errors"], stats["available"]) == (1, 1, 1, 0, True)
    assert stats["bytes"] > 0 and stats["backend"] == ("redis" if "redis" in cache.description else "disk")
    lines = describe_stats(stats).splitlines()
    assert lines[0] == f"cache: {cache.description}" and lines[1] == "entries: 1"
    assert lines[3] == "hit rate: 50.0% (1 hits, 1 misses)" and lines[4] == "errors: 0"


def test_clear_by_model_removes_only_that_models_answers(cache):
    old = [key(messages(question=f"q{i}"), model="fp-old") for i in range(3)]
    new = [key(messages(question=f"q{i}"), model="fp-new") for i in range(2)]
    for k in old:
        cache.put(k, REPLY, model="fp-old")
    for k in new:
        cache.put(k, {**REPLY, "id": "new"}, model="fp-new")
    assert cache.clear("fp-old") == 3
    assert [cache.get(k) for k in old] == [None] * 3
    assert [cache.get(k)["id"] for k in new] == ["new", "new"]
    assert cache.stats()["entries"] == 2
    assert cache.clear("fp-unknown") == 0
    assert cache.clear() == 2
    assert cache.stats()["entries"] == 0 and cache.get(new[0]) is None


# -- disk ------------------------------------------------------------------------------------------

def test_the_disk_cache_survives_a_restart(tmp_path):
    first = open_cache(None, tmp_path, 10**8)
    first.put(key(), REPLY, model="fp-old")
    assert first.get(key()) == REPLY
    first.close()
    second = open_cache("disk", tmp_path, 10**8)
    assert second.get(key()) == REPLY
    stats = second.stats()
    assert (stats["entries"], stats["hits"]) == (1, 2)  # the hit counts persist with the entries
    second.close()


def test_the_disk_cache_stays_within_its_size_limit(tmp_path):
    limit = 400_000
    cache = open_cache("disk", tmp_path, limit)
    answer = {**REPLY, "padding": "x" * 4000}
    keys = [key(messages(question=f"question {i}")) for i in range(400)]  # ~1.6 MB of answers
    for k in keys:
        cache.put(k, answer, model="fp-old")
    stats = cache.stats()
    assert stats["bytes"] <= limit + 50_000  # diskcache culls after each write: over by at most a few entries
    assert 0 < stats["entries"] < len(keys)
    assert cache.get(keys[-1]) == answer and cache.get(keys[0]) is None  # the oldest went first
    cache.close()


def test_two_processes_share_the_disk_cache(tmp_path):
    """Two gateway workers on one directory: each writes its answers while the other does, and each
    then reads every answer the other stored."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from serving.cache import open_cache
        me, other = sys.argv[1], sys.argv[2]
        cache = open_cache("disk", Path(sys.argv[3]), 10**8)
        for i in range(100):
            cache.put(f"{me}-{i}", {"answer": f"{me} {i}"}, model=me)
        deadline = time.monotonic() + 30
        while any(cache.get(f"{other}-{i}") != {"answer": f"{other} {i}"} for i in range(100)):
            assert time.monotonic() < deadline, "never saw the other process's answers"
            time.sleep(0.05)
        assert cache.stats()["errors"] == 0 and cache.available
        cache.close()
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script, me, other, str(tmp_path)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for me, other in (("a", "b"), ("b", "a"))]
    try:
        outputs = [w.communicate(timeout=60)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    cache = open_cache("disk", tmp_path, 10**8)
    assert cache.stats()["entries"] == 200 and cache.clear("a") == 100
    cache.close()


def test_a_disk_store_that_cannot_open_is_no_error_and_recovers(tmp_path, caplog):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache directory should be")
    cache = open_cache("disk", blocked, 10**8, retry_interval=0)
    assert not cache.available
    cache.put(key(), REPLY, model="fp-old")
    assert cache.get(key()) is None and cache.clear() == 0
    assert cache.stats()["errors"] >= 3 and cache.stats()["entries"] is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    blocked.unlink()
    cache.put(key(), REPLY, model="fp-old")
    assert cache.available and cache.get(key()) == REPLY
    cache.close()


def test_a_busy_disk_store_drops_one_answer_and_stays_in_service(tmp_path, caplog):
    """Another worker holding the database's write lock longer than the timeout: that put is
    dropped and counted, the cache stays available, and the next put (lock released) is stored."""
    cache = open_cache("disk", tmp_path, 10**8, timeout=0.05)
    holder = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        cache.put(key(), REPLY, model="fp-old")
        assert cache.stats()["errors"] == 1 and cache.available
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cache.get(key()) is None
    cache.put(key(), REPLY, model="fp-old")
    assert cache.get(key()) == REPLY and cache.stats()["errors"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    cache.close()


# -- redis -----------------------------------------------------------------------------------------

def test_gateway_replicas_share_one_redis_cache(redis_server):
    replicas = [open_cache(redis_server.url, Path("unused"), 10**8) for _ in range(2)]
    a, b = replicas
    a.put(key(), REPLY, model="fp-old")
    b.put(key(), REPLY, model="fp-old")  # both replicas answered the same question: one entry
    assert b.get(key()) == REPLY
    assert a.stats()["bytes"] == len(json.dumps(REPLY, separators=(",", ":")))
    assert a.get(key(model="fp-new")) is None
    assert a.stats() | {"errors": None} == b.stats() | {"errors": None}
    assert (a.stats()["hits"], a.stats()["misses"], a.stats()["entries"]) == (1, 1, 1)
    assert b.clear("fp-old") == 1 and a.get(key()) is None
    for c in replicas:
        c.close()


def test_redis_down_means_uncached_answers_and_it_comes_back(redis_server, caplog):
    cache = open_cache(redis_server.url, Path("unused"), 10**8, retry_interval=0)
    cache.put(key(), REPLY, model="fp-old")
    assert cache.get(key()) == REPLY

    redis_server.stop()  # mid-run
    assert cache.get(key()) is None
    cache.put(key(model="fp-new"), REPLY, model="fp-new")
    assert cache.clear() == 0
    stats = cache.stats()
    assert not stats["available"] and stats["errors"] == 4 and stats["entries"] is None
    assert "UNAVAILABLE" in describe_stats(stats) and "unknown" in describe_stats(stats)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0]

    redis_server.start()  # empty again (no persistence), its scripts forgotten
    assert cache.get(key()) is None and cache.available
    cache.put(key(), REPLY, model="fp-old")
    assert cache.get(key()) == REPLY
    assert cache.stats()["entries"] == 1
    cache.close()


def test_redis_down_at_start_is_no_error(tmp_path, caplog):
    server = RedisServer(tmp_path)
    cache = open_cache(server.url, Path("unused"), 10**8, retry_interval=0)
    try:
        assert not cache.available and cache.get(key()) is None
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        server.start()
        cache.put(key(), REPLY, model="fp-old")
        assert cache.available and cache.get(key()) == REPLY
    finally:
        cache.close()
        server.stop()


# -- specs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("memcached://localhost", "expected disk, off or redis://"),
    ("redis://localhost:port/0", "not a Redis URL"),
    ("redis://localhost:6379/zero", "DB a number"),
    ("redis:///0", "DB a number"),
])
def test_a_spec_that_names_no_store_is_a_clear_error(spec, message, tmp_path):
    with pytest.raises(UserError, match=message):
        open_cache(spec, tmp_path, 10**8)


def test_off_means_no_cache(tmp_path):
    assert open_cache("off", tmp_path, 10**8) is None
    assert list(tmp_path.iterdir()) == []

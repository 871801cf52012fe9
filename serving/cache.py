"""The answer cache: the same image, question, settings and model return the stored answer.

A key is the sha256 of canonical JSON holding the messages (every image replaced by the sha256 of
its decoded bytes, so the image itself is never stored and two encodings of the same file share
an entry), the generation settings that change the answer, and the model's fingerprint (so a new
model never returns an old model's answer). Only deterministic requests are cached
(:func:`is_deterministic`); the stored value is the non-streamed chat-completion JSON, kept as
JSON text (never pickled).

Two stores behind one :class:`AnswerCache`:

- disk (the default): ``diskcache`` in a directory: SQLite in WAL mode, so several gateway worker
  processes share it safely; bounded by ``size_limit`` (the entries stored longest ago go first:
  diskcache's least-recently-stored policy, under which a hit only reads; least-recently-used
  would make every hit a write that all workers queue for); survives restarts; hits and misses
  are counted in the database itself, so all workers add up.
- Redis (``redis://HOST:PORT/DB``): shared by gateway replicas. Entries are ``vqa:answer:<key>``
  strings; a set per model fingerprint (``vqa:answer:model:<fingerprint>``) lets ``clear(model)``
  remove exactly that model's entries; hits, misses and stored bytes are Redis counters, so all
  replicas share them. Redis bounds its own memory: run it with ``maxmemory`` and
  ``maxmemory-policy allkeys-lru``; entries it evicts are simply misses.

The cache is an optimisation, never a reason for a request to fail: on store trouble (Redis
down or not answering, a disk full or unwritable) ``get`` returns ``None``, ``put`` drops the answer,
``errors`` counts, ``available`` turns False and one warning is logged; the store is tried again
after ``retry_interval`` seconds and the cache is back (one info line) as soon as it answers.
A disk store that is merely busy (another worker held its lock longer than ``timeout``) drops that
one lookup or answer and counts an error, without taking the cache out of service.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from errors import UserError

log = logging.getLogger(__name__)

# Bumped when the key's layout changes, so old entries are never read with a new meaning.
KEY_VERSION = 1
REDIS_PREFIX = "vqa:answer:"


# -- keys ------------------------------------------------------------------------------------------

def image_digest(data: bytes) -> str:
    """The sha256 (hex) of an image's decoded bytes: what a key holds in place of the image."""
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> Any:
    """JSON-equal values made identical: integral floats as ints (``temperature: 0`` and ``0.0``
    ask the same), so they hash the same."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _holds_image_url(value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("type") == "image_url" or any(_holds_image_url(v) for v in value.values())
    return isinstance(value, list) and any(_holds_image_url(v) for v in value)


def cache_key(*, messages: list[dict], settings: dict, model_fingerprint: str) -> str:
    """The key of an answer: sha256 (hex) of canonical JSON (sorted keys) of the messages (images
    already replaced by ``{"type": "image", "sha256": image_digest(bytes)}``), the settings that
    change the answer (the caller leaves out ``stream``, ``user`` and the like; ``None`` values count
    as absent) and the model's fingerprint."""
    if not model_fingerprint:
        raise ValueError("cache_key needs the model's fingerprint: without it a new model would get old answers")
    if _holds_image_url(messages):
        raise ValueError("cache_key takes messages whose images are replaced by their digest")
    settings = {k: v for k, v in settings.items() if v is not None}
    document = {"version": KEY_VERSION, "model": model_fingerprint, "messages": messages, "settings": settings}
    text = json.dumps(_canonical(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_deterministic(settings: dict) -> bool:
    """Whether the same request always gets the same answer, so a stored one may be returned:
    greedy decoding (``temperature`` 0, or ``top_k`` 1) or sampling with an explicit integer
    ``seed``. An absent ``temperature`` counts as sampling: it is 1.0 by default in the OpenAI API
    and in vLLM, so such a request is cached only with a seed."""
    seed = settings.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return True
    temperature, top_k = settings.get("temperature"), settings.get("top_k")
    return (_number(temperature) and temperature == 0) or (_number(top_k) and top_k == 1)


# -- stores ----------------------------------------------------------------------------------------

class _Store(Protocol):
    """What a backing store does; it may raise (:class:`AnswerCache` turns that into misses)."""

    def get(self, key: str) -> str | None: ...
    def put(self, key: str, text: str, model: str) -> None: ...
    def counts(self) -> dict[str, int]: ...  # entries, bytes, hits, misses
    def clear(self, model: str | None) -> int: ...
    def close(self) -> None: ...


class _DiskStore:
    """``diskcache`` in ``directory``: entries tagged with their model fingerprint (``evict(tag)``
    clears one model), hits and misses counted by diskcache in its database."""

    def __init__(self, directory: Path, size_limit: int, timeout: float):
        import diskcache

        Path(directory).mkdir(parents=True, exist_ok=True)
        self.cache = diskcache.Cache(str(directory), timeout=timeout, size_limit=size_limit, statistics=1,
                                     tag_index=1, eviction_policy="least-recently-stored")

    def get(self, key: str) -> str | None:
        value = self.cache.get(key)
        return value if isinstance(value, str) else None

    def put(self, key: str, text: str, model: str) -> None:
        self.cache.set(key, text, tag=model)

    def counts(self) -> dict[str, int]:
        return {"entries": len(self.cache), "bytes": self.cache.volume(),
                "hits": self.cache.reset("hits"), "misses": self.cache.reset("misses")}

    def clear(self, model: str | None) -> int:
        return self.cache.clear(retry=True) if model is None else self.cache.evict(model, retry=True)

    def close(self) -> None:
        self.cache.close()


# Lua keeps each step one atomic round trip, so replicas never see half of one.
_REDIS_GET = """
local v = redis.call('GET', KEYS[1])
if v then redis.call('INCR', KEYS[2]) else redis.call('INCR', KEYS[3]) end
return v
"""
_REDIS_PUT = """
local old = redis.call('STRLEN', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('INCRBY', KEYS[4], string.len(ARGV[1]) - old)
return 0
"""
_REDIS_CLEAR = """
local removed, freed = 0, 0
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local n = redis.call('STRLEN', k)
  if redis.call('DEL', k) == 1 then removed = removed + 1; freed = freed + n end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('DECRBY', KEYS[3], freed) < 0 then redis.call('SET', KEYS[3], 0) end
return removed
"""


class _RedisStore:
    """Redis at ``url``: one string per entry, a set of entry keys per model fingerprint, and shared
    counters. Short socket timeouts and no client-side retries: a Redis that does not answer
    promptly is treated as down (the request goes on uncached) instead of holding a request."""

    def __init__(self, url: str, prefix: str, timeout: float):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                           retry=Retry(NoBackoff(), 0), decode_responses=True)
        self.client.ping()
        self._get = self.client.register_script(_REDIS_GET)
        self._put = self.client.register_script(_REDIS_PUT)
        self._clear = self.client.register_script(_REDIS_CLEAR)

    def _name(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def get(self, key: str) -> str | None:
        return self._get(keys=[self._name(key), self._name("stats", "hits"), self._name("stats", "misses")])

    def put(self, key: str, text: str, model: str) -> None:
        self._put(keys=[self._name(key), self._name("model", model), self._name("models"), self._name("stats", "bytes")],
                  args=[text, model])

    def counts(self) -> dict[str, int]:
        models = sorted(self.client.smembers(self._name("models")))
        with self.client.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.scard(self._name("model", model))
            pipe.mget([self._name("stats", name) for name in ("bytes", "hits", "misses")])
            *sizes, (size, hits, misses) = pipe.execute()
        return {"entries": sum(sizes), "bytes": int(size or 0), "hits": int(hits or 0), "misses": int(misses or 0)}

    def clear(self, model: str | None) -> int:
        models = [model] if model is not None else sorted(self.client.smembers(self._name("models")))
        return sum(self._clear(keys=[self._name("model", m), self._name("models"), self._name("stats", "bytes")], args=[m])
                   for m in models)

    def close(self) -> None:
        self.client.close()


# -- the cache -------------------------------------------------------------------------------------

class AnswerCache:
    """Stored chat-completion answers by :func:`cache_key`; never raises on store trouble.

    ``open_store`` builds the store (and may raise ``failures``); it is called again after an
    outage only if the first try failed (a Redis client reconnects by itself). ``busy``: the
    failures that mean contention, not an outage (counted, but the store stays in service)."""

    def __init__(self, backend: str, description: str, open_store: Callable[[], _Store],
                 failures: tuple[type[BaseException], ...], busy: tuple[type[BaseException], ...] = (),
                 retry_interval: float = 1.0):
        self.backend = backend
        self.description = description
        self.available = True
        self._open_store = open_store
        self._failures = failures
        self._busy = busy
        self._retry_interval = retry_interval
        self._store: _Store | None = None
        self._retry_at = 0.0
        self._errors = 0
        self._lock = threading.Lock()
        self._use(lambda store: None, None)  # open now, so an outage at start is said at start

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._errors += 1
            self._retry_at = time.monotonic() + self._retry_interval
            was_available, self.available = self.available, False
        if was_available:
            log.warning("answer cache (%s) unavailable, answering uncached until it is back: %s: %s",
                        self.description, type(exc).__name__, " ".join(str(exc).split()))

    def _use(self, operation: Callable[[_Store], Any], default: Any) -> Any:
        """``operation(store)``, or ``default`` (and one more error) while the store is in trouble."""
        if not self.available and time.monotonic() < self._retry_at:
            with self._lock:
                self._errors += 1
            return default
        try:
            if self._store is None:
                with self._lock:  # request threads arrive together: open one store, not several
                    if self._store is None:
                        self._store = self._open_store()
            result = operation(self._store)
        except self._busy:
            with self._lock:
                self._errors += 1
            return default
        except self._failures as exc:
            self._failed(exc)
            return default
        if not self.available:
            self.available = True
            log.info("answer cache (%s) is back", self.description)
        return result

    def get(self, key: str) -> dict | None:
        """The stored chat-completion JSON for ``key``, or None (not stored, or the store is in trouble)."""
        text = self._use(lambda store: store.get(key), None)
        try:
            value = json.loads(text) if text is not None else None
        except ValueError:
            return None  # not ours or cut short: a miss, and the next put of this key stores a good one
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict, model: str) -> None:
        """Store ``value`` (the non-streamed chat-completion JSON) under ``key`` for model
        fingerprint ``model`` (replacing what was there); dropped when the store is in trouble."""
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        self._use(lambda store: store.put(key, text, model), None)

    def stats(self) -> dict:
        """backend, description, available, entries, bytes, hits, misses (shared by every process
        and replica using the store; None while it is unreachable), errors (this process). bytes:
        the disk store's size on disk (database included), or the stored answers' size in Redis."""
        counts = self._use(lambda store: store.counts(), None) or dict.fromkeys(("entries", "bytes", "hits", "misses"))
        return {"backend": self.backend, "description": self.description, "available": self.available,
                **counts, "errors": self._errors}

    def clear(self, model: str | None = None) -> int:
        """Remove the entries of model fingerprint ``model`` (all entries when None); how many went
        (0 when the store is unreachable: see ``available``)."""
        return self._use(lambda store: store.clear(model), 0)

    def close(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except self._failures:
                pass
            self._store = None




def _check_redis_url(spec: str) -> None:
    """A clear one-line error for a Redis URL that cannot be meant (``redis://HOST:PORT/DB``)."""
    try:
        parts = urllib.parse.urlsplit(spec)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise UserError(f"--cache {spec}: not a Redis URL ({exc}); expected redis://HOST:PORT/DB") from None
    database = parts.path.strip("/")
    if not parts.hostname or (database and not database.isdigit()):
        raise UserError(f"--cache {spec}: expected redis://HOST:PORT/DB (DB a number, e.g. redis://localhost:6379/0)")


def open_cache(spec: str | None, directory: Path, size_limit: int, *, timeout: float = 1.0,
               retry_interval: float = 1.0) -> AnswerCache | None:
    """The cache ``spec`` names: None or "disk" = diskcache in ``directory`` bounded by
    ``size_limit`` bytes; "redis://HOST:PORT/DB" (or rediss://) = Redis (bounded by its own
    ``maxmemory``, not by ``size_limit``); "off" = None. A store that is down is no error (see :class:`AnswerCache`);
    a spec that names none of these is a :class:`UserError`. ``timeout``: seconds a store may take
    per operation before it counts as in trouble."""
    if spec == "off":
        return None
    if spec is None or spec == "disk":
        if size_limit <= 0:
            raise UserError(f"cache size limit must be a positive number of bytes, not {size_limit}")
        import diskcache

        return AnswerCache("disk", f"diskcache at {directory} (limit {_size(size_limit)})",
                           lambda: _DiskStore(Path(directory), size_limit, timeout), (OSError, sqlite3.Error),
                           busy=(diskcache.Timeout,), retry_interval=retry_interval)
    if spec.startswith(("redis://", "rediss://")):
        import redis

        _check_redis_url(spec)
        return AnswerCache("redis", f"redis at {spec}", lambda: _RedisStore(spec, REDIS_PREFIX, timeout),
                           (redis.RedisError, OSError), retry_interval=retry_interval)
    raise UserError(f"--cache {spec}: expected disk, off or redis://HOST:PORT/DB")


# -- reporting -------------------------------------------------------------------------------------

def _size(n: float | None) -> str:
    if n is None:
        return "unknown"
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def describe_stats(stats: dict) -> str:
    """The lines ``serve.py --cache-stats`` prints: backend, entries, bytes, hit rate, errors."""
    hits, misses = stats.get("hits"), stats.get("misses")
    if hits is None or misses is None:
        rate = "unknown (store unreachable)"
    elif hits + misses == 0:
        rate = "no lookups yet"
    else:
        rate = f"{100 * hits / (hits + misses):.1f}% ({hits} hits, {misses} misses)"
    entries = stats.get("entries")
    lines = [f"cache: {stats.get('description') or stats.get('backend')}"
             + ("" if stats.get("available", True) else " - UNAVAILABLE, answering uncached"),
             f"entries: {'unknown' if entries is None else entries}",
             f"size: {_size(stats.get('bytes'))}",
             f"hit rate: {rate}",
             f"errors: {stats.get('errors', 0)}"]
    return "\n".join(lines)

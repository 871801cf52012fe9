"""Prometheus metrics of one gateway, in a registry of its own (no process-global collectors, so
two gateways in one process, e.g. in tests, never share counts). One gateway process per replica:
scrape each replica (several uvicorn workers in one replica would each count separately)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vqa_gateway_requests", "Chat-completion requests by variant and HTTP status",
                                ["variant", "status"], registry=r)
        self.latency = Histogram("vqa_gateway_request_seconds", "Request latency (to the last byte of a stream)",
                                 ["variant", "cache"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("vqa_gateway_tokens", "Tokens by variant and kind (prompt, completion)",
                              ["variant", "kind"], registry=r)
        self.cache = Counter("vqa_gateway_cache", "Cache lookups by result (hit, miss, off, uncacheable)",
                             ["result"], registry=r)
        self.cache_available = Gauge("vqa_gateway_cache_available", "1 while the answer cache's store answers",
                                     registry=r)
        self.cache_errors = Gauge("vqa_gateway_cache_errors", "Store errors the answer cache has counted", registry=r)
        self.cache_store = Gauge("vqa_gateway_cache_store", "The cache store's own counts (entries, bytes, hits, "
                                 "misses; shared by every gateway using the store)", ["stat"], registry=r)
        self.backend_errors = Counter("vqa_gateway_backend_errors", "Backend failures (HTTP errors, cut streams)",
                                      ["variant"], registry=r)
        self.feedback = Counter("vqa_gateway_feedback", "Feedback records received", registry=r)

    def observe(self, variant: str, status: int, seconds: float, cache: str,
                prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.requests.labels(variant, str(status)).inc()
        self.latency.labels(variant, cache).observe(seconds)
        self.cache.labels(cache).inc()
        if prompt_tokens:
            self.tokens.labels(variant, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(variant, "completion").inc(completion_tokens)

    def render(self, cache_stats: dict | None) -> bytes:
        if cache_stats is not None:
            self.cache_available.set(1 if cache_stats.get("available", True) else 0)
            self.cache_errors.set(cache_stats.get("errors") or 0)
            for stat in ("entries", "bytes", "hits", "misses"):
                if cache_stats.get(stat) is not None:  # None while the store is unreachable
                    self.cache_store.labels(stat).set(cache_stats[stat])
        return generate_latest(self.registry)

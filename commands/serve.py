"""Serve the VQA model over an OpenAI-compatible API: answer cache, online A/B, request log, metrics.

examples:
  # our model in this process, on http://127.0.0.1:8000 (POST /v1/chat/completions)
  python serve.py --checkpoint checkpoints/demo-run
  python infer.py --server http://127.0.0.1:8000 --image cat.jpg --question "What is on the sofa?"
  # in front of vLLM (or transformers serve, llama.cpp's server); #NAME picks the served model
  python serve.py --backend http://gpu-box:8001#my-vqa --host 0.0.0.0 --api-keys keys.txt
  # A/B: 90% of users get the old model, 10% the new one (sticky per user), every request logged
  python serve.py --route old=checkpoints/run-a:0.9 --route new=http://gpu-box:8001:0.1 --log-dir logs/
  python evaluate.py --compare-log logs/requests.jsonl
  # a cache shared by several gateway replicas; its numbers; forget one model's answers
  python serve.py --checkpoint checkpoints/demo-run --cache redis://cache-host:6379/0
  python serve.py --cache redis://cache-host:6379/0 --cache-stats
  python serve.py --cache-clear --model FINGERPRINT

endpoints: POST /v1/chat/completions (stream true or false), GET /v1/models (the variants and their
model fingerprints), POST /v1/feedback {"request_id": "req-...", "score": 0.5, "correct": true}
(a person's judgement of an answer, recorded in the log), GET /health, GET /metrics (Prometheus).
Every response has X-Request-Id; answers have X-Variant and X-Cache (hit, miss, off, uncacheable).
A request picks its variant by its "user" field (else the X-User header): the same user always
gets the same variant; without a user, at random by weight. "model": VARIANT asks one variant.

cache: deterministic requests only (temperature 0, or a seed; the embedded model decodes greedily
when no temperature is given, a server samples), keyed by the images' sha256, the messages, the
settings and the model's fingerprint. Identical requests at the same moment make one backend call
(per gateway process; the others wait for it and are cache hits).

request log (--log-dir DIR): DIR/requests.jsonl, one JSON line per request and per feedback,
rotated by size to requests.jsonl.1, .2, ...; images are logged by sha256, never stored. API keys
are never logged. Ctrl-C or SIGTERM stops taking requests and lets the ones in flight finish
(--graceful-timeout).

exit status: 0 stopped; 2 bad arguments (a checkpoint that is not one, an unreadable key file,
a bad --route or --cache), with one line on stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cli
from errors import UserError, read_utf8

DEFAULT_CACHE_DIR = "outputs/answer-cache"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser_from_doc(__doc__)
    models = parser.add_argument_group("models (one of these)")
    models.add_argument("--checkpoint", metavar="DIR", help="our model in this process (checkpoint, run or export)")
    models.add_argument("--backend", metavar="URL[#MODEL]", help="an OpenAI-compatible server to forward to")
    models.add_argument("--route", action="append", default=[], metavar="NAME=URL_OR_CHECKPOINT:WEIGHT",
                        help="one A/B variant (repeatable), e.g. --route new=checkpoints/run-b:0.1")
    models.add_argument("--device", help="embedded models: cuda, cpu, ... (default: cuda when available)")
    models.add_argument("--dtype", choices=cli.DTYPE_NAMES,
                        help="embedded models: weights dtype (default: as saved)")
    models.add_argument("--timeout", type=cli.positive_float, default=600.0, metavar="SECONDS",
                        help="seconds a backend may take per request (default: %(default)s)")
    http = parser.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    http.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    http.add_argument("--api-keys", metavar="FILE", help="accepted API keys, one per line (default: no key needed)")
    http.add_argument("--max-body-bytes", type=cli.positive_int, default=20 << 20, help="request body cap")
    http.add_argument("--max-image-pixels", type=cli.positive_int, default=4096 * 4096, help="pixels per image cap")
    http.add_argument("--max-tokens", type=cli.positive_int, default=1024,
                      help="max_tokens cap (also sent to a server when a request gives none)")
    http.add_argument("--default-max-tokens", type=cli.positive_int, default=128,
                      help="embedded models: max_tokens when a request gives none")
    http.add_argument("--graceful-timeout", type=cli.positive_float, default=30.0,
                      help="seconds in-flight requests get to finish at shutdown")
    cache = parser.add_argument_group("answer cache")
    cache.add_argument("--cache", default="disk", metavar="disk|off|redis://HOST:PORT/DB", help="(default: disk)")
    cache.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="--cache disk: where (default: %(default)s)")
    cache.add_argument("--cache-size", type=cli.positive_int, default=1 << 30, help="--cache disk: bytes (default: 1 GiB)")
    cache.add_argument("--cache-stats", action="store_true", help="print the cache's entries, bytes, hit rate; exit")
    cache.add_argument("--cache-clear", action="store_true", help="remove cached answers (all, or --model's); exit")
    cache.add_argument("--model", metavar="FINGERPRINT", help="--cache-clear: only this model's answers")
    log = parser.add_argument_group("request log")
    log.add_argument("--log-dir", metavar="DIR", help="write DIR/requests.jsonl (default: no log)")
    log.add_argument("--log-max-bytes", type=cli.positive_int, default=100 << 20, help="rotate past this size")
    log.add_argument("--log-backups", type=cli.positive_int, default=10,
                     help="rotated files kept (default: %(default)s; the oldest is dropped)")
    return parser


def routes(args: argparse.Namespace):
    from serving.routing import Route, parse_route

    given = [flag for flag in ("checkpoint", "backend") if getattr(args, flag)] + (["route"] if args.route else [])
    if len(given) != 1:
        cli.fail("give one of --checkpoint DIR, --backend URL or --route NAME=TARGET:WEIGHT (repeatable)"
                 + (f", not {' and '.join('--' + g for g in given)}" if given else ""))
    if args.route:
        return [parse_route(text) for text in args.route]
    return [Route("default", args.checkpoint or args.backend)]


def read_api_keys(path: str | None) -> frozenset[str]:
    if path is None:
        return frozenset()
    keys = frozenset(line.strip() for line in read_utf8(path, "API key file").splitlines()
                     if line.strip() and not line.startswith("#"))
    if not keys:
        raise UserError(f"{path}: holds no API key (one per line)")
    return keys


def open_answer_cache(args: argparse.Namespace):
    from serving.cache import open_cache

    return open_cache(args.cache, Path(args.cache_dir), args.cache_size)


def build_gateway(args: argparse.Namespace):
    """Everything the app serves with, from the parsed arguments (the tests build it this way too)."""
    from serving.app import Gateway
    from serving.backends import EmbeddedBackend, RemoteBackend
    from serving.chat import Limits
    from serving.requestlog import RequestLog
    from serving.routing import Router

    router = Router(routes(args))
    api_keys = read_api_keys(args.api_keys)
    for route in router.routes:
        if not route.remote:
            cli.check_model_arguments(argparse.Namespace(checkpoint=route.target))
    backends = {}
    for route in router.routes:
        if route.remote:
            backends[route.name] = RemoteBackend(route.name, route.target, timeout=args.timeout, max_tokens=args.max_tokens)
        else:
            backends[route.name] = EmbeddedBackend(route.name, route.target, device=cli.torch_device(args.device),
                                                   dtype=args.dtype, timeout=args.timeout,
                                                   default_max_tokens=min(args.default_max_tokens, args.max_tokens))
    log = RequestLog(args.log_dir, args.log_max_bytes, args.log_backups) if args.log_dir else None
    return Gateway(router=router, backends=backends, cache=open_answer_cache(args), log=log, api_keys=api_keys,
                   limits=Limits(args.max_body_bytes, args.max_image_pixels, args.max_tokens), timeout=args.timeout)


def cache_command(args: argparse.Namespace) -> int:
    from serving.cache import describe_stats

    cache = open_answer_cache(args)
    if cache is None:
        cli.fail("--cache off: there is no cache to show or clear")
    try:
        if args.cache_clear:
            removed = cache.clear(args.model)
            if not cache.available:
                cli.fail(f"{cache.description}: unreachable; nothing was removed")
            print(f"removed {removed} cached answer(s)" + (f" of model {args.model}" if args.model else ""))
        else:
            print(describe_stats(cache.stats()))
    finally:
        cache.close()
    return 0


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model and not args.cache_clear:
        cli.fail("--model FINGERPRINT is for --cache-clear (a server's model: --backend URL#MODEL)")
    if args.cache_stats or args.cache_clear:
        return cache_command(args)
    import uvicorn

    from serving.app import create_app

    app = create_app(build_gateway(args))
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=args.graceful_timeout,
                log_level="info")
    return 0

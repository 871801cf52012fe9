"""Training data at scale: memory per rank and start-up of the data set, with and without the token cache.

Builds its own fixed workload: N synthetic merged records in the project's format (two turns,
about 1.2 KB each, the size of LLaVA-665k's records; 1,000 distinct images named in images.json,
never opened here), rendered with the real Qwen2.5 tokenizer and 728 image tokens per sample
(config.yaml's SigLIP so400m layout), max_length 2048. Each measurement runs in a fresh process:

- ``cached-cold``: ``VQADataset(cache=True)`` with no cache yet (parse, tokenize, write, map);
- ``cached``: the same with the cache in place (what every rank does on every later start);
- ``in-memory``: ``VQADataset(cache=False)``, every start parses and tokenizes (the code before the cache);
- ``llava``: LLaVA's way, the parsed JSON list kept per rank and each sample tokenized when asked.

Memory is the process's *anonymous* memory (``/proc/self/smaps_rollup``: heap, not file pages)
after the data set is open, minus the same before it (torch and the tokenizer loaded): the memory a
rank holds privately for its data. A memory-mapped cache's pages are file pages in the OS's page
cache, shared by every rank and worker that maps them (they count in RSS, not here). Data time per
step: 32 samples' token tensors (``_expand``; ``__getitem__`` without the image), median of 20 steps.

    .venv/bin/python bench/data_scale.py --records 100000 500000 --modes cached-cold cached in-memory llava
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "checkpoints" / "qwen2.5-tokenizer"
NUM_IMAGE_TOKENS = 728
MAX_LENGTH = 2048
WORDS = ("the a red blue green small large square circle triangle left right top bottom middle shape colour "
         "image picture there is are how many what which where on in of and with next to above below").split()


def write_records(directory: Path, n: int, seed: int = 0) -> Path:
    """qa.json (streamed out: the generator never holds the list) and images.json."""
    directory.mkdir(parents=True, exist_ok=True)
    qa = directory / "qa.json"
    if qa.is_file() and json.loads((directory / "meta.json").read_text())["records"] == n:
        return qa
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    with open(qa, "w", encoding="utf-8") as f:
        f.write("[")
        for i in range(n):
            record = {"id": f"r{i}", "image_id": str(i % 1000), "source": "bench", "messages": [
                {"role": "user", "content": f"<|extra_0|>\n{text(25)}?"}, {"role": "assistant", "content": text(45) + "."},
                {"role": "user", "content": text(20) + "?"}, {"role": "assistant", "content": text(60) + "."}]}
            f.write(("," if i else "") + json.dumps(record, ensure_ascii=False))
        f.write("]")
    (directory / "images.json").write_text(json.dumps({str(k): {"path": f"images/{k}.jpg", "source": "bench"}
                                                       for k in range(1000)}))
    (directory / "meta.json").write_text(json.dumps({"records": n}))
    return qa


def anonymous_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    raise RuntimeError("no Anonymous line in /proc/self/smaps_rollup")


def measure(qa: Path, mode: str, cache_dir: Path) -> dict:
    """One mode, in this (fresh) process."""
    import numpy as np

    from dataset import VQADataset
    from qwen import PromptRenderer, load_tokenizer
    from qwen.prompt import record_messages
    from visual import ImagePreprocessor

    tokenizer = load_tokenizer(str(TOKENIZER))
    renderer = PromptRenderer(tokenizer, NUM_IMAGE_TOKENS)
    renderer.render(record_messages([{"role": "user", "content": "<|extra_0|>\nwarm up"},
                                     {"role": "assistant", "content": "ok"}], "<|extra_0|>", None))
    before = anonymous_kib()
    started = time.perf_counter()
    if mode == "llava":
        records = json.loads(qa.read_text(encoding="utf-8"))
        ready = time.perf_counter() - started

        def batch(indices):
            return [renderer.render(record_messages(records[i]["messages"], "<|extra_0|>", None)).input_ids for i in indices]
        size = len(records)
    else:
        ds = VQADataset(qa, renderer, ImagePreprocessor(size=384), MAX_LENGTH, show_progress=False,
                        cache=mode.startswith("cached"), cache_dir=str(cache_dir))
        ready = time.perf_counter() - started

        def batch(indices):
            return [ds._expand(i) for i in indices]
        size = len(ds)
    memory = anonymous_kib() - before
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(20):
        indices = rng.integers(0, size, 32).tolist()
        t = time.perf_counter()
        batch(indices)
        steps.append(time.perf_counter() - t)
    return {"mode": mode, "samples": size, "ready_s": round(ready, 2), "data_mib": round(memory / 1024, 1),
            "step_ms": round(1000 * statistics.median(steps), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[100_000])
    parser.add_argument("--modes", nargs="+", default=["cached-cold", "cached", "in-memory", "llava"])
    parser.add_argument("--work", default=str(ROOT / "data" / "bench-scale"))
    parser.add_argument("--one", nargs=3, metavar=("QA", "MODE", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), args.one[1], Path(args.one[2]))))
        return 0
    rows = []
    for n in args.records:
        qa = write_records(Path(args.work) / f"n{n}", n)
        cache = Path(args.work) / f"cache-{n}"
        for mode in args.modes:
            if mode == "cached-cold":
                import shutil

                shutil.rmtree(cache, ignore_errors=True)
            out = subprocess.run([sys.executable, __file__, "--one", str(qa), mode, str(cache)], capture_output=True,
                                 text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            row = {"records": n, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| records | mode | ready (s) | data memory per rank (MiB) | 32 samples (ms) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['records']:,} | {r['mode']} | {r['ready_s']} | {r['data_mib']} | {r['step_ms']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

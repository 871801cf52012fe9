"""Benchmark of the process_image.py merge at real data-set scale.

    .venv/bin/python bench/process_image.py [--runs 3] [--dir DIR] [--keep]

Generates, into a temporary directory, raw files the size of the real ones:
  * AI Challenger caption train set: 210,000 images x 5 Chinese captions, \\u-escaped like
    caption_train_annotations_20170902.json (~170 MB),
  * LLaVA-Instruct complex_reasoning_77k.json (77,000 records) and detail_23k.json (23,000), over a
    pool of 82,783 COCO file names (detail reuses most images of complex, as the real files do),
and one empty file per image (292,783 files), so the existence checks are real. Then it runs the
real command line, ``python process_image.py --config ...``, in a fresh subprocess per run and
reports the median wall time (interpreter start, reading, existence checks and the fsynced
writes included; generation excluded, and flushed to disk before the first run) and the peak RSS
of the merge process (``os.wait4`` rusage of that child only).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AI_CHALLENGER_IMAGES = 210_000
COMPLEX_RECORDS = 77_000
DETAIL_RECORDS = 23_000
COCO_POOL = 82_783  # COCO train2014 images

ZH_SUBJECTS = ["一个穿着红色上衣的男人", "两个戴着帽子的人", "一个短发女人", "三个衣着各异的人", "一个小孩", "一位老人"]
ZH_PLACES = ["在平整的道路上", "在室外的公园里", "在房间里", "在宽敞的球场上", "在热闹的街道上", "在桌子旁"]
ZH_ACTIONS = ["交谈", "吃饭", "打篮球", "散步", "看书", "拍照", "骑自行车"]
EN_SENTENCES = [
    "The image shows a busy street with several people walking along the sidewalk.",
    "A man is holding a frisbee while standing on a grassy field near some trees.",
    "There are multiple cars parked along the side of the road next to a parking meter.",
    "The kitchen counter is cluttered with bowls, cups and a few cooking utensils.",
    "In the background, a large building with many windows can be seen under a clear sky.",
    "The presence of umbrellas suggests that it might be raining or about to rain.",
    "A dog is lying on the couch, looking relaxed and comfortable in the living room.",
    "The scene conveys a casual, social atmosphere on what appears to be a pleasant day.",
]
QUESTIONS = [
    "What skill set might someone need to perform such a trick?",
    "What precautions is the woman taking while walking in this weather?",
    "What do you see happening in this image?",
    "Can you describe the main features of this image for me?",
]


def zh_caption(rng: random.Random) -> str:
    return rng.choice(ZH_PLACES) + "有" + rng.choice(ZH_SUBJECTS) + "在" + rng.choice(ZH_ACTIONS)


def en_answer(rng: random.Random) -> str:
    return " ".join(rng.choices(EN_SENTENCES, k=11))


def touch_all(directory: Path, names: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.close(os.open(directory / name, os.O_CREAT | os.O_WRONLY, 0o644))


def generate(root: Path) -> Path:
    """Write the raw files, the image files and a config; returns the config path."""
    rng = random.Random(0)
    ai_names = [f"{rng.getrandbits(160):040x}.jpg" for _ in range(AI_CHALLENGER_IMAGES)]
    ai = [
        {
            "url": f"http://m4.biz.itc.cn/pic/new/n/{i}.jpg",
            "image_id": name,
            "caption": [zh_caption(rng) for _ in range(5)],
        }
        for i, name in enumerate(ai_names)
    ]
    (root / "caption_train_annotations.json").write_text(json.dumps(ai), encoding="utf-8")  # \u-escaped
    del ai
    coco = [f"{n:012d}.jpg" for n in rng.sample(range(1, 600_000), COCO_POOL)]
    complex_images = coco[:COMPLEX_RECORDS]
    detail_images = rng.sample(coco, DETAIL_RECORDS)
    for filename, images, tag_first in (
        ("complex_reasoning_77k.json", complex_images, True),
        ("detail_23k.json", detail_images, False),
    ):
        records = []
        for image in images:
            question = rng.choice(QUESTIONS)
            value = f"<image>\n{question}" if tag_first else f"{question}\n<image>"
            records.append(
                {
                    "id": image[:-4],
                    "image": image,
                    "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": en_answer(rng)}],
                }
            )
        (root / filename).write_text(json.dumps(records, indent=1), encoding="utf-8")
    touch_all(root / "ai_challenger_images", ai_names)
    touch_all(root / "coco", coco)
    config = {
        "data": {
            "output_dir": str(root / "merged"),
            "sources": [
                {
                    "type": "ai_challenger",
                    "annotations": str(root / "caption_train_annotations.json"),
                    "image_dir": str(root / "ai_challenger_images"),
                },
                {
                    "type": "llava",
                    "name": "complex_reasoning_77k",
                    "annotations": str(root / "complex_reasoning_77k.json"),
                    "image_dir": str(root / "coco"),
                },
                {
                    "type": "llava",
                    "name": "detail_23k",
                    "annotations": str(root / "detail_23k.json"),
                    "image_dir": str(root / "coco"),
                },
            ],
        }
    }
    path = root / "bench_config.yaml"
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")  # JSON is valid YAML
    return path


def run_once(config: Path) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MiB, stdout) of one CLI run in a fresh process; the child is
    reaped with os.wait4 so its rusage is its own, not the maximum over all children."""
    out_path = config.parent / "stdout.txt"
    with open(out_path, "w") as out, open(config.parent / "stderr.txt", "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "process_image.py"), "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"merge failed ({proc.returncode}):\n{(config.parent / 'stderr.txt').read_text()}")
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, out_path.read_text()  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", help="generate into this directory instead of a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--reuse", action="store_true", help="reuse files a previous --dir DIR --keep run generated")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_process_image_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        config = root / "bench_config.yaml"
        if not (args.reuse and config.exists()):
            config = generate(root)
            os.sync()  # flush the generated files now, so their write-back is not timed as merge I/O
        sizes = {p.name: p.stat().st_size / 2**20 for p in root.glob("*.json")}
        print(
            f"generated in {time.perf_counter() - t0:.1f} s under {root}: "
            + ", ".join(f"{k} {v:.0f} MiB" for k, v in sizes.items())
        )
        results = [run_once(config) for _ in range(args.runs)]
        walls, cpus, rss = ([r[k] for r in results] for k in range(3))
        print(results[-1][3])
        print(
            f"runs: wall {', '.join(f'{w:.2f}' for w in walls)} s; "
            f"CPU (user+sys) {', '.join(f'{c:.2f}' for c in cpus)} s"
        )
        print(
            f"median wall time: {statistics.median(walls):.2f} s; median CPU time: {statistics.median(cpus):.2f} s; "
            f"peak RSS: {max(rss):.0f} MiB; "
            f"cpus: {os.cpu_count()}; load average after the runs: {os.getloadavg()[0]:.2f}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

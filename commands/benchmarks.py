"""evaluate.py's benchmark runs: one benchmark from the files named on the command line
(``--benchmark``), or a whole results table from a folder of released files (``--suite``).

Both go through :func:`run_benchmark`; a suite loads the model once (:class:`ModelAsker`) and gives
every benchmark its own output folder, so a re-run resumes each where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import cli
from dataset.produced_by import shard_label
from errors import UserError, one_line
from evaluation.benchmarks import BENCHMARKS
from evaluation.benchmarks.base import Benchmark, Files, JudgeServer, Loaded
from evaluation.shards import select


class ModelAsker:
    """The model the arguments name, with its generation settings; loaded when the first question
    is asked, once for all the benchmarks of a suite."""

    def __init__(self, args: argparse.Namespace) -> None:
        cli.check_model_arguments(args)
        self.args = args
        self.config = cli.generation_config(args)
        self.identity = cli.model_identity(args)
        self._predictor = None

    def settings(self, bench: Benchmark):
        """The generation settings for ``bench``: the config's and the flags, with the benchmark's
        own answer length where ``--max-new-tokens`` does not say (long answers for captions and
        judged benchmarks)."""
        settings = cli.sampling_settings(self.config, self.args)
        if self.args.max_new_tokens is None and bench.max_new_tokens is not None:
            settings = replace(settings, max_new_tokens=bench.max_new_tokens)
        return settings

    def predictor(self):
        if self._predictor is None:
            self._predictor = cli.load_predictor(self.args, concurrency=self.args.concurrency
                                                 or self.config.generation.batch_size)
        return self._predictor


def read_files(bench: Benchmark, files: Files, asking: bool) -> Loaded:
    """The benchmark's questions from ``files``; ``asking``: a model will answer (its images are needed)."""
    if not files.questions:
        raise UserError(f"--benchmark {bench.name} needs --questions (see --help)")
    if "images" in bench.needs and files.images is None and asking:
        raise UserError(f"--benchmark {bench.name} needs --images DIR (the folder of its images) to ask a model; "
                        "scoring a results file (--predictions) or merging shards needs none")
    for path in [*files.questions, files.annotations, files.images]:
        if path is not None and not path.exists():
            raise UserError(f"{path}: no such file or folder")
    loaded = bench.read(files.questions, files.annotations, files.images)
    if not loaded.questions:
        raise UserError(f"{files.questions[0]}: no usable question (skipped: {loaded.skipped})")
    return loaded


def set_judge(bench: Benchmark, args: argparse.Namespace, output: Path) -> None:
    """A judged benchmark's judge (``--judge-server``/``--judge-model``) and where its replies are kept."""
    bench.workdir = output
    if "judge" in bench.needs:
        if not args.judge_server:
            raise UserError(f"{bench.name} is scored by a judge model: give --judge-server URL (an OpenAI-compatible "
                            "server) and --judge-model NAME")
        bench.judge = JudgeServer(args.judge_server, args.judge_model)


def run_benchmark(args: argparse.Namespace, output: Path, bench: Benchmark, files: Files,
                  asker: ModelAsker | None, progress=None, loaded: Loaded | None = None) -> dict:
    """Answer (or read the results file, or merge the shards), score and write one benchmark's
    outputs into ``output``; prints its line and returns its metrics. ``progress``: a suite's bar;
    ``loaded``: the questions, when the suite has read them already."""
    from dataset.produced_by import start_or_resume
    from evaluation.benchmarks.runner import PREDICTIONS, answer_all, coverage, finish

    scoring_a_file = args.predictions is not None
    asking = not scoring_a_file and not args.merge_shards
    # Scoring a results file reads no image; merging shards: optional, for the images in scores.jsonl.
    if loaded is None:
        loaded = read_files(bench, replace(files, images=None) if scoring_a_file else files, asking)
    if scoring_a_file and not args.predictions.exists():
        raise UserError(f"{args.predictions}: no such file or folder")
    set_judge(bench, args, output)
    questions = loaded.questions[: args.limit] if args.limit is not None else loaded.questions
    suffix = bench.prompt_suffix if args.prompt_suffix is None else args.prompt_suffix
    if args.shard:
        if scoring_a_file:
            raise UserError("--shard splits the questions a model answers; a results file (--predictions) is scored whole")
        questions = select(questions, args.shard)
    if args.merge_shards:
        from evaluation.shards import merge_benchmark

        answers, errors, cover, extra, source = merge_benchmark(args.merge_shards, bench, loaded, questions, output,
                                                                args.limit, args.overwrite)
    elif scoring_a_file:
        answers = bench.read_predictions(args.predictions, loaded.questions)
        errors = []
        cover = coverage(loaded, questions, answers, args.limit)
        extra = {"predictions": str(args.predictions)}
        source = str(args.predictions)
    else:
        settings = asker.settings(bench)
        produced_by = {"benchmark": bench.name, "model": asker.identity,
                       "prompt_suffix": suffix, "generation": asdict(settings), **shard_label(args.shard)}
        # Refuse to mix answers of another run before the model loads; --overwrite starts again.
        start_or_resume(output / PREDICTIONS, produced_by, overwrite=args.overwrite)
        with cli.on_interrupt(f"what was answered is in {output / PREDICTIONS}; run the same command to resume"):
            replies, errors = answer_all(asker.predictor(), questions, output, settings,
                                         asker.config.generation.batch_size, suffix, produced_by, progress=progress)
        answers = {qid: bench.results_answer(reply) for qid, reply in replies.items()}
        cover = coverage(loaded, questions, answers, args.limit, not_asked=len(errors))
        extra = {"produced_by": produced_by}
        source = str(output / PREDICTIONS)
    metrics = finish(bench, loaded, questions, answers, errors, output, extra, cover,
                     allow_partial=args.allow_partial, source=source)
    partial = "" if cover.complete else f" -- PARTIAL: {cover.describe()}"
    if args.shard:
        partial += f" (shard {args.shard[0]}/{args.shard[1]}: combine all shards with --merge-shards)"
    print(f"{bench.name}: {bench.headline(metrics)} on {metrics['count']} questions "
          f"({metrics['errors']} not asked, {sum(loaded.skipped.values())} skipped while reading){partial} -> {output}")
    if "submission" in metrics:
        print(f"wrote {output / metrics['submission']['file']} with {metrics['submission']['answers']} answers; "
              f"upload it to {metrics['submission']['upload']}")
    return metrics


def run_one(args: argparse.Namespace, output: Path) -> int:
    """``--benchmark NAME`` with the files given on the command line."""
    bench = BENCHMARKS[args.benchmark]()
    files = Files(args.questions, args.annotations, args.images)
    asker = None if args.predictions is not None or args.merge_shards else ModelAsker(args)
    run_benchmark(args, output, bench, files, asker)
    return 0


def run_suite(args: argparse.Namespace, output: Path) -> int:
    """``--suite NAME --data-root DIR``: every benchmark of the suite whose released files are in
    ``DIR/<benchmark>/``, each into ``output/<benchmark>/`` (resumable), then the table beside the
    published numbers. A benchmark whose files are missing, or that cannot be scored, is a row that
    says why; the others go on."""
    from tqdm import tqdm

    from evaluation.suite import SUITES, Row, write_table

    given = [flag for flag, value in (("--benchmark", args.benchmark), ("--questions", args.questions),
                                      ("--annotations", args.annotations), ("--images", args.images),
                                      ("--predictions", args.predictions), ("--merge-shards", args.merge_shards),
                                      ("--shard", args.shard), ("--data", args.data)) if value]
    if given:
        raise UserError(f"--suite finds every benchmark's files under --data-root; drop {', '.join(given)}")
    if args.data_root is None or not args.data_root.is_dir():
        raise UserError(f"--suite {args.suite} needs --data-root DIR: a folder with one subfolder of released files "
                        "per benchmark (docs/benchmarks.md)")
    suite = SUITES[args.suite]
    found: dict[str, tuple[Benchmark, Files, Loaded]] = {}
    rows: dict[str, Row] = {}
    for column in suite.columns:
        bench = BENCHMARKS[column.benchmark]()
        files = bench.locate(args.data_root / column.benchmark)
        reason = files if isinstance(files, str) else None
        if reason is None and "judge" in bench.needs and not args.judge_server:
            reason = "scored by a judge model: give --judge-server URL --judge-model NAME"
        if reason is None:
            try:
                loaded = read_files(bench, files, asking=True)
                found[column.benchmark] = (bench, files, loaded)
                continue
            except UserError as exc:
                reason = str(exc)
        print(f"{column.benchmark}: skipped -- {one_line(reason)}", file=sys.stderr)
        # In the table, paths are relative to the data root (the folder it names is in the table's header).
        rows[column.benchmark] = Row.missing(column, one_line(reason).replace(f"{args.data_root}/", ""))
    if not found:
        raise UserError(f"{args.data_root}: no benchmark of --suite {args.suite} has its files there (see stderr)")
    asker = ModelAsker(args)
    total = sum(min(len(loaded.questions), args.limit or len(loaded.questions)) for _, _, loaded in found.values())
    with tqdm(total=total, unit="q", desc=f"{args.suite} ({len(found)} benchmarks)", dynamic_ncols=True,
              file=sys.stderr, position=1) as bar:
        for column in suite.columns:
            if column.benchmark not in found:
                continue
            bench, files, loaded = found[column.benchmark]
            target = output / column.benchmark
            try:
                metrics = run_benchmark(args, target, bench, files, asker, progress=bar, loaded=loaded)
                rows[column.benchmark] = Row.scored(column, files.split, bench, metrics, target)
            except UserError as exc:
                rows[column.benchmark] = Row.missing(column, one_line(str(exc)), files.split)
                print(f"{column.benchmark}: not scored -- {one_line(str(exc))}", file=sys.stderr)
    table = write_table(output, suite, [rows[c.benchmark] for c in suite.columns], {"model": asker.identity},
                        args.data_root.resolve())
    print(f"{args.suite}: {sum(r.value is not None for r in rows.values())} of {len(suite.columns)} columns scored "
          f"-> {table}")
    return 0

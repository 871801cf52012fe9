"""Benchmarks in their official formats: one module each, found by name (``evaluate.py --benchmark``).

Each module defines a :class:`evaluation.benchmarks.base.Benchmark`: reading the official files,
the prompt suffix LLaVA-1.5 uses, the official metric, the results file its server accepts.
``evaluation.benchmarks.runner`` asks the model and writes the outputs. A new benchmark is one
module plus one line below.
"""

from evaluation.benchmarks.gqa import GQA
from evaluation.benchmarks.mme import MME
from evaluation.benchmarks.pope import POPE
from evaluation.benchmarks.textvqa import TextVQA
from evaluation.benchmarks.vizwiz import VizWiz
from evaluation.benchmarks.vqa import OKVQA, VQAv2

BENCHMARKS = {b.name: b for b in (VQAv2, OKVQA, VizWiz, TextVQA, GQA, POPE, MME)}

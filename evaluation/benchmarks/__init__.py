"""Benchmarks in their official formats: one module each, found by name (``evaluate.py --benchmark``).

Each module defines a :class:`evaluation.benchmarks.base.Benchmark`: reading the official files,
the prompt suffix LLaVA-1.5 uses, the official metric, the results file its server accepts.
``evaluation.benchmarks.runner`` asks the model and writes the outputs. A new benchmark is one
module plus one line below.
"""

from evaluation.benchmarks.aic_caption import AICaption
from evaluation.benchmarks.coco_caption import COCOCaption
from evaluation.benchmarks.gqa import GQA
from evaluation.benchmarks.llava_bench import LLaVABench
from evaluation.benchmarks.mme import MME
from evaluation.benchmarks.mmbench import MMBench, MMBenchCN
from evaluation.benchmarks.mmvet import MMVet
from evaluation.benchmarks.pope import POPE
from evaluation.benchmarks.scienceqa import ScienceQA
from evaluation.benchmarks.seedbench import SEEDBench
from evaluation.benchmarks.textvqa import TextVQA
from evaluation.benchmarks.vizwiz import VizWiz
from evaluation.benchmarks.vqa import OKVQA, VQAv2

BENCHMARKS = {b.name: b for b in (VQAv2, OKVQA, VizWiz, TextVQA, GQA, POPE, MME, ScienceQA, SEEDBench, MMBench, MMBenchCN, COCOCaption, AICaption,
                                  LLaVABench, MMVet)}

"""Caption metrics computed the way the COCO caption evaluation computes them, with its own scorers.

Reproduces ``COCOEvalCap.evaluate()`` of ``pycocoevalcap`` 1.2 (the PyPI package everyone reports:
https://github.com/salaniz/pycocoevalcap, ``pycocoevalcap/eval.py`` at
``ad63453cfab57a81a02b2949b17a91fab1c3df77``, tag v1.2), calling the package's own tokenizer and
scorers -- the numbers are theirs, not a re-implementation:

1. references and candidates are tokenized separately (two runs of Stanford CoreNLP 3.4.1's
   ``PTBTokenizer -preserveLines -lowerCase``, Java), in image order and, per image, in reference
   order; tokens in its punctuation list (``. , ? ! : ; - -- ... ' '' ` ``` and ``-LRB-``-style
   brackets written in upper case) are then dropped. Quirks: lower-casing happens first, so the
   bracket tokens come out as ``-lrb-``/``-rrb-`` and are *kept*; a full-width ``，`` is kept too.
2. BLEU-1..4 (``option='closest'``: per image the reference length closest to the candidate's, the
   shorter one on a tie) is **corpus-level**: clipped n-gram counts and lengths are summed over all
   images before dividing, and the brevity penalty is applied to the totals (``(correct + 1e-15) /
   (guess + 1e-9)``). METEOR 1.5 (``-l en -norm``, Java) is aggregated over the corpus by the jar.
   ROUGE-L (beta 1.2) is the mean of per-image scores. CIDEr (CIDEr-D: n = 1..4, sigma 6, clipped,
   x10) takes its document frequencies from the references of the images scored, so it depends on
   the whole set -- a one-image set always scores 0 (log(1) idf) -- and is the mean of per-image
   scores, which are what ``--compare`` pairs. SPICE needs Stanford CoreNLP 3.6.0, which
   pycocoevalcap downloads on first use; without it (no internet here) it is reported as not
   computed, never a failure.

The scores are unrounded; ``COCOEvalCap`` prints each as ``"%s: %0.3f"``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from errors import UserError

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
PIN = "pip install pycocoevalcap==1.2"


@dataclass
class CaptionScores:
    """``COCOEvalCap.eval`` (metric -> corpus score) and ``imgToEval`` (image -> metric -> score)."""

    corpus: dict[str, float]
    per_image: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)


def spice_unavailable() -> str | None:
    """Why SPICE cannot run here, in one line (None: it can). pycocoevalcap's ``Spice()`` downloads
    Stanford CoreNLP 3.6.0 into its ``spice/lib`` when the jars are missing; that needs internet."""
    if shutil.which("java") is None:
        return "SPICE not computed: no Java runtime"
    try:
        import pycocoevalcap.spice as spice
    except ImportError:
        return f"SPICE not computed: pycocoevalcap is not installed ({PIN})"
    lib = Path(spice.__file__).parent / "lib"
    missing = [name for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
               if not (lib / name).is_file()]
    if missing:
        return (f"SPICE not computed: {' and '.join(missing)} not in {lib} (pycocoevalcap downloads them from "
                "nlp.stanford.edu on first use; put them there to get SPICE)")
    return None


def _scorers(spice: bool) -> list:
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise UserError(f"caption metrics need pycocoevalcap ({PIN})") from None
    scorers = [(Bleu(4), list(METRICS[:4])), (Meteor(), "METEOR"), (Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]
    if spice:
        from pycocoevalcap.spice.spice import Spice

        scorers.append((Spice(), "SPICE"))
    return scorers


def score_captions(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str],
                   spice: bool = False) -> CaptionScores:
    """The COCO caption metrics of one candidate per image against its references. Images are
    scored in the order of ``references`` (the ground-truth file's), which must have a candidate
    each; ``spice``: also SPICE, when it can run here (else a note says why not)."""
    if shutil.which("java") is None:
        raise UserError("caption metrics need a Java runtime (the PTB tokenizer and METEOR are Java): install one, "
                        "e.g. apt-get install default-jre-headless")
    keys = list(references)
    if set(keys) != set(candidates) or not keys:
        raise UserError("caption scoring needs exactly one candidate per image")
    notes = []
    if spice and (reason := spice_unavailable()):
        notes.append(reason)
        spice = False
    # pycocoevalcap prints as it goes (BLEU's counts): stdout is for our summary, stderr for errors.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        except ImportError:
            raise UserError(f"caption metrics need pycocoevalcap ({PIN})") from None
        try:
            gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in references[k]] for k in keys})
            res = PTBTokenizer().tokenize({k: [{"caption": candidates[k]}] for k in keys})
        except OSError as exc:  # it writes its input next to its jar, inside the installed package
            raise UserError(f"the PTB tokenizer (pycocoevalcap) could not run: {exc}") from None
        if list(gts) != keys or list(res) != keys or any(len(res[k]) != 1 for k in keys):
            raise UserError("the PTB tokenizer returned fewer lines than captions (a caption holding a line break "
                            "it reads as two lines?)")
        corpus: dict[str, float] = {}
        per_image: dict[str, dict[str, float]] = {k: {} for k in keys}
        for scorer, method in _scorers(spice):
            score, scores = scorer.compute_score(gts, res)
            pairs = zip(score, scores, method) if isinstance(method, list) else [(score, scores, method)]
            for total, each, name in pairs:
                corpus[name] = float(total)
                if name != "SPICE":  # COCOEvalCap pairs SPICE's sorted-id scores with gts order; not kept
                    for k, value in zip(keys, each):
                        per_image[k][name] = float(value)
    return CaptionScores(corpus, per_image, notes)


def caption_headline(metrics: Mapping, names: Sequence[str]) -> str:
    """The scores as ``COCOEvalCap`` prints them, ``"%s: %0.3f"`` each."""
    parts = [f"{name}: {metrics[name]:0.3f}" for name in names if isinstance(metrics.get(name), float)]
    return ", ".join(parts + ([metrics["SPICE_not_computed"]] if metrics.get("SPICE_not_computed") else [])) \
        or "no public answers"


@dataclass
class ScoreCache:
    """The last scoring of a benchmark run, so that ``score`` and ``question_scores`` (called one
    after the other on the same answers) run the Java scorers once."""

    key: tuple = ()
    scores: CaptionScores | None = None

    def get(self, key: tuple, compute) -> CaptionScores:
        if self.scores is None or key != self.key:
            self.key, self.scores = key, compute()
        return self.scores

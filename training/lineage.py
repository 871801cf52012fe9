"""A training run's record, ``run.json`` (see ``model.lineage`` for what it holds and how it is read).

Written by rank 0 only: when the run starts (status ``running``), after every checkpoint (with that
checkpoint's fingerprint; a copy goes into the checkpoint, so a checkpoint copied elsewhere still
says where it came from), and when the run ends (``finished``, ``interrupted`` or ``failed: ...``,
the final metrics and the saved model's fingerprint). A resumed run appends its own session: the
earlier sessions are kept as they were. Every write replaces the file atomically.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import TrainerCallback

from atomic import write_text
from config import Config, config_to_dict
from dataset.records import IMAGES_FILE
from model import lineage
from model.checkpoints import files_fingerprint, model_files


def data_record(cfg: Config) -> dict:
    """The data files of a run by content: the training and held-out files and their image tables."""
    out = {}
    for label, path in (("train", cfg.data.train_file), ("eval", cfg.data.eval_file)):
        if path:
            out[label] = lineage.file_record(path)
            images = Path(path).parent / IMAGES_FILE
            if images.is_file():
                out[f"{label} images"] = lineage.file_record(images)
    return out


def final_metrics(log_history: list[dict]) -> dict:
    """The last held-out numbers and the run's training summary from the Trainer's log history."""
    metrics: dict = {}
    for entry in log_history:
        if any(k.startswith("eval_") for k in entry):
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_") and not k.endswith(("_runtime",
                            "_per_second"))})
        if "train_loss" in entry:
            metrics["train_loss"] = entry["train_loss"]
    return metrics


class RunRecord:
    """``output_dir/run.json``: the earlier sessions as they were, and this one."""

    def __init__(self, cfg: Config, resumed_from: Path | None, start_step: int = 0):
        self.path = Path(cfg.train.output_dir) / lineage.RUN_RECORD
        self.earlier = self._earlier_sessions()
        if not self.earlier and resumed_from is not None and (Path(resumed_from) / lineage.RUN_RECORD).is_file():
            # resumed from a checkpoint of another run directory: its history (as saved with it) comes along
            try:
                self.earlier = json.loads((Path(resumed_from) / lineage.RUN_RECORD).read_text(encoding="utf-8"))["sessions"]
            except (OSError, ValueError, KeyError, TypeError):
                self.earlier = []
        self.session = {
            "started": lineage.now(), "ended": None, "status": "running",
            "resumed_from": str(resumed_from) if resumed_from else None,
            "steps": {"start": start_step, "end": None},
            "code": lineage.code_version(), "config": config_to_dict(cfg), "data": data_record(cfg),
            "bases": {key: lineage.base_record(getattr(cfg.model, key))
                      for key in ("vision_model", "language_model", "tokenizer") if getattr(cfg.model, key)},
            "parent": lineage.checkpoint_record(cfg.train.init_from) if cfg.train.init_from else None,
            "checkpoints": {}, "metrics": {}, "model_fingerprint": None,
        }

    def _earlier_sessions(self) -> list:
        """The sessions already recorded; an unreadable record is kept aside (never overwritten) and said."""
        if not self.path.is_file():
            return []
        try:
            sessions = json.loads(self.path.read_text(encoding="utf-8"))["sessions"]
            if isinstance(sessions, list):
                return sessions
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            pass
        aside = self.path.with_name(f"{self.path.name}.unreadable-{lineage.now().replace(':', '')}")
        self.path.rename(aside)
        print(f"note: {self.path} could not be read; kept as {aside.name}, a new record starts", file=sys.stderr)
        return []

    def document(self) -> str:
        return json.dumps({"sessions": [*self.earlier, self.session]}, indent=1, ensure_ascii=False, default=str) + "\n"

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, self.document())

    def saved(self, checkpoint: Path, step: int) -> None:
        """After the Trainer wrote ``checkpoint``: its fingerprint into the record, the record into it."""
        self.session["checkpoints"][checkpoint.name] = files_fingerprint(model_files(checkpoint))
        self.session["steps"]["end"] = step
        self.write()
        write_text(checkpoint / lineage.RUN_RECORD, self.document())

    def finish(self, status: str, step: int | None, log_history: list[dict], model_dir: Path | None = None) -> None:
        self.session.update(ended=lineage.now(), status=status, metrics=final_metrics(log_history))
        if step is not None:
            self.session["steps"]["end"] = step
        if model_dir is not None:
            self.session["model_fingerprint"] = files_fingerprint(model_files(model_dir))
        self.write()


class RecordCheckpoints(TrainerCallback):
    """Keeps ``run.json`` current at every save (rank 0)."""

    def __init__(self, record: RunRecord):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                self.record.saved(checkpoint, state.global_step)


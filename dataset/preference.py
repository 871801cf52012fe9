"""The DPO dataset: each merged preference record as a pair of rendered conversations.

A preference record (``dataset/sources/preference.py``) is a merged record whose last assistant
turn is the chosen answer and whose ``rejected`` field holds the rejected one. Both conversations
are rendered like SFT samples (``VQADataset``: same prompt, same truncation, labels on the answer
tokens only); a pair is kept when both sides fit. ``reference`` holds the reference model's
sequence log-probabilities when they are computed before training (``[pairs, 2]``).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import Dataset

from config import DEFAULT_IMAGE_TOKEN
from dataset.records import load_merged
from dataset.vqa_dataset import RecordView, VQADataset

logger = logging.getLogger(__name__)


def rejected_record(record: dict) -> dict:
    """The record with its last assistant turn replaced by the rejected answer."""
    messages = list(record["messages"])
    messages[-1] = {"role": "assistant", "content": record["rejected"]}
    return {**record, "messages": messages}


def preference_pairs(records: list) -> list:
    """The merged records that are preference pairs (a last assistant turn and a ``rejected`` answer)."""
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("rejected"), str)
            and isinstance(r.get("messages"), list) and r["messages"]
            and isinstance(r["messages"][-1], dict) and r["messages"][-1].get("role") == "assistant"]


NO_PAIRS = ("no preference records (merged records with a 'rejected' answer: process_image.py with a source of "
            "type preference)")
CHOSEN = RecordView("preference chosen", preference_pairs, "not_a_preference_record", NO_PAIRS)
REJECTED = RecordView("preference rejected", lambda records: [rejected_record(r) for r in preference_pairs(records)],
                      "not_a_preference_record", NO_PAIRS)


class PreferenceDataset(Dataset):
    def __init__(self, qa_file: str | Path, renderer, preprocess, max_length: int,
                 image_token: str = DEFAULT_IMAGE_TOKEN, system_prompt: str | None = None,
                 show_progress: bool = True, limit: int | None = None, cache: bool = False,
                 cache_dir: str | None = None) -> None:
        """Both sides rendered like ``VQADataset`` samples; ``cache``: each side kept on disk and
        memory-mapped (``dataset.token_cache``), so a later run neither parses nor tokenizes."""
        merged = None if cache else load_merged(Path(qa_file).resolve())  # read once for both sides
        args = (renderer, preprocess, max_length, image_token, system_prompt, show_progress, limit, merged, cache, cache_dir)
        self.chosen = VQADataset(qa_file, *args, view=CHOSEN)
        self.rejected = VQADataset(qa_file, *args, view=REJECTED)
        self.skipped: Counter[str] = Counter(self.chosen.skipped)
        self.skipped.update({k: v for k, v in self.rejected.skipped.items() if k != REJECTED.dropped})
        self.preprocess = preprocess
        rejected_at = {int(index): k for k, index in enumerate(self.rejected.record_index)}
        self.pairs = [(k, rejected_at[int(index)]) for k, index in enumerate(self.chosen.record_index)
                      if int(index) in rejected_at]
        if not self.pairs:
            raise ValueError(f"{qa_file}: no usable preference pairs (skipped: {dict(self.skipped)})")
        # For length-grouped batches: both rows of a pair are padded to the longer one.
        self.lengths = [int(max(self.chosen.lengths[a], self.rejected.lengths[b])) for a, b in self.pairs]
        self.reference: torch.Tensor | None = None
        self.bad_images: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """An unreadable image is logged, counted and replaced by the next pair (as in SFT)."""
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            a, b = self.pairs[i]
            try:
                pixels = self.preprocess.resized(self.chosen.image_path(a))
            except ValueError as exc:
                self.bad_images[str(self.chosen.image_path(a))] += 1
                logger.warning("skipping unreadable image: %s", exc)
                continue
            chosen_ids, chosen_labels = self.chosen._expand(a)
            rejected_ids, rejected_labels = self.rejected._expand(b)
            item = {"chosen_input_ids": chosen_ids, "chosen_labels": chosen_labels,
                    "rejected_input_ids": rejected_ids, "rejected_labels": rejected_labels, "pixel_values": pixels}
            if self.reference is not None:
                item["reference_logps"] = self.reference[i]
            return item
        raise RuntimeError("no readable image in the whole data set")

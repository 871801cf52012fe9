"""Batching: right-pad token ids and labels, stack pixels."""

from __future__ import annotations

import torch

from qwen.prompt import IGNORE_INDEX


class Collator:
    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def pad(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``(input_ids, labels)`` rows -> right-padded ``input_ids``, ``labels``, ``attention_mask``."""
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (ids, row_labels) in enumerate(rows):
            n = len(ids)
            input_ids[row, :n] = ids
            labels[row, :n] = row_labels
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = self.pad([(item["input_ids"], item["labels"]) for item in items])
        batch["pixel_values"] = torch.stack([item["pixel_values"] for item in items])
        return batch


class PreferenceCollator(Collator):
    """A batch of B pairs as 2B rows (the B chosen, then the B rejected) and B images: both
    answers of a pair share its image, so the tower and projector run once per pair."""

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        rows = [(item["chosen_input_ids"], item["chosen_labels"]) for item in items]
        rows += [(item["rejected_input_ids"], item["rejected_labels"]) for item in items]
        batch = self.pad(rows)
        batch["pixel_values"] = torch.stack([item["pixel_values"] for item in items])
        if "reference_logps" in items[0]:
            batch["reference_logps"] = torch.stack([item["reference_logps"] for item in items])
        return batch

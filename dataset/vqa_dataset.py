"""The training dataset: one merged record -> input_ids, labels and uint8 pixels (the tower normalises).

All conversations are rendered once up front (with one placeholder id per image; the expansion
to ``num_image_tokens`` happens per item), which gives exact lengths for length-grouped
batching and exact skip counts before training starts. Images are loaded per item.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from config import DEFAULT_IMAGE_TOKEN
from dataset.records import image_path as record_image, load_merged
from qwen.prompt import IGNORE_INDEX, PromptRenderer, record_messages

logger = logging.getLogger(__name__)

# Records rendered per batched tokenizer call (bounded memory, a progress bar that moves).
RENDER_CHUNK = 2048


class VQADataset(Dataset):
    def __init__(
        self,
        qa_file: str | Path,
        renderer: PromptRenderer,
        preprocess,
        max_length: int,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        system_prompt: str | None = None,
        show_progress: bool = True,
        limit: int | None = None,
        merged: tuple[list, dict] | None = None,
    ) -> None:
        """``merged``: the records and image table already in memory (``load_merged``'s result;
        ``qa_file`` then only names them in messages)."""
        self.preprocess = preprocess
        self.num_image_tokens = renderer.num_image_tokens
        self.image_token_id = renderer.image_token_id
        self.skipped: Counter[str] = Counter()
        self.bad_images: Counter[str] = Counter()
        records, images = merged or load_merged(Path(qa_file).resolve())  # absolute image paths: cwd-independent
        records = records[:limit] if limit is not None else records
        compact = PromptRenderer(renderer.tokenizer, 1, image_token)
        self.input_ids: list[np.ndarray] = []
        self.supervised: list[np.ndarray] = []
        self.image_paths: list[Path] = []
        self.lengths: list[int] = []
        self.record_index: list[int] = []  # position in ``records`` of each kept item
        with tqdm(total=len(records), desc=f"tokenizing {Path(qa_file).name}", disable=not show_progress, leave=False) as bar:
            for start in range(0, len(records), RENDER_CHUNK):
                chunk = records[start : start + RENDER_CHUNK]
                for index, ids, sup, path in self._render_chunk(chunk, compact, images, max_length, image_token,
                                                                system_prompt):
                    self.record_index.append(start + index)
                    self.input_ids.append(ids)
                    self.supervised.append(sup)
                    self.image_paths.append(path)
                    self.lengths.append(len(ids) + self.num_image_tokens - 1)
                bar.update(len(chunk))
        if self.skipped:
            logger.warning("%s: skipped %s", qa_file, dict(self.skipped))
        if not self.input_ids:
            raise ValueError(f"{qa_file}: no usable training records (skipped: {dict(self.skipped)})")

    def _render_chunk(self, records, compact, images, max_length, image_token, system_prompt):
        parsed = []
        for index, record in enumerate(records):
            try:
                path = record_image(record, images)
                if path is None:
                    raise KeyError(record.get("image_id"))
                parsed.append((index, path, record_messages(record["messages"], image_token, system_prompt)))
            except (AttributeError, KeyError, TypeError, ValueError):
                self.skipped["malformed_record"] += 1
        rendered = compact.render_many([messages for _, _, messages in parsed])
        for (index, image_path, _), prompt in zip(parsed, rendered):
            item = self._fit(prompt, max_length)
            if item is not None:
                yield (index, *item, image_path)

    def _fit(self, rendered, max_length):
        """Token ids and the supervised mask, truncated to fit; None (counted) when it cannot."""
        if rendered.num_images != 1:
            self.skipped["not_one_image"] += 1
            return None
        ids = np.asarray(rendered.input_ids, dtype=np.int32)
        sup = np.asarray(rendered.labels, dtype=np.int64) != IGNORE_INDEX
        extra = self.num_image_tokens - 1
        if len(ids) + extra > max_length:
            # Cut the tail, never inside the image tokens, and keep it only if an answer remains.
            image_at = int(np.flatnonzero(ids == self.image_token_id)[0])
            keep = max_length - extra
            if image_at >= keep or not sup[:keep].any():
                self.skipped["too_long"] += 1
                return None
            ids, sup = ids[:keep], sup[:keep]
        if not sup.any():
            self.skipped["no_answer_tokens"] += 1
            return None
        return ids, sup

    def __len__(self) -> int:
        return len(self.input_ids)

    def _expand(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.from_numpy(self.input_ids[index].astype(np.int64))
        sup = torch.from_numpy(self.supervised[index])
        at = int((ids == self.image_token_id).nonzero()[0])
        n = self.num_image_tokens
        ids = torch.cat([ids[:at], ids.new_full((n,), self.image_token_id), ids[at + 1:]])
        sup = torch.cat([sup[:at], sup.new_zeros(n), sup[at + 1:]])
        labels = torch.where(sup, ids, torch.full_like(ids, IGNORE_INDEX))
        return ids, labels

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """A corrupt or unreadable image is logged, counted and replaced by the next sample."""
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                pixels = self.preprocess.resized(self.image_paths[i])  # uint8: the tower normalises
            except ValueError as exc:
                self.bad_images[str(self.image_paths[i])] += 1
                logger.warning("skipping unreadable image (%d so far in this worker): %s", sum(self.bad_images.values()), exc)
                continue
            ids, labels = self._expand(i)
            return {"input_ids": ids, "labels": labels, "pixel_values": pixels}
        raise RuntimeError("no readable image in the whole data set")

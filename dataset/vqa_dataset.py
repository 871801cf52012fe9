"""The training dataset: one merged record -> input_ids, labels and uint8 pixels (the tower normalises).

All conversations are rendered once up front (with one placeholder id per image; the expansion
to ``num_image_tokens`` happens per item), which gives exact lengths for length-grouped
batching and exact skip counts before training starts. The rendered samples are one columnar
table (``dataset.token_cache``), kept on disk and memory-mapped when training asks for it, so
that ranks and workers share one copy and a later run does not tokenize again. Images are loaded
per item.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from config import DEFAULT_IMAGE_TOKEN
from dataset import token_cache
from dataset.records import IMAGES_FILE, image_path as record_image, load_merged
from dataset.token_cache import TableBuilder, TokenTable
from errors import UserError
from qwen.prompt import IGNORE_INDEX, PromptRenderer, record_messages

logger = logging.getLogger(__name__)

# Records rendered per batched tokenizer call (bounded memory, a progress bar that moves).
RENDER_CHUNK = 2048


@dataclass(frozen=True)
class RecordView:
    """Which samples a data set renders from a file's records (e.g. the chosen or the rejected side of
    preference pairs): ``select`` maps the records to them; the records it drops are counted under
    ``dropped``; ``empty`` is the error when none is left. ``name`` keeps each view's cache apart."""

    name: str
    select: Callable[[list], list]
    dropped: str
    empty: str


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
        cache: bool = False,
        cache_dir: str | None = None,
        view: RecordView | None = None,
    ) -> None:
        """``merged``: the records and image table already in memory (``load_merged``'s result;
        ``qa_file`` then only names them in messages). ``cache``: keep the rendered samples on disk
        and memory-map them (``dataset.token_cache``; under ``cache_dir`` when given), so a later run
        neither parses ``qa.json`` nor tokenizes it again. ``view``: render only the samples it selects."""
        self.preprocess = preprocess
        self.num_image_tokens = renderer.num_image_tokens
        self.image_token_id = renderer.image_token_id
        self.bad_images: Counter[str] = Counter()
        qa_path = Path(qa_file).resolve()  # absolute image paths: cwd-independent

        def build() -> TokenTable:
            records, images = merged or load_merged(qa_path)
            records = records[:limit] if limit is not None else records
            dropped = 0
            if view is not None:
                selected = view.select(records)
                dropped, records = len(records) - len(selected), selected
                if not records:
                    raise ValueError(f"{qa_file}: {view.empty}")
            table = self._render_all(records, images, renderer, max_length, image_token, system_prompt,
                                     show_progress, Path(qa_file).name)
            if dropped:
                table.skipped = {view.dropped: dropped, **table.skipped}
            return table

        if cache and merged is None:
            settings = {"tokenizer": token_cache.tokenizer_digest(renderer.tokenizer), "image_token": image_token,
                        "system_prompt": system_prompt, "max_length": max_length,
                        "num_image_tokens": self.num_image_tokens, "limit": limit, "view": view and view.name}
            key = token_cache.cache_key(qa_path, qa_path.parent / IMAGES_FILE, settings)
            root = token_cache.cache_root(qa_path, cache_dir)
            try:
                self.table, built = token_cache.open_or_build(root, key, qa_path, build, variant=view and view.name)
            except OSError as exc:  # a full disk, no permission, a file system without locks
                raise UserError(f"{qa_file}: the token cache in {root} cannot be used ({exc}); set data.token_cache_dir "
                                "to a writable local folder, or data.token_cache: false") from None
            self.cached = "built" if built else "reused"
        else:
            self.table, self.cached = build(), None
        self.skipped: Counter[str] = Counter(self.table.skipped)
        # The sampler's lengths: the sample with its placeholder expanded to the image's tokens.
        self.lengths = np.diff(self.table.offsets) + (self.num_image_tokens - 1)
        if self.skipped:
            logger.warning("%s: skipped %s", qa_file, dict(self.skipped))
        if not len(self.table):
            raise ValueError(f"{qa_file}: no usable training records (skipped: {dict(self.skipped)})")

    @property
    def record_index(self) -> np.ndarray:
        """Position in the merged records of each kept sample."""
        return self.table.record

    def image_path(self, index: int) -> Path:
        return self.table.image_path(index)

    def _render_all(self, records, images, renderer, max_length, image_token, system_prompt, show_progress,
                    name) -> TokenTable:
        self.skipped = Counter()
        compact = PromptRenderer(renderer.tokenizer, 1, image_token)
        builder = TableBuilder()
        with tqdm(total=len(records), desc=f"tokenizing {name}", disable=not show_progress, leave=False) as bar:
            for start in range(0, len(records), RENDER_CHUNK):
                chunk = records[start : start + RENDER_CHUNK]
                builder.add_chunk([(start + index, ids, sup, path) for index, ids, sup, path in
                                   self._render_chunk(chunk, compact, images, max_length, image_token, system_prompt)])
                bar.update(len(chunk))
        return builder.table(dict(self.skipped))

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
        return len(self.table)

    def _expand(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, sup = self.table.sample(index)
        ids, sup = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(sup.copy())
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
                pixels = self.preprocess.resized(self.image_path(i))  # uint8: the tower normalises
            except ValueError as exc:
                self.bad_images[str(self.image_path(i))] += 1
                logger.warning("skipping unreadable image (%d so far in this worker): %s", sum(self.bad_images.values()), exc)
                continue
            ids, labels = self._expand(i)
            return {"input_ids": ids, "labels": labels, "pixel_values": pixels}
        raise RuntimeError("no readable image in the whole data set")

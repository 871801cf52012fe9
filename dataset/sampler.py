"""Length-grouped sampling: batches of similar length waste little compute on padding."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Shuffle, cut into mega-batches of ``batch_size * mega`` items, sort each by length.

    Every epoch is a different permutation (seeded by ``seed + epoch``); the longest batch of
    the epoch comes first so an out-of-memory error shows up at step one, not hours in.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega: int = 50) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.mega = mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.mega
        groups = [sorted(order[i:i + size], key=lambda j: -self.lengths[j]) for i in range(0, len(order), size)]
        batches = [g[i:i + self.batch_size] for g in groups for i in range(0, len(g), self.batch_size)]
        if batches:
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            batches[0], batches[longest] = batches[longest], batches[0]
        return iter([i for b in batches for i in b])

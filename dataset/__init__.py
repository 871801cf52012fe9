"""Training data: merged records -> token ids, labels and pixels; collate; length-grouped sampling."""

from dataset.collate import Collator
from dataset.records import load_merged
from dataset.sampler import LengthGroupedSampler
from dataset.vqa_dataset import VQADataset

__all__ = ["Collator", "LengthGroupedSampler", "VQADataset", "load_merged"]

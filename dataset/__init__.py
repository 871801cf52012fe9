"""Training data: merged records -> token ids, labels and pixels; collate; length-grouped sampling.

``dataset.records`` (the one reader of merged data) uses only the standard library; the torch
parts below are imported on first use so the scripts can read their inputs before loading torch.
"""

from importlib import import_module

_LAZY = {
    "Collator": "dataset.collate",
    "LengthGroupedSampler": "dataset.sampler",
    "VQADataset": "dataset.vqa_dataset",
    "load_merged": "dataset.records",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dataset' has no attribute {name!r}")

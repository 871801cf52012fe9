"""Tokenized training data, kept once on disk and memory-mapped by every rank and DataLoader worker.

A merged ``qa.json`` of 500,000 two-turn records took 13.7 GB in one training process when each
sample was a pair of small numpy arrays in Python lists, and 41 s of tokenizing in every rank of
every run. Here the rendered samples form one columnar :class:`TokenTable` -- all token ids in one
int32 array, the supervision mask in one bool array, an offsets index, the image of each sample as
an index into one table of paths -- which is written once as ``.npy`` files and opened with
``np.load(mmap_mode="r")``: the pages are the OS's page cache, shared by every process that maps
them, and a process's private memory for the data is the offsets and lengths (16 bytes a sample).

Numpy memmaps rather than Arrow (``datasets``): the table is five flat arrays indexed by offset,
which numpy maps and slices with no dependency and no per-row decoding; nothing here needs Arrow's
nested types or its query engine.

The cache is keyed by everything that decides the samples: the bytes of ``qa.json`` and
``images.json``, where they are (image paths resolve against it), the tokenizer (its serialised
vocabulary and merges), the chat template, the placeholder, the system prompt, ``max_length``,
the number of image tokens, a record limit, the code that renders (``qwen/prompt.py``,
``dataset/vqa_dataset.py``) and :data:`FORMAT`. A changed input is another key, so it is built
anew; caches under other keys are listed, never removed (another run may be mapping them). One
process builds a key while the others wait on its lock file and then open it; a build goes into a
temporary directory renamed into place at the end, so a crash never leaves a cache that looks
complete (and the next build of that key removes the crashed one's directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = 1  # bump when the layout changes
# The code that turns records into samples: a change to it (a label-span fix) must not reuse old caches.
_RENDERING_CODE = hashlib.sha256(b"".join((Path(__file__).resolve().parents[1] / name).read_bytes()
                                          for name in ("qwen/prompt.py", "dataset/vqa_dataset.py"))).hexdigest()
_ARRAYS = ("ids", "supervised", "offsets", "image", "record")
_CHUNK = 1 << 22


@dataclass
class TokenTable:
    """Rendered samples, columnar: sample ``i`` is ``ids[offsets[i]:offsets[i+1]]`` (one placeholder
    id where its image goes), with ``supervised`` over the same span, its image
    ``paths[image[i]]`` and its position ``record[i]`` in the merged records."""

    ids: np.ndarray
    supervised: np.ndarray
    offsets: np.ndarray
    image: np.ndarray
    record: np.ndarray
    paths: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    cache_dir: Path | None = None  # where it is mapped from (None: in memory)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.ids[start:end]), np.asarray(self.supervised[start:end])

    def image_path(self, i: int) -> Path:
        return Path(self.paths[int(self.image[i])])

    def save(self, directory: Path, meta: dict) -> None:
        directory.mkdir(parents=True)
        for name in _ARRAYS:
            np.save(directory / f"{name}.npy", getattr(self, name))
        (directory / "paths.json").write_text(json.dumps(self.paths, ensure_ascii=False), encoding="utf-8")
        # meta.json last: a directory without it is not a cache (see open_table)
        (directory / "meta.json").write_text(json.dumps({**meta, "skipped": self.skipped, "samples": len(self)},
                                                        ensure_ascii=False, indent=1), encoding="utf-8")

    def __reduce__(self):
        """A mapped table travels to a spawned DataLoader worker as its folder, reopened there (pickling
        the arrays would give every worker a private copy of all the tokens)."""
        if self.cache_dir is not None:
            return (TokenTable.open, (self.cache_dir,))
        return super().__reduce__()

    @classmethod
    def open(cls, directory: Path) -> "TokenTable":
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        paths = json.loads((directory / "paths.json").read_text(encoding="utf-8"))
        return cls(**arrays, paths=paths, skipped=meta.get("skipped", {}), cache_dir=directory)


class TableBuilder:
    """Collects rendered samples chunk by chunk into a :class:`TokenTable` (a few arrays per chunk
    instead of two per sample while building)."""

    def __init__(self) -> None:
        self._ids: list[np.ndarray] = []
        self._sup: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._image: list[np.ndarray] = []
        self._record: list[np.ndarray] = []
        self._paths: dict[str, int] = {}

    def add_chunk(self, samples: list[tuple[int, np.ndarray, np.ndarray, Path]]) -> None:
        """``(record index, ids, supervised, image path)`` per sample of one chunk."""
        if not samples:
            return
        self._ids.append(np.concatenate([s[1] for s in samples]).astype(np.int32, copy=False))
        self._sup.append(np.concatenate([s[2] for s in samples]).astype(bool, copy=False))
        self._lengths.append(np.fromiter((len(s[1]) for s in samples), dtype=np.int64, count=len(samples)))
        self._image.append(np.fromiter((self._paths.setdefault(str(s[3]), len(self._paths)) for s in samples),
                                       dtype=np.int32, count=len(samples)))
        self._record.append(np.fromiter((s[0] for s in samples), dtype=np.int64, count=len(samples)))

    def table(self, skipped: dict[str, int]) -> TokenTable:
        def join(parts, dtype):
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        lengths = join(self._lengths, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TokenTable(ids=join(self._ids, np.int32), supervised=join(self._sup, bool), offsets=offsets,
                          image=join(self._image, np.int32), record=join(self._record, np.int64),
                          paths=list(self._paths), skipped=dict(skipped))


# -- the cache on disk ----------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """The tokenizer by what it does: its serialised model (vocabulary, merges, added tokens) when it
    is a fast tokenizer, else its vocabulary; and its chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode("utf-8"))
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode("utf-8"))
    return digest.hexdigest()


def cache_key(qa_file: Path, images_file: Path | None, settings: dict) -> str:
    """What decides the samples (see the module doc), as one sha256."""
    parts = {"format": FORMAT, "code": _RENDERING_CODE, "qa_file": str(qa_file.resolve()), "qa_sha256": file_digest(qa_file),
             "images_sha256": file_digest(images_file) if images_file is not None and images_file.is_file() else None,
             **settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def cache_root(qa_file: Path, configured: str | None) -> Path:
    """``data.token_cache_dir``, else ``.token_cache`` beside the data file, else (a read-only data
    folder) ``~/.cache/siglip-qwen-vqa/token_cache``."""
    if configured:
        return Path(configured)
    beside = qa_file.resolve().parent / ".token_cache"
    try:
        beside.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=beside, prefix=".probe-"):  # a unique name: ranks of other machines probe too
            pass
        return beside
    except OSError:
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "siglip-qwen-vqa" / "token_cache"


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_or_build(root: Path, key: str, qa_file: Path, build: Callable[[], TokenTable],
                  variant: str | None = None) -> tuple[TokenTable, bool]:
    """The cached table for ``key`` under ``root``, built with ``build`` when there is none (one
    process builds, the others wait for it). ``variant``: which samples of the file it holds (the
    chosen or rejected side of preference pairs), kept apart from the others. Returns the table
    (memory-mapped) and whether it was built now."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with _locked(root / f"{key}.lock"):
        built = False
        for stale in root.glob(f".{key}.tmp-*"):  # a build killed part-way (we hold its lock: nobody builds it now)
            shutil.rmtree(stale, ignore_errors=True)
        if not (final / "meta.json").is_file():
            if final.exists():  # no meta.json: not a finished cache (an older crash); never used
                shutil.rmtree(final)
            table = build()
            tmp = root / f".{key}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                table.save(tmp, {"qa_file": str(qa_file.resolve()), "variant": variant, "format": FORMAT})
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            built = True
            _note_older(root, key, qa_file, variant)
        table = TokenTable.open(final)
    return table, built


def _note_older(root: Path, key: str, qa_file: Path, variant: str | None) -> None:
    """Say where caches of the same data file under other keys are (older data, other settings, or
    a held-out subset of it): never removed here, since another run or rank may be mapping them
    (on a network file system a removed file is gone for the other machines too)."""
    older = []
    for other in root.iterdir():
        if other.name == key or not (other / "meta.json").is_file():
            continue
        try:
            meta = json.loads((other / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("qa_file") == str(qa_file.resolve()) and meta.get("variant") == variant:
            older.append(other)
    if older:
        size = sum(f.stat().st_size for d in older for f in d.iterdir() if f.is_file())
        print(f"note: {len(older)} other token cache(s) of {qa_file} ({size / 2**20:.0f} MiB) in {root}: other data or "
              "settings; remove them when no run uses them", file=sys.stderr)

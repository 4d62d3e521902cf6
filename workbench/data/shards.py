"""Pre-tokenized `.bin` shards in the llm.c / modded-nanogpt format, memory-mapped in place.

Format (one file): a header of 256 little-endian int32 (1,024 bytes): header[0] is the
magic 20240520, header[1] the version 1, header[2] the token count n; then n uint16
tokens, nothing else. This is what llm.c's `dev/data/*.py` and modded-nanogpt's
`data/cached_fineweb10B.py` write (GPT-2 ids, each document preceded by <|endoftext|>).

`data.path` names the shards as a glob, a folder (every `*.bin` in it) or one file.
The split is by shard: `data.val_path` (a glob) names the validation shards, else the
shards whose file names contain "val" are validation and the rest train. No tokenizer
pass runs and nothing is copied: `ShardStream` indexes the shards' token bodies as one
stream through read-only memmaps, the way `BatchLoader` indexes a cache's train.bin.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")


class ShardError(ValueError):
    """A shard we refuse; the message names the file and what is wrong with it."""


def is_shard_path(path: str | os.PathLike[str]) -> bool:
    """Does `data.path` name .bin shards (a *.bin file or glob, or a folder of them)?"""
    text = str(path)
    if text.endswith(".bin"):
        return True
    p = Path(text).expanduser()
    return p.is_dir() and any(p.glob("*.bin")) and not any(
        q.suffix.lower() in (".txt", ".md", ".py", ".jsonl", ".parquet") for q in p.iterdir())


def match(pattern: str | os.PathLike[str]) -> list[Path]:
    """The shard files of a glob, a folder or one file, sorted by path."""
    p = Path(pattern).expanduser()
    if p.is_dir():
        return sorted(p.glob("*.bin"))
    if p.is_file():
        return [p.resolve()]
    return sorted(Path(f).resolve() for f in glob.glob(str(p)) if Path(f).is_file())


def read_header(path: Path) -> int:
    """Validate one shard's header and size; its token count."""
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header "
                         "of a .bin shard (llm.c format) — a truncated or foreign file")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise ShardError(f"{path}: magic {int(header[0])}, expected {MAGIC} — not an "
                         "llm.c / modded-nanogpt .bin shard")
    if int(header[1]) != VERSION:
        raise ShardError(f"{path}: version {int(header[1])}, expected {VERSION} (uint16 "
                         "tokens) — rewrite it with the llm.c version-1 writer")
    n = int(header[2])
    body = size - HEADER_BYTES
    if n < 0 or body != n * TOKEN_DTYPE.itemsize:
        raise ShardError(f"{path}: the header says {n:,} tokens ({n * 2:,} bytes) but the "
                         f"body has {body:,} bytes — a truncated or corrupt shard")
    return n


@dataclass(frozen=True)
class ShardSplit:
    """The train and val shard lists of a `data.path` (+ `data.val_path`)."""

    train: tuple[Path, ...]
    val: tuple[Path, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return self.train + self.val


def split_shards(path: str | os.PathLike[str], val_path: str | None = None) -> ShardSplit:
    """Resolve and validate the shards (headers and sizes only; reads no tokens)."""
    found = match(path)
    if not found:
        raise ShardError(f"data.path {str(path)!r} matches no .bin shard — give a glob such "
                         "as 'fineweb10B/fineweb_train_*.bin', a folder or a file")
    if val_path:
        val = match(val_path)
        if not val:
            raise ShardError(f"data.val_path {val_path!r} matches no .bin shard")
        train = [f for f in found if f not in set(val)]
    else:
        val = [f for f in found if "val" in f.name]
        train = [f for f in found if "val" not in f.name]
    if not train:
        raise ShardError(f"data.path {str(path)!r}: every shard is a validation shard (its "
                         "name contains 'val') — point data.path at the training shards")
    if not val:
        raise ShardError(f"data.path {str(path)!r}: no validation shard — name one with "
                         "data.val_path, or include a shard whose name contains 'val'")
    for f in (*train, *val):
        read_header(f)
    return ShardSplit(tuple(train), tuple(val))


class ShardStream:
    """Several shards' tokens as one read-only stream: `len()` and fancy indexing with
    an int array, which is all `BatchLoader` and `eval_batches` use. No copy is made."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = tuple(files)
        self.parts = [np.memmap(f, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES,
                                shape=(read_header(f),)) for f in self.files]
        self.parts = [p for p in self.parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts], dtype=np.int64)
        self.dtype = TOKEN_DTYPE

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, idx: np.ndarray | slice | int) -> np.ndarray:
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(len(self)), dtype=np.int64)
        flat = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(flat) and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token index out of range for {len(self)} tokens")
        shard = np.searchsorted(self.offsets, flat, side="right") - 1
        out = np.empty(len(flat), dtype=TOKEN_DTYPE)
        for k in np.unique(shard):
            m = shard == k
            out[m] = self.parts[k][flat[m] - self.offsets[k]]
        return out.reshape(np.shape(idx))


def write_shard(path: str | os.PathLike[str], tokens: np.ndarray) -> Path:
    """Write `tokens` (ids < 65,536) as one version-1 shard, as llm.c does."""
    tokens = np.asarray(tokens)
    if len(tokens) and (tokens.min() < 0 or tokens.max() > 0xFFFF):
        raise ValueError("a version-1 .bin shard holds uint16 ids only (< 65,536)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, len(tokens))
    path = Path(path)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(TOKEN_DTYPE).tobytes())
    return path

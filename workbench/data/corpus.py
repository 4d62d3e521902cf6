"""Pretraining corpora: a byte-level tokenizer, text sources and an on-disk token cache.

Tokenizer
    The byte-level tokenizer of data/byte_level.py, re-exported here (BOS, EOS, PAD,
    VOCAB_SIZE, encode, decode): ids 0..255 are the bytes, then three specials. Every
    document in a cache is followed by one EOS; BOS is never written by the cache
    (it is there for prompts).

Sources (a frozen `Source`; `resolve_source(path)` builds one from `data.path`)
    stdlib  the default, and real text every machine has: every *.py file under
            `sysconfig.get_paths()["stdlib"]`, recursively, except anything under
            site-packages / dist-packages / __pycache__, read as bytes (no decoding,
            so odd test files are fine). One document per file.
    text    one text file (any suffix except .jsonl), read as bytes. A lone file
            is cut into line-aligned chunks of about CHUNK_BYTES (each chunk ends
            at the first newline after CHUNK_BYTES bytes) so that it can be split
            into train and val; chunk k of `name` has document id `name#k`, and only
            the file's last chunk is followed by EOS.
    dir     every file under a directory, recursively, whose suffix (any case) is in
            DEFAULT_SUFFIXES (.txt .text .md .markdown .rst .py .jsonl; `suffixes=`
            overrides), skipping hidden files and folders and __pycache__. One
            document per file, except that .jsonl files contain one document per
            record, as below.
    jsonl   a .jsonl file: one JSON object per line whose `text_field` (default
            "text") is a string; that string (UTF-8) is one document with id
            `name:LINE`. Blank lines are skipped. A line that is not JSON, not an
            object, or lacks a string `text_field` raises ValueError("FILE:LINE: ...").
    parquet a .parquet file, or a directory holding .parquet files (recursively; other
            files are then ignored): the `text_field` column of every row is one
            document with id `rel:ROW` (FineWeb's layout). Read with pyarrow in record
            batches, never a whole file; null rows are skipped. A file without the
            column raises ValueError naming the file and its columns.

    Files are always taken in sorted order of their relative POSIX path.
    `max_files` keeps the first N files; `max_bytes` keeps files, in order, while
    their total size stays within max_bytes (at least one file is always kept).
    Both work for every kind; they exist for tiny runs and tests.

Train/val split (by document)
    A document goes to val when blake2b(id, digest_size=8) as a big-endian integer
    mod 1000 < val_permille, where id is the document's relative path (or the
    `name:LINE` / `name#k` ids above). The rule depends on nothing but the id, so
    it is independent of file order and identical on every machine. The default
    val_permille=10 (1%) gives the stdlib of Python 3.11 19 val files (~0.28 M tokens)
    out of 1790 (~31.5 M tokens).
    Two safety rules for small corpora, both order-independent: with two or more
    documents and val_permille > 0, if no document landed in val, the one with the
    smallest hash goes there; if every document landed in val, the one with the
    largest hash goes back to train. A one-document corpus is all train.

Other tokenizers
    `build_cache(..., tokenizer=tok)` tokenizes with any tokenizer of
    data/tokenizer.py (a Hugging Face checkpoint's own, for continued pretraining):
    documents are decoded as UTF-8 (errors="replace"), encoded in batches without
    specials, and each is followed by `tok.eos_id` (the same EOS rule as above). The
    cache is keyed by `tok.fingerprint()` and holds uint16 tokens when every id fits
    (vocab_size <= 65536), else uint32; meta.json records the dtype and the tokenizer.
    `tokenizer=None` (or the bytes tokenizer) is the byte-level cache, bit for bit and
    with the same fingerprints as before tokenizers could be chosen.

Cache
    `build_cache(source, cache_dir)` writes `cache_dir/<fingerprint>/` holding
    train.bin and val.bin (raw little-endian uint16 or uint32 tokens) and meta.json.
    It streams: each document is tokenized in a batch and appended to its split's file
    at once, so memory stays bounded whatever the corpus size (the small-corpus safety
    rules move their one document between the files at the end).
    The fingerprint hashes the source kind, its resolved path, the sorted list of
    (relative path, size, mtime_ns) of the selected input files, text_field,
    val_permille, max_files/max_bytes/suffixes and the tokenizer and cache format
    versions (and a non-byte tokenizer's fingerprint): editing, adding or removing an
    input gives a new cache. Computing it
    only stats the inputs, so a second call reuses the cache without reading a
    single source file. The cache is built in a private temporary folder inside
    cache_dir and renamed into place with os.replace: a crash leaves no half cache,
    and when two processes race, the first rename wins and the loser drops its own
    (identical) copy and opens the winner's. Temporary folders left by dead
    processes on this host are removed on the next build. Nothing downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The byte-level tokenizer, re-exported: callers import it from here (and data/).
from workbench.data.byte_level import BOS as BOS
from workbench.data.byte_level import EOS as EOS
from workbench.data.byte_level import PAD as PAD
from workbench.data.byte_level import TOKENIZER as TOKENIZER
from workbench.data.byte_level import TOKENIZER_VERSION as TOKENIZER_VERSION
from workbench.data.byte_level import VOCAB_SIZE as VOCAB_SIZE
from workbench.data.byte_level import decode as decode
from workbench.data.byte_level import encode as encode
from workbench.data.byte_level import tokenizer_info as tokenizer_info
from workbench.procs import pid_alive

# ---------------------------------------------------------------- tokenizer

CACHE_FORMAT = 1
CHUNK_BYTES = 4096
DISK_DTYPE = np.dtype("<u2")  # train.bin / val.bin: little-endian uint16 on every machine
DISK_DTYPES = {"uint16": DISK_DTYPE, "uint32": np.dtype("<u4")}  # meta.json "dtype" -> dtype
BYTES_FINGERPRINT = "bytes-1"  # ByteTokenizer.fingerprint(): the byte-level cache
ENCODE_BATCH_BYTES = 1 << 20  # documents handed to a tokenizer's batch encoder at once
ENCODE_BATCH_DOCS = 1024

KINDS = ("stdlib", "text", "dir", "jsonl", "parquet")
PARQUET_BATCH_ROWS = 1024
DEFAULT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst", ".py", ".jsonl")
DEFAULT_VAL_PERMILLE = 10
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def is_bytes(tokenizer: Any | None) -> bool:
    """None or the byte tokenizer: the byte-level cache of this module."""
    return tokenizer is None or tokenizer.fingerprint() == BYTES_FINGERPRINT


def dtype_name(tokenizer: Any | None) -> str:
    """The cache's token dtype: uint16 when every id fits, else uint32."""
    if is_bytes(tokenizer) or tokenizer.vocab_size <= 1 << 16:
        return "uint16"
    return "uint32"


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """What to read. Build one with `stdlib_source`, `path_source` or `resolve_source`."""

    kind: str  # "stdlib" | "text" | "dir" | "jsonl" | "parquet"
    path: str  # absolute
    text_field: str = "text"
    val_permille: int = DEFAULT_VAL_PERMILLE
    max_files: int | None = None
    max_bytes: int | None = None
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown source kind {self.kind!r}")
        if not 0 <= self.val_permille < 1000:
            raise ValueError(f"val_permille must be in [0, 1000), got {self.val_permille}")
        if self.max_files is not None and self.max_files < 1:
            raise ValueError(f"max_files must be >= 1, got {self.max_files}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if not self.text_field:
            raise ValueError("text_field must not be empty")
        object.__setattr__(self, "suffixes", tuple(s.lower() for s in self.suffixes))

    def describe(self) -> str:
        name = "python stdlib" if self.kind == "stdlib" else self.kind
        limits = [f"{k}={v}" for k, v in (("max_files", self.max_files),
                                           ("max_bytes", self.max_bytes)) if v]
        return f"{name} {self.path}" + (f" ({', '.join(limits)})" if limits else "")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_source(*, val_permille: int = DEFAULT_VAL_PERMILLE, max_files: int | None = None,
                  max_bytes: int | None = None) -> Source:
    """The default corpus: the Python standard library's own .py source files."""
    return Source("stdlib", str(stdlib_root()), val_permille=val_permille,
                  max_files=max_files, max_bytes=max_bytes, suffixes=(".py",))


def path_source(path: str | os.PathLike[str], *, text_field: str = "text",
                val_permille: int = DEFAULT_VAL_PERMILLE, max_files: int | None = None,
                max_bytes: int | None = None,
                suffixes: tuple[str, ...] = DEFAULT_SUFFIXES) -> Source:
    """User data (`data.path`): a directory, a .jsonl file or any other (text) file."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        kind = "dir"
        if any(p.rglob("*.parquet")):
            kind, suffixes = "parquet", (".parquet",)
    elif p.is_file():
        kind = {".jsonl": "jsonl", ".parquet": "parquet"}.get(p.suffix.lower(), "text")
    else:
        raise FileNotFoundError(f"data.path {str(path)!r} does not exist")
    return Source(kind, str(p), text_field=text_field, val_permille=val_permille,
                  max_files=max_files, max_bytes=max_bytes, suffixes=tuple(suffixes))


def resolve_source(path: str | os.PathLike[str] | None = None, **options: Any) -> Source:
    """`data.path` -> Source: None or "" (or "stdlib") means the stdlib corpus."""
    if path is None or str(path) in ("", "stdlib"):
        options.pop("text_field", None)
        options.pop("suffixes", None)
        return stdlib_source(**options)
    return path_source(path, **options)


@dataclass(frozen=True)
class InputFile:
    rel: str  # POSIX path relative to the source root (the file name for a lone file)
    path: Path
    size: int
    mtime_ns: int


def list_files(source: Source) -> list[InputFile]:
    """The selected input files, sorted by relative path (stats only, reads nothing)."""
    root = Path(source.path)
    if source.kind in ("text", "jsonl") or (source.kind == "parquet" and root.is_file()):
        st = root.stat()
        files = [InputFile(root.name, root, st.st_size, st.st_mtime_ns)]
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not _skip_dir(source, d)]
            for name in filenames:
                if source.kind in ("dir", "parquet") and name.startswith("."):
                    continue
                if os.path.splitext(name)[1].lower() not in source.suffixes:
                    continue
                p = Path(dirpath, name)
                try:
                    st = p.stat()
                except OSError:  # a dangling symlink
                    continue
                if os.path.isfile(p):
                    files.append(InputFile(p.relative_to(root).as_posix(), p, st.st_size,
                                           st.st_mtime_ns))
        files.sort(key=lambda f: f.rel)
    if source.max_files is not None:
        files = files[: source.max_files]
    if source.max_bytes is not None:
        kept, total = [], 0
        for f in files:
            if kept and total + f.size > source.max_bytes:
                break
            kept.append(f)
            total += f.size
        files = kept
    if not files:
        raise ValueError(f"no input files in {source.describe()}")
    return files


def _skip_dir(source: Source, name: str) -> bool:
    return name in SKIP_DIRS or (source.kind in ("dir", "parquet") and name.startswith("."))


def _read_bytes(path: Path) -> bytes:
    """The one place sources are read (tests patch it to prove a cache hit reads nothing)."""
    return path.read_bytes()


def iter_documents(source: Source, files: list[InputFile] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   ) -> Iterator[tuple[str, bytes, bool]]:
    """(document id, bytes, followed_by_eos) in corpus order.

    `progress(bytes_done, bytes_total)` counts input file bytes: after each file, and
    after each record batch of a Parquet file (pro rata of its rows)."""
    files = list_files(source) if files is None else files
    total = sum(f.size for f in files)
    done = 0
    if progress:
        progress(0, total)
    for f in files:
        if source.kind == "parquet":
            for doc, frac in _parquet_records(f, source.text_field):
                yield doc
                if progress and frac is not None:
                    progress(done + int(f.size * frac), total)
        else:
            data = _read_bytes(f.path)
            if f.path.suffix.lower() == ".jsonl" and source.kind in ("jsonl", "dir"):
                yield from _jsonl_records(f, data, source.text_field)
            elif source.kind == "text":
                yield from _chunks(f.rel, data)
            else:
                yield f.rel, data, True
        done += f.size
        if progress:
            progress(done, total)


def parquet_text_column(path: Path, text_field: str) -> None:
    """Refuse a Parquet file without a string `text_field` column (reads its footer only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
    if text_field not in schema.names:
        cols = ", ".join(schema.names[:12]) + (" ..." if len(schema.names) > 12 else "")
        raise ValueError(f"{path}: no column {text_field!r} (columns: {cols}) — set "
                         "data.text_field to the text column")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{path}: column {text_field!r} is {kind}, not text — set "
                         "data.text_field to the text column")


def _parquet_records(f: InputFile, text_field: str,
                     ) -> Iterator[tuple[tuple[str, bytes, bool], float | None]]:
    """((id, bytes, True), fraction of the file read or None) per non-null row."""
    import pyarrow.parquet as pq

    parquet_text_column(f.path, text_field)
    pf = pq.ParquetFile(f.path)
    rows = max(1, pf.metadata.num_rows)
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        texts = batch.column(0).to_pylist()
        last = len(texts) - 1
        for i, text in enumerate(texts):
            if text is not None:
                yield (f"{f.rel}:{row + i}", text.encode("utf-8", errors="surrogatepass"),
                       True), ((row + len(texts)) / rows if i == last else None)
        row += len(texts)


def _jsonl_records(f: InputFile, data: bytes, text_field: str,
                   ) -> Iterator[tuple[str, bytes, bool]]:
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{f.path}:{lineno}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where}: not a JSON line ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        text = record.get(text_field)
        if not isinstance(text, str):
            what = "has no" if text is None else "has a non-string"
            raise ValueError(f"{where}: record {what} field {text_field!r} "
                             f"(set data.text_field to the name of the text field)")
        yield f"{f.rel}:{lineno}", text.encode("utf-8", errors="surrogatepass"), True


def _chunks(name: str, data: bytes) -> Iterator[tuple[str, bytes, bool]]:
    start, k = 0, 0
    while start < len(data) or k == 0:
        cut = data.find(b"\n", start + CHUNK_BYTES)
        end = len(data) if cut < 0 else cut + 1
        yield f"{name}#{k}", data[start:end], end >= len(data)
        start, k = end, k + 1


def doc_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big")


def is_val(doc_id: str, val_permille: int = DEFAULT_VAL_PERMILLE) -> bool:
    """The plain split rule (before the small-corpus safety rules of `assign_split`)."""
    return doc_hash(doc_id) % 1000 < val_permille


def assign_split(doc_ids: list[str], val_permille: int = DEFAULT_VAL_PERMILLE) -> set[str]:
    """The ids that go to val, safety rules included (see the module docstring)."""
    val = {d for d in doc_ids if is_val(d, val_permille)}
    if len(doc_ids) >= 2 and val_permille > 0:
        if not val:
            val = {min(doc_ids, key=doc_hash)}
        elif len(val) == len(set(doc_ids)):
            val.discard(max(doc_ids, key=doc_hash))
    elif len(doc_ids) < 2:
        val = set()
    return val


# ---------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """$WB_DATA_CACHE, else $XDG_CACHE_HOME/workbench/data, else ~/.cache/workbench/data."""
    if os.environ.get("WB_DATA_CACHE"):
        return Path(os.environ["WB_DATA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "workbench" / "data"


def fingerprint(source: Source, files: list[InputFile] | None = None,
                tokenizer: Any | None = None) -> str:
    """16 hex digits identifying the source's exact inputs and the cache's contents.

    A non-byte tokenizer adds its own fingerprint; the byte tokenizer adds nothing, so
    byte-level caches keep the fingerprints (and folders) they always had."""
    files = list_files(source) if files is None else files
    key: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "tokenizer": [TOKENIZER, TOKENIZER_VERSION],
        "chunk_bytes": CHUNK_BYTES,
        "source": asdict(source),
        "files": [[f.rel, f.size, f.mtime_ns] for f in files],
    }
    if not is_bytes(tokenizer):
        key["tokenizer"] = [tokenizer.fingerprint(), dtype_name(tokenizer)]
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _open_tokens(path: Path, dtype: np.dtype = DISK_DTYPE) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot memory-map an empty file
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r")


@dataclass
class CachedCorpus:
    """A built cache: read-only memmaps (uint16, or uint32 for a large vocabulary) of
    the train and val token streams."""

    path: Path
    meta: dict[str, Any]
    train: np.ndarray = field(repr=False)
    val: np.ndarray = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CachedCorpus:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        dtype = DISK_DTYPES[meta.get("dtype", "uint16")]  # caches from before: uint16
        return cls(path, meta, _open_tokens(path / "train.bin", dtype),
                   _open_tokens(path / "val.bin", dtype))

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])


def build_cache(source: Source | str | os.PathLike[str] | None = None,
                cache_dir: str | os.PathLike[str] | None = None, *,
                progress: Callable[[int, int], None] | None = None,
                tokenizer: Any | None = None) -> CachedCorpus:
    """Tokenize `source` (a Source, a data.path, or None for the stdlib) into a cache.

    Returns the existing cache when one with the same fingerprint is there (the
    sources are only stat'ed, never read). `progress(files_done, total_files)` is
    called as files are read on a real build. `tokenizer`: one of data/tokenizer.py
    (None = bytes; see "Other tokenizers" in the module docstring).
    """
    if not isinstance(source, Source):
        source = resolve_source(source)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    files = list_files(source)
    fp = fingerprint(source, files, tokenizer)
    final = cache_dir / fp
    if (final / "meta.json").is_file():
        return CachedCorpus.open(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(cache_dir)
    tmp = cache_dir / f".tmp-{fp}-{os.getpid()}-{secrets.token_hex(4)}-{socket.gethostname()}"
    tmp.mkdir()
    try:
        _write_cache(tmp, source, files, fp, progress, tokenizer)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
        else:
            _fsync_dir(cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CachedCorpus.open(final)


def open_corpus(path: str | os.PathLike[str] | None = None,
                cache_dir: str | os.PathLike[str] | None = None, *,
                progress: Callable[[int, int], None] | None = None,
                tokenizer: Any | None = None, **options: Any) -> CachedCorpus:
    """`data.path` (None -> stdlib) plus source options -> a built (or reused) cache."""
    return build_cache(resolve_source(path, **options), cache_dir, progress=progress,
                       tokenizer=tokenizer)


def tokenized_documents(source: Source, files: list[InputFile],
                        progress: Callable[[int, int], None] | None = None,
                        tokenizer: Any | None = None,
                        ) -> Iterator[tuple[str, np.ndarray, bool, int]]:
    """(document id, token ids, followed_by_eos, bytes read) in corpus order.

    Bytes map one to one; another tokenizer gets the documents in batches of about
    ENCODE_BATCH_BYTES, which a fast tokenizer encodes in parallel."""
    docs = iter_documents(source, files, progress)
    if is_bytes(tokenizer):
        for doc_id, data, with_eos in docs:
            yield doc_id, encode(data), with_eos, len(data)
        return
    encode_many = tokenizer.encode_batch if hasattr(tokenizer, "encode_batch") else (
        lambda texts: [tokenizer.encode(t) for t in texts])
    # One batch in flight: the library encodes batch i (without the GIL, on every core)
    # while this thread reads and decodes batch i + 1 and writes batch i - 1.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: tuple[list[tuple[str, bytes, bool]], Future[list[list[int]]]] | None = None
        for batch in _batches(docs):
            texts = [data.decode("utf-8", errors="replace") for _, data, _ in batch]
            submitted = (batch, pool.submit(encode_many, texts))
            if pending is not None:
                yield from _encoded(*pending)
            pending = submitted
        if pending is not None:
            yield from _encoded(*pending)


def _encoded(batch: list[tuple[str, bytes, bool]], future: Future[list[list[int]]],
             ) -> Iterator[tuple[str, np.ndarray, bool, int]]:
    for (doc_id, data, with_eos), ids in zip(batch, future.result(), strict=True):
        yield doc_id, np.asarray(ids, dtype=np.int64), with_eos, len(data)


def _batches(docs: Iterator[tuple[str, bytes, bool]],
             ) -> Iterator[list[tuple[str, bytes, bool]]]:
    batch: list[tuple[str, bytes, bool]] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc[1])
        if size >= ENCODE_BATCH_BYTES or len(batch) >= ENCODE_BATCH_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _SplitWriter:
    """Appends each document to train.bin or val.bin as it comes (bounded memory) and
    remembers what the small-corpus safety rules of `assign_split` may need to move:
    the lowest-hash document (to val) and the highest-hash val document (to train)."""

    def __init__(self, tmp: Path, dtype: np.dtype, val_permille: int) -> None:
        self.tmp, self.dtype, self.val_permille = tmp, dtype, val_permille
        self.out = {k: open(tmp / f"{k}.bin", "wb") for k in ("train", "val")}
        self.pos = {"train": 0, "val": 0}
        self.counts = {"train": [0, 0, 0], "val": [0, 0, 0]}  # documents, tokens, bytes
        self.lowest: tuple[int, str, str, int, int, int] | None = None  # hash, id, split, ...
        self.highest_val: tuple[int, str, str, int, int, int] | None = None
        self.val_sample: list[str] = []

    def add(self, doc_id: str, tokens: bytes, n_tokens: int, n_bytes: int) -> None:
        h = doc_hash(doc_id)
        split = "val" if h % 1000 < self.val_permille else "train"
        self.out[split].write(tokens)
        where = (h, doc_id, split, self.pos[split], self.pos[split] + n_tokens, n_bytes)
        self.pos[split] += n_tokens
        c = self.counts[split]
        c[0], c[1], c[2] = c[0] + 1, c[1] + n_tokens, c[2] + n_bytes
        if self.lowest is None or h < self.lowest[0]:
            self.lowest = where
        if split == "val":
            if self.highest_val is None or h > self.highest_val[0]:
                self.highest_val = where
            if len(self.val_sample) < 50 or doc_id < self.val_sample[-1]:
                self.val_sample = sorted([*self.val_sample, doc_id])[:50]

    def close(self) -> None:
        """Apply the safety rules (see the module docstring), then fsync both files."""
        for f in self.out.values():
            f.close()
        docs = self.counts["train"][0] + self.counts["val"][0]
        if docs < 2 and self.counts["val"][0]:
            self._move(self.highest_val, "train")  # a one-document corpus is all train
        elif docs >= 2 and self.val_permille > 0:
            if not self.counts["val"][0]:
                self._move(self.lowest, "val")
            elif not self.counts["train"][0]:
                self._move(self.highest_val, "train")
        for k in ("train", "val"):
            with open(self.tmp / f"{k}.bin", "rb+") as f:
                os.fsync(f.fileno())

    def _move(self, doc: tuple[int, str, str, int, int, int] | None, to: str) -> None:
        """Move one document from its split's file to the (empty) other one."""
        assert doc is not None
        _, doc_id, frm, start, end, n_bytes = doc
        size = self.dtype.itemsize
        src, dst = self.tmp / f"{frm}.bin", self.tmp / f"{to}.bin"
        rest = self.tmp / "rest.bin"
        with open(src, "rb") as f, open(dst, "wb") as d, open(rest, "wb") as r:
            _copy(f, r, start * size)
            _copy(f, d, (end - start) * size)
            _copy(f, r, None)
        os.replace(rest, src)
        for split, sign in ((frm, -1), (to, 1)):
            c = self.counts[split]
            c[0], c[1], c[2] = c[0] + sign, c[1] + sign * (end - start), c[2] + sign * n_bytes
        self.val_sample = [doc_id] if to == "val" else [
            d for d in self.val_sample if d != doc_id]


def _copy(src: Any, dst: Any, n: int | None, chunk: int = 1 << 24) -> None:
    """Copy n bytes (None: the rest) from one open file to another, in chunks."""
    while n is None or n > 0:
        data = src.read(chunk if n is None else min(chunk, n))
        if not data:
            break
        dst.write(data)
        if n is not None:
            n -= len(data)


def _write_cache(tmp: Path, source: Source, files: list[InputFile], fp: str,
                 progress: Callable[[int, int], None] | None,
                 tokenizer: Any | None = None) -> None:
    t0 = time.perf_counter()
    dtype_key = dtype_name(tokenizer)
    dtype = DISK_DTYPES[dtype_key]
    eos_id = EOS if is_bytes(tokenizer) else int(tokenizer.eos_id)
    eos = np.array([eos_id], dtype=dtype).tobytes()
    limit = np.iinfo(dtype).max
    writer = _SplitWriter(tmp, dtype, source.val_permille)
    n_bytes = 0
    for doc_id, ids, with_eos, size in tokenized_documents(source, files, progress, tokenizer):
        if len(ids) and (ids.min() < 0 or ids.max() > limit):
            raise ValueError(f"{doc_id}: token id {int(ids.max())} does not fit "
                             f"{dtype_key} (tokenizer vocab_size is wrong)")
        data = ids.astype(dtype, copy=False).tobytes() + (eos if with_eos else b"")
        writer.add(doc_id, data, len(ids) + with_eos, size)
        n_bytes += size
    writer.close()
    counts = writer.counts
    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": fp,
        "description": source.describe(),
        "source": asdict(source),
        "tokenizer": _tokenizer_meta(tokenizer, dtype_key),
        "dtype": dtype_key,
        "files": len(files),
        "bytes": n_bytes,
        "documents": {k: v[0] for k, v in counts.items()},
        "tokens": {k: v[1] for k, v in counts.items()},
        "split_bytes": {k: v[2] for k, v in counts.items()},
        "val_documents_sample": writer.val_sample,
        "created": time.time(),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "python": sys.version.split()[0],
    }
    with open(tmp / "meta.json", "w") as out:
        json.dump(meta, out, indent=1)
        out.flush()
        os.fsync(out.fileno())


def _tokenizer_meta(tokenizer: Any | None, dtype_key: str) -> dict[str, Any]:
    if is_bytes(tokenizer):
        return tokenizer_info()
    from workbench.data.tokenizer import info  # one way: tokenizer.py never imports this

    return {**info(tokenizer), "dtype": dtype_key}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _clean_stale_tmp(cache_dir: Path) -> None:
    """Remove build folders left by dead processes of this host."""
    host = socket.gethostname()
    for entry in cache_dir.glob(".tmp-*"):
        parts = entry.name.split("-", 4)  # [".tmp", fingerprint, pid, token, host]
        if len(parts) != 5 or parts[4] != host or not parts[2].isdigit():
            continue
        if not pid_alive(int(parts[2])):
            shutil.rmtree(entry, ignore_errors=True)


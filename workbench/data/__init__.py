"""Corpora and batches for pretraining (RL tasks live elsewhere).

`corpus`: the byte-level tokenizer, text sources (the Python stdlib by default,
or `data.path`), the train/val split and the on-disk token cache.
`loader`: deterministic, resumable, data-parallel batches. It imports torch, so it
is loaded lazily: `import workbench.data` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.data.corpus import (
    BOS,
    DEFAULT_SUFFIXES,
    DEFAULT_VAL_PERMILLE,
    EOS,
    PAD,
    VOCAB_SIZE,
    CachedCorpus,
    Source,
    assign_split,
    build_cache,
    decode,
    default_cache_dir,
    encode,
    fingerprint,
    is_val,
    list_files,
    open_corpus,
    path_source,
    resolve_source,
    stdlib_source,
)

if TYPE_CHECKING:
    from workbench.data.loader import BatchLoader, eval_batches

__all__ = [
    "BOS", "EOS", "PAD", "VOCAB_SIZE", "DEFAULT_SUFFIXES", "DEFAULT_VAL_PERMILLE",
    "CachedCorpus", "Source", "assign_split", "build_cache", "decode", "default_cache_dir",
    "encode", "fingerprint", "is_val", "list_files", "open_corpus", "path_source",
    "resolve_source", "stdlib_source", "BatchLoader", "eval_batches",
]


def __getattr__(name: str) -> Any:
    if name in ("BatchLoader", "eval_batches"):
        from workbench.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'workbench.data' has no attribute {name!r}")

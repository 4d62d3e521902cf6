"""Corpora and batches for pretraining (RL tasks live elsewhere).

`corpus`: the byte-level tokenizer, text sources (the Python stdlib by default,
or `data.path`), the train/val split and the on-disk token cache.
`byte_level`: the byte tokenizer and its ids, shared by `corpus` and `tokenizer`.
`tokenizer`: one `Tokenizer` protocol over bytes, `tokenizers` JSON, HF and GPT-2 .bin.
`shards`: llm.c / modded-nanogpt `.bin` token shards, memory-mapped.
`loader`: deterministic, resumable, data-parallel batches; `mixture`: batches drawn
from several sources by weight. They import torch, so this package imports neither
(`BatchLoader` and `eval_batches` load on first use): `import workbench.data` stays light.
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

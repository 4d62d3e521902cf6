"""The byte-level tokenizer: ids 0..255 are the bytes themselves, then three specials.

BOS=256, EOS=257, PAD=258. The embedding table has VOCAB_SIZE=260 rows: 259 rounded
up to a multiple of 4 (id 259 is a spare that never occurs in the data). Decoding
drops every special and decodes the bytes as UTF-8 with errors="replace".

A module of its own because both data/corpus.py (the byte-level cache) and
data/tokenizer.py (`ByteTokenizer`) need it, and corpus.py records a tokenizer
through tokenizer.py: neither may import the other back (tests/test_layout.py).
corpus.py re-exports every name here, and most callers import them from there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BOS = 256
EOS = 257
PAD = 258
VOCAB_SIZE = 260  # 256 bytes + 3 specials = 259, rounded up to a multiple of 4
TOKENIZER = "bytes"
TOKENIZER_VERSION = 1


def encode(data: bytes | bytearray | memoryview | str) -> np.ndarray:
    """Bytes (or a str, as UTF-8) -> uint16 token ids 0..255. No specials are added."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return np.frombuffer(bytes(data), dtype=np.uint8).astype(np.uint16)


def decode(tokens: Any) -> str:
    """Token ids (array, tensor or list) -> text. Specials are skipped; bad UTF-8 -> U+FFFD."""
    arr = np.asarray(tokens).astype(np.int64, copy=False).reshape(-1)
    return arr[(arr >= 0) & (arr < 256)].astype(np.uint8).tobytes().decode(
        "utf-8", errors="replace")


def tokenizer_info() -> dict[str, Any]:
    """What a byte-level cache's meta.json records about its tokenizer."""
    return {"name": TOKENIZER, "version": TOKENIZER_VERSION, "vocab_size": VOCAB_SIZE,
            "bos": BOS, "eos": EOS, "pad": PAD, "dtype": "uint16"}

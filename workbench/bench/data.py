"""`wb bench data`: the data path's cost, against what it is built on.

- tokenize: a byte-level BPE (4,096 ids, trained on the corpus first; not timed) over
  the first MB of the Python stdlib. `cache_s` is `build_cache` from nothing: listing,
  reading, batch encoding, and writing train.bin / val.bin / meta.json with fsync.
  `direct_s` is the `tokenizers` library's own batch encoder called on the same
  documents, already in memory as str, in batches of the same size, its ids thrown
  away. `throughput_ratio` = direct_s / cache_s (1.0: the cache costs nothing beyond
  encoding; the goal is >= 0.8). Both in tokens/s too.
- loader: the cache's tokens written as llm.c `.bin` shards (two train, one val), then
  `BatchLoader` over the memory-mapped `ShardStream` at muon-tiny's batch (16 x 128).
  `loader_ms` is the mean time of one batch (index, gather, to int64 tensors) over 200
  batches; `step_ms` the median of 10 muon-tiny training steps (forward, backward,
  Muon) on this machine; `loader_over_step` their ratio (it must be negligible).
- bpe_vs_bytes (full mode only): `pretrain-bpe-tiny` from an empty store (BPE training
  and tokenizing included in `bpe_wall_s`) and `muon-tiny` on bytes, same model, steps
  and batch, so the same number of tokens seen (a BPE token holds ~3 bytes, so the BPE
  run sees more text). `val/bits_per_byte` of each at the end: the loss per UTF-8
  byte, which is what compares two tokenizers.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from workbench.bench.runs import run_to_end, say

QUICK_BYTES, FULL_BYTES = 2_000_000, 16_000_000
BPE_VOCAB = 4096


def _tokenize(root: Path, n_bytes: int, progress: Console | None) -> dict[str, Any]:
    from workbench.data.corpus import (
        _batches,
        build_cache,
        iter_documents,
        stdlib_source,
    )
    from workbench.data.tokenizer import JsonTokenizer
    from workbench.recipes.pretrain.data import train_bpe
    from workbench.recipes.pretrain.spec import DataSection

    data = DataSection(max_bytes=n_bytes, tokenizer=f"bpe:{BPE_VOCAB}")
    say(progress, f"tokenize: training a {BPE_VOCAB}-id BPE on {n_bytes / 1e6:.0f} MB")
    tok = JsonTokenizer(train_bpe(data, BPE_VOCAB, root / "tokenizers"))
    source = stdlib_source(max_bytes=n_bytes)
    batches = [[raw.decode("utf-8", errors="replace") for _, raw, _ in batch]
               for batch in _batches(iter_documents(source))]
    fast = getattr(tok.tok, "encode_batch_fast", tok.tok.encode_batch)
    fast(batches[0][:8], add_special_tokens=False)  # warm the library's thread pool
    say(progress, "tokenize: the library's batch encoder, directly")
    t0 = time.perf_counter()
    tokens = 0
    for texts in batches:
        tokens += sum(len(e.ids) for e in fast(texts, add_special_tokens=False))
    direct = time.perf_counter() - t0
    say(progress, "tokenize: build_cache")
    t0 = time.perf_counter()
    cache = build_cache(source, root / "cache", tokenizer=tok)
    built = time.perf_counter() - t0
    cached_tokens = sum(cache.meta["tokens"].values())
    return {"mb": round(n_bytes / 1e6, 1), "documents": sum(cache.meta["documents"].values()),
            "tokens": cached_tokens, "bytes_per_token": round(cache.meta["bytes"] /
                                                              cached_tokens, 3),
            "direct_s": round(direct, 3), "cache_s": round(built, 3),
            "direct_tokens_per_s": round(tokens / direct),
            "cache_tokens_per_s": round(cached_tokens / built),
            "throughput_ratio": round(direct / built, 3), "cache": cache}


def _step_ms(progress: Console | None) -> float:
    """Median ms of one muon-tiny training step on random bytes."""
    import torch

    from workbench.recipes.common.builders import build_model, build_optimizer_list
    from workbench.recipes.common.faults import Faults
    from workbench.recipes.common.step import forward_backward, optimizer_step
    from workbench.spec import load_spec

    spec = load_spec("muon-tiny").spec
    model = build_model(spec, torch.device("cpu"))  # type: ignore[arg-type]
    opts = build_optimizer_list(spec, model, torch.device("cpu"), False)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)

    class Random:
        step = 0

        def __next__(self) -> tuple[Any, Any]:
            self.step += 1
            x = torch.randint(0, 256, (16, 128), generator=g)
            return x, torch.roll(x, -1, 1)

    loader, times = Random(), []
    say(progress, "loader: timing muon-tiny training steps")
    for i in range(13):
        t0 = time.perf_counter()
        forward_backward(model, opts, loader, spec, i + 1, torch.device("cpu"),  # type: ignore[arg-type]
                         Faults(), None)
        optimizer_step(opts, 1e-3)
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _loader(root: Path, cache: Any, progress: Console | None) -> dict[str, Any]:
    from workbench.data.loader import BatchLoader
    from workbench.data.shards import ShardStream, write_shard

    half = len(cache.train) // 2
    files = [write_shard(root / "c_train_0.bin", np.asarray(cache.train[:half])),
             write_shard(root / "c_train_1.bin", np.asarray(cache.train[half:]))]
    write_shard(root / "c_val_0.bin", np.asarray(cache.val))
    loader = BatchLoader(ShardStream(files), 16, 128, seed=0)
    loader.batch(0)
    say(progress, "loader: 200 batches from memory-mapped shards")
    t0 = time.perf_counter()
    for k in range(200):
        loader.batch(k)
    loader_ms = (time.perf_counter() - t0) * 1000 / 200
    step = _step_ms(progress)
    return {"loader_ms": round(loader_ms, 4), "step_ms": round(step, 2),
            "loader_over_step": round(loader_ms / step, 5)}


def _bpe_vs_bytes(progress: Console | None) -> dict[str, Any]:
    from workbench.store import Store

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wb-bench-data-") as tmp, Store(Path(tmp)) as st:
        for spec, label in (("pretrain-bpe-tiny", "bpe"), ("muon-tiny", "bytes")):
            t0 = time.monotonic()
            row = run_to_end(st, spec, [], progress, label, timeout=3600)
            out[f"{label}_wall_s"] = round(time.monotonic() - t0, 1)
            bpb = [v for *_, v, _ in st.scalars(row.id, "val/bits_per_byte")]
            loss = [v for *_, v, _ in st.scalars(row.id, "val/loss")]
            out[f"{label}_val_bits_per_byte"] = round(bpb[-1], 4) if bpb else None
            out[f"{label}_val_loss"] = round(loss[-1], 4) if loss else None
    b, y = out["bpe_val_bits_per_byte"], out["bytes_val_bits_per_byte"]
    out["bpb_ratio_bpe_over_bytes"] = round(b / y, 3) if b and y else None
    return out


def bench_data(quick: bool = False, progress: Console | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wb-bench-data-") as tmp:
        root = Path(tmp)
        tok = _tokenize(root, QUICK_BYTES if quick else FULL_BYTES, progress)
        cache = tok.pop("cache")
        result: dict[str, Any] = {"tokenize": tok, "loader": _loader(root, cache, progress)}
        del cache
    if not quick:
        result["bpe_vs_bytes"] = _bpe_vs_bytes(progress)
    result["quick"] = quick
    return result

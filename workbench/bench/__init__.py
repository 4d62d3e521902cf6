"""`wb bench NAME`: reproducible measurements of the figures the project promises.

Each bench is `fn(quick: bool, progress: Console | None) -> dict` of figures.

- store: SDK logging throughput vs raw SQLite (bench/store.py).
- muon: optimizer-step time, our Muon vs torch.optim.Muon vs AdamW (bench/muon.py).
- muon-dist: distributed Muon step time per rank, 2 processes vs 1, and optimizer-state
  bytes per rank at 2-4 ranks (bench/muon_dist.py).
- maxlogit: training-step time with / without max-logit tracking (bench/maxlogit.py).
- optimizers: Muon vs AdamW, each at its best of a swept lr: tokens and FLOPs
  (Newton-Schulz counted) to reach AdamW's best val loss (bench/optimizers.py).
- rl: asynchronous vs synchronous RL: wall time for the same trainer steps, accuracy
  and reward, time to a fixed accuracy, slot occupancy (bench/rl.py).
- engine: generated tokens/s, continuous vs static batching on a skewed-length workload
  (bench/engine.py).
- engine-hf: our torch engine vs transformers' generate on the same Hugging Face
  checkpoint (the tiny Qwen2 of `wb example-model`), batched and greedy (bench/engine_hf.py).
- depth: accuracy vs recurrences, adaptive exit, KV sharing and self-speculative
  decoding on a freshly trained depth-tiny (bench/depth.py).
- mirror: a remote run's mirror over loopback ssh: rows/s and the lag from a remote
  write to local visibility (bench/mirror.py).
- kernels: the Triton kernels vs torch on CUDA (TFLOP/s, fraction of peak); on a CPU,
  their interpreter checks against the torch references (bench/kernels.py).
- tui: dashboard first frame on a 100-run store and live refresh of a 1M-point run,
  the live 50-key Metrics grid, and a cached 1,000-run big store (`wb ls`, first frame,
  opening a 20k-point run) (bench/tui.py).
- data: tokenizing into the cache vs the tokenizers library alone, batches from
  memory-mapped .bin shards vs a training step, and a BPE run vs bytes in bits per
  byte (bench/data.py).
- spikes: loss-spike detector recall and false positives per 1,000 steps on recorded
  clean curves with injected jumps of 5-50% (bench/spikes.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _store(**kw: Any) -> dict[str, Any]:
    from workbench.bench.store import bench_store

    return bench_store(**kw)


def _muon(**kw: Any) -> dict[str, Any]:
    from workbench.bench.muon import bench_muon

    return bench_muon(**kw)


def _muon_dist(**kw: Any) -> dict[str, Any]:
    from workbench.bench.muon_dist import bench_muon_dist

    return bench_muon_dist(**kw)


def _maxlogit(**kw: Any) -> dict[str, Any]:
    from workbench.bench.maxlogit import bench_maxlogit

    return bench_maxlogit(**kw)


def _optimizers(**kw: Any) -> dict[str, Any]:
    from workbench.bench.optimizers import bench_optimizers

    return bench_optimizers(**kw)


def _engine(**kw: Any) -> dict[str, Any]:
    from workbench.bench.engine import bench_engine

    return bench_engine(**kw)


def _engine_hf(**kw: Any) -> dict[str, Any]:
    from workbench.bench.engine_hf import bench_engine_hf

    return bench_engine_hf(**kw)


def _tui(**kw: Any) -> dict[str, Any]:
    from workbench.bench.tui import bench_tui

    return bench_tui(**kw)


def _rl(**kw: Any) -> dict[str, Any]:
    from workbench.bench.rl import bench_rl

    return bench_rl(**kw)


def _depth(**kw: Any) -> dict[str, Any]:
    from workbench.bench.depth import bench_depth

    return bench_depth(**kw)


def _mirror(**kw: Any) -> dict[str, Any]:
    from workbench.bench.mirror import bench_mirror

    return bench_mirror(**kw)


def _kernels(**kw: Any) -> dict[str, Any]:
    from workbench.bench.kernels import bench_kernels

    return bench_kernels(**kw)


def _spikes(**kw: Any) -> dict[str, Any]:
    from workbench.bench.spikes import bench_spikes

    return bench_spikes(**kw)


def _data(**kw: Any) -> dict[str, Any]:
    from workbench.bench.data import bench_data

    return bench_data(**kw)


BENCHES: dict[str, Callable[..., dict[str, Any]]] = {
    "store": _store,
    "muon": _muon,
    "muon-dist": _muon_dist,
    "maxlogit": _maxlogit,
    "optimizers": _optimizers,
    "engine": _engine,
    "engine-hf": _engine_hf,
    "tui": _tui,
    "rl": _rl,
    "depth": _depth,
    "mirror": _mirror,
    "kernels": _kernels,
    "spikes": _spikes,
    "data": _data,
}

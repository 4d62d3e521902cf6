"""Deterministic, resumable batches of token windows.

Sampling rule
    Global batch k is a pure function of (seed, k): a numpy Generator seeded with
    SeedSequence([SALT, seed, k]) draws G = batch_size * world_size window starts
    uniformly from [0, len(tokens) - seq_len - 1]. Window i is tokens[o_i : o_i +
    seq_len + 1]; x is its first seq_len tokens and y the last seq_len (x shifted
    by one). Rank r of world_size W takes rows r::W of the global batch, so W ranks
    with per-rank batch B together see exactly the batch that one rank with batch
    B*W sees (rank r's row j is global row j*W + r), and the data-parallel mean loss
    equals the single-process loss. The stream does not depend on rank or W beyond
    that, so changing W while keeping B*W fixed resumes the very same data.

Resuming
    The only state is the step counter k (the index of the next batch). Because a
    batch is a pure function of (seed, k), `state_dict()` is {"step": k, ...},
    `load_state_dict()` restores k, and `skip(n)` just adds n (used by the
    "rollback and skip the data window" policy). `batch(k)` gives any batch directly.

Validation
    `eval_batches` returns the same windows on every call: n_batches * batch_size *
    world_size starts spaced evenly over the whole token stream (np.linspace,
    rounded), cut into consecutive batches; ranks split rows the same way as above.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

SALT = 0x5EED_DA7A  # separates the data stream from other uses of the same seed
STATE_VERSION = 1


def _check(tokens: np.ndarray, batch_size: int, seq_len: int, rank: int,
           world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")
    if len(tokens) < seq_len + 1:
        raise ValueError(f"{len(tokens)} tokens are too few for seq_len={seq_len} "
                         f"(need at least {seq_len + 1}); use a larger corpus or a "
                         f"shorter seq_len")


def windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 tensors [len(starts), seq_len] for the windows at `starts`."""
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(seq_len + 1, dtype=np.int64)
    w = np.asarray(tokens[idx], dtype=np.int64)
    return torch.from_numpy(np.ascontiguousarray(w[:, :-1])), torch.from_numpy(
        np.ascontiguousarray(w[:, 1:]))


class StepLoader:
    """An endless stream whose batch k is a pure function of k: iterating yields
    batch(step) and advances `step`, which is all a checkpoint needs to resume it."""

    step: int = 0
    batch_size: int  # per rank
    seq_len: int
    world_size: int

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def tokens_per_step(self) -> int:
        """Tokens (targets) in one global batch."""
        return self.global_batch_size * self.seq_len

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def skip(self, n: int) -> None:
        """Advance past n batches without producing them."""
        if n < 0:
            raise ValueError(f"cannot skip a negative number of batches ({n})")
        self.step += int(n)


class BatchLoader(StepLoader):
    """Random (x, y) windows; batch k is a pure function of (seed, k). See the module doc.

    `batch_size` is the per-rank batch; the global batch is batch_size * world_size.
    Iterating yields batch(step) and advances step; the iterator never ends.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        _check(tokens, batch_size, seq_len, rank, world_size)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.tokens = tokens
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.step = 0

    def global_starts(self, k: int) -> np.ndarray:
        """Window starts of global batch k (all ranks' rows)."""
        if k < 0:
            raise ValueError(f"batch index must be >= 0, got {k}")
        rng = np.random.default_rng([SALT, self.seed, int(k)])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.global_batch_size,
                            dtype=np.int64)

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share (rows rank::world_size) of global batch k."""
        return windows(self.tokens, self.global_starts(k)[self.rank::self.world_size],
                       self.seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "step": self.step, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "seq_len": self.seq_len,
                "n_tokens": len(self.tokens)}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restore the position. strict: refuse a state from a different data stream
        (another seed, global batch, seq_len or corpus size)."""
        if strict:
            for key in ("seed", "global_batch_size", "seq_len", "n_tokens"):
                mine = self.state_dict()[key]
                if key in state and state[key] != mine:
                    raise ValueError(f"loader state has {key}={state[key]}, this loader has "
                                     f"{mine}; the batches would differ (strict=False to "
                                     f"resume anyway)")
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"loader state has a negative step ({step})")
        self.step = step


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int, n_batches: int,
                 rank: int = 0, world_size: int = 1,
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation batches: identical on every call (see the module doc)."""
    _check(tokens, batch_size, seq_len, rank, world_size)
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    g = batch_size * world_size
    starts = np.linspace(0, len(tokens) - seq_len - 1, num=n_batches * g)
    starts = np.rint(starts).astype(np.int64).reshape(n_batches, g)
    return [windows(tokens, row[rank::world_size], seq_len) for row in starts]

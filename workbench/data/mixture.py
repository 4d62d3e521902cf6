"""Batches drawn from several corpora by weight (`[[data.sources]]`), resumable exactly.

Sampling rule
    Global batch k is a pure function of (seed, k), as in loader.py: a Generator seeded
    with [SALT, MIX_SALT, seed, k] first picks each of the G = batch_size * world_size
    rows' source (independently, with probability weight / sum of weights), then, for
    each source in order, draws that source's rows' window starts uniformly from its own
    token stream. Rank r takes rows r::W, as BatchLoader does. The only state is the
    step counter, so a resumed run (any W with the same B*W) sees the very same batches.

Validation
    `mixture_eval_batches`: n_batches * G rows split between the sources in proportion
    to their weights (largest remainder), each source's rows evenly spaced over its own
    val stream, shuffled once with a fixed generator so every batch mixes the sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from workbench.data.loader import SALT, STATE_VERSION, StepLoader, _check, windows

MIX_SALT = 0x3A1C


def _normalized(weights: Sequence[float], n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != n or n < 1 or (w <= 0).any():
        raise ValueError("need one positive weight per source")
    return w / w.sum()


class MixtureLoader(StepLoader):
    """Random (x, y) windows from several token streams by weight. See the module doc."""

    def __init__(self, sources: Sequence[Any], weights: Sequence[float], names: Sequence[str],
                 batch_size: int, seq_len: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        for tokens in sources:
            _check(tokens, batch_size, seq_len, rank, world_size)
        self.sources = list(sources)
        self.p = _normalized(weights, len(self.sources))
        self.names = list(names)
        self.batch_size, self.seq_len, self.seed = int(batch_size), int(seq_len), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.step = 0

    def global_rows(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, window start) of every row of global batch k."""
        if k < 0:
            raise ValueError(f"batch index must be >= 0, got {k}")
        rng = np.random.default_rng([SALT, MIX_SALT, self.seed, int(k)])
        which = rng.choice(len(self.sources), size=self.global_batch_size, p=self.p)
        starts = np.zeros(self.global_batch_size, dtype=np.int64)
        for s, tokens in enumerate(self.sources):
            rows = which == s
            starts[rows] = rng.integers(0, len(tokens) - self.seq_len, size=int(rows.sum()),
                                        dtype=np.int64)
        return which, starts

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        which, starts = self.global_rows(k)
        which, starts = which[self.rank::self.world_size], starts[self.rank::self.world_size]
        x = torch.empty(len(starts), self.seq_len, dtype=torch.int64)
        y = torch.empty_like(x)
        for s, tokens in enumerate(self.sources):
            rows = np.flatnonzero(which == s)
            if len(rows):
                xs, ys = windows(tokens, starts[rows], self.seq_len)
                x[rows], y[rows] = xs, ys
        return x, y

    def fractions(self, first: int, n: int) -> dict[str, float]:
        """Each source's share of the rows of global batches first .. first + n - 1."""
        counts = np.zeros(len(self.sources))
        for k in range(first, first + n):
            counts += np.bincount(self.global_rows(k)[0], minlength=len(self.sources))
        return {name: float(c / counts.sum()) for name, c in zip(self.names, counts,
                                                                  strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "step": self.step, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "seq_len": self.seq_len,
                "n_tokens": [len(t) for t in self.sources],
                "weights": [round(float(p), 12) for p in self.p]}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restore the position; strict: refuse a state of another data stream."""
        if strict:
            mine = self.state_dict()
            for key in ("seed", "global_batch_size", "seq_len", "n_tokens", "weights"):
                if key in state and state[key] != mine[key]:
                    raise ValueError(f"loader state has {key}={state[key]}, this loader has "
                                     f"{mine[key]}; the batches would differ (strict=False "
                                     "to resume anyway)")
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"loader state has a negative step ({step})")
        self.step = step


def mixture_eval_batches(sources: Sequence[Any], weights: Sequence[float], batch_size: int,
                         seq_len: int, n_batches: int, rank: int = 0, world_size: int = 1,
                         ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation batches over several val streams (see the module doc)."""
    p = _normalized(weights, len(sources))
    g = batch_size * world_size
    total = n_batches * g
    share = p * total
    rows = np.floor(share).astype(np.int64)
    for i in np.argsort(-(share - rows), kind="stable")[: total - rows.sum()]:
        rows[i] += 1
    xs, ys = [], []
    for tokens, n in zip(sources, rows, strict=True):
        if n:
            _check(tokens, 1, seq_len, 0, 1)
            starts = np.rint(np.linspace(0, len(tokens) - seq_len - 1, num=n)).astype(np.int64)
            x, y = windows(tokens, starts, seq_len)
            xs.append(x)
            ys.append(y)
    order = torch.from_numpy(np.random.default_rng([SALT, MIX_SALT]).permutation(total))
    x, y = torch.cat(xs)[order].view(n_batches, g, seq_len), torch.cat(ys)[order].view(
        n_batches, g, seq_len)
    return [(x[b, rank::world_size].contiguous(), y[b, rank::world_size].contiguous())
            for b in range(n_batches)]

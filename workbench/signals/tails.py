"""Tail summaries of distributions (rollout lengths, recurrence steps per token, ...).

Means hide the long tails that dominate async-RL throughput and recurrent-depth
compute, so a distribution record carries p50/p90/p99 plus a histogram. Small
integer distributions (staleness 0..4, recurrence 1..32) get unit-width bins
centred on the integers so their histograms are exact rather than smeared.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TailSummary:
    """Summary of one distribution; ``len(edges) == len(counts) + 1`` unless empty."""

    count: int  # finite values summarised
    min: float
    max: float
    mean: float
    p50: float
    p90: float
    p99: float
    edges: list[float]
    counts: list[int]
    nonfinite: int  # nan/inf values dropped

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (lists copied), ready for a JSON record."""
        return asdict(self)


def summarize(
    values: Iterable[float] | np.ndarray, bins: int = 32, integer: bool | None = None
) -> TailSummary:
    """Summarise ``values``: drop and count non-finite, quantiles, histogram.

    ``integer=None`` auto-detects all-integer data. Integer data spanning at most
    ``bins`` distinct values gets one unit-width bin per integer (so there may be
    fewer than ``bins`` bins); otherwise ``bins`` equal-width bins over [min, max].
    Quantiles use ``np.quantile``'s default linear method.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins!r}")
    raw = values if isinstance(values, np.ndarray) else list(values)
    arr = np.asarray(raw, dtype=float).ravel()
    finite = np.isfinite(arr)
    nonfinite = int(arr.size - finite.sum())
    arr = arr[finite]
    if arr.size == 0:
        nan = math.nan
        return TailSummary(0, nan, nan, nan, nan, nan, nan, [], [], nonfinite)

    lo, hi = float(arr.min()), float(arr.max())
    if integer is None:
        integer = bool(np.all(arr == np.round(arr)))
    if integer and round(hi) - round(lo) + 1 <= bins:
        # One bin per integer: edges at k - 0.5 make the counts exact.
        edges = np.arange(round(lo) - 0.5, round(hi) + 1.0, 1.0)
        counts, edges = np.histogram(arr, bins=edges)
    else:
        counts, edges = np.histogram(arr, bins=bins, range=(lo, hi))

    p50, p90, p99 = (float(q) for q in np.quantile(arr, [0.5, 0.9, 0.99]))
    return TailSummary(
        count=int(arr.size),
        min=lo,
        max=hi,
        mean=float(arr.mean()),
        p50=p50,
        p90=p90,
        p99=p99,
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        nonfinite=nonfinite,
    )


class TailWindow:
    """Streaming buffer of the last ``size`` values, for samples finishing one at a time."""

    def __init__(self, size: int = 1024) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self.size = size
        self._buf: deque[float] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._buf)

    def add(self, value: float) -> None:
        """Append one value (non-finite values are kept and counted by the summary)."""
        self._buf.append(float(value))

    def extend(self, values: Iterable[float]) -> None:
        """Append many values; only the last ``size`` are retained."""
        self._buf.extend(float(v) for v in values)

    def summary(self, bins: int = 32, integer: bool | None = None) -> TailSummary:
        """:func:`summarize` over the values currently in the window."""
        return summarize(list(self._buf), bins=bins, integer=integer)

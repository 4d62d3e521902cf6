"""Staleness accounting for async RL.

A token's staleness is the trainer version at which it is used minus the policy
version of the weights that produced it. With in-flight weight updates one
completion can span several policy versions, so a sample's staleness is taken
from its *oldest* token (the worst case), and we also track how many versions a
completion spans.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def sample_staleness(trainer_version: int, token_versions: Iterable[int]) -> int:
    """``trainer_version - min(token_versions)``: staleness of the sample's oldest token."""
    return trainer_version - _versions(trainer_version, token_versions)[0]


def _versions(trainer_version: int, token_versions: Iterable[int]) -> tuple[int, int]:
    """(oldest, newest) token version, validated against ``trainer_version``."""
    versions = [int(v) for v in token_versions]
    if not versions:
        raise ValueError("token_versions is empty")
    oldest, newest = min(versions), max(versions)
    if newest > trainer_version:
        raise ValueError(f"token version {newest} is newer than trainer version {trainer_version}")
    return oldest, newest


@dataclass(frozen=True)
class StalenessSummary:
    """Staleness over a set of samples; ``over_bound`` is 0 when no bound is set."""

    count: int
    mean: float
    max: int
    hist: dict[int, int] = field(default_factory=dict)  # staleness -> samples
    over_bound: int = 0  # samples with staleness > max_staleness
    spanned_versions_mean: float = math.nan  # policy versions one completion spans

    def as_dict(self) -> dict[str, Any]:
        """Plain dict with a copied ``hist`` (keys sorted)."""
        return {
            "count": self.count,
            "mean": self.mean,
            "max": self.max,
            "hist": dict(sorted(self.hist.items())),
            "over_bound": self.over_bound,
            "spanned_versions_mean": self.spanned_versions_mean,
        }


class StalenessTracker:
    """Streaming staleness statistics since the last :meth:`reset`."""

    def __init__(self, max_staleness: int | None = None) -> None:
        if max_staleness is not None and max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 or None, got {max_staleness!r}")
        self.max_staleness = max_staleness
        self.reset()

    def reset(self) -> None:
        """Start a new accumulation period (e.g. one per trainer step)."""
        self._hist: Counter[int] = Counter()
        self._count = 0
        self._sum = 0
        self._max = 0
        self._over = 0
        self._span_sum = 0

    def add(self, trainer_version: int, token_versions: Iterable[int]) -> int:
        """Record one sample used at ``trainer_version``; return its staleness."""
        oldest, newest = _versions(trainer_version, token_versions)
        s = trainer_version - oldest
        self._hist[s] += 1
        self._count += 1
        self._sum += s
        self._max = max(self._max, s)
        self._span_sum += newest - oldest + 1
        if self.max_staleness is not None and s > self.max_staleness:
            self._over += 1
        return s

    def summary(self) -> StalenessSummary:
        """Summary of everything added since the last reset (mean nan when empty)."""
        n = self._count
        return StalenessSummary(
            count=n,
            mean=self._sum / n if n else math.nan,
            max=self._max,
            hist=dict(sorted(self._hist.items())),
            over_bound=self._over,
            spanned_versions_mean=self._span_sum / n if n else math.nan,
        )

    def would_exceed(self, trainer_version: int, oldest_version: int) -> bool:
        """Whether a sample whose oldest token is ``oldest_version`` would be too stale
        at ``trainer_version``.

        AReaL-style control: the rollout side checks this before starting or
        continuing generation and *pauses* generation until fresher weights arrive,
        rather than generating and then dropping over-stale samples (wasted work).
        Always False when no bound is set.
        """
        if self.max_staleness is None:
            return False
        return trainer_version - oldest_version > self.max_staleness

"""`RunFeed`: an incremental, in-memory view of one run, for live displays.

The dashboard's run screen, the compare screen and `wb watch` all show a run that
may still be writing. Each keeps one `RunFeed` and calls `poll()` on a timer; a
poll reads only what was committed since the last one, through the store API:

- scalars as numpy columns (`Store.scalar_columns`), appended to growable arrays,
  so a million-point run loads once and then refreshes in milliseconds;
- distributions, matrices and events as records (`Store.records`), keeping every
  distribution (p50/p90/p99/max over steps), the latest matrix per key, and events.

Two cursors, one per read, because each read is bounded by the sequence value it
read first: a single shared cursor could step past rows the other read has not
seen yet. No Textual here (the core never imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.records import DistRecord, EventRecord, MatrixRecord, Record
from workbench.run_record import RunRecord
from workbench.store import Store

PREVIEW_POINTS = 20_000  # the newest points a big run paints first (`RunFeed.preview`)
RECORD_PAGE = 10_000  # records per read; a poll reads at most MAX_PAGES of them
MAX_PAGES = 100


@dataclass
class Series:
    """One scalar key's points in arrival order. Arrays grow by doubling, so appending
    a few points to a million costs no copy of the million."""

    _step: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    _value: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    _wall: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    n: int = 0

    @property
    def step(self) -> np.ndarray:
        return self._step[: self.n]

    @property
    def value(self) -> np.ndarray:
        return self._value[: self.n]

    @property
    def wall(self) -> np.ndarray:
        return self._wall[: self.n]

    def __len__(self) -> int:
        return self.n

    def last(self) -> tuple[int, float] | None:
        return None if self.n == 0 else (int(self._step[self.n - 1]),
                                          float(self._value[self.n - 1]))

    def extend(self, steps: np.ndarray, values: np.ndarray, walls: np.ndarray) -> None:
        k = len(steps)
        if self.n + k > len(self._step):
            cap = max(1024, 2 * (self.n + k))
            self._step = _grow(self._step, cap)
            self._value = _grow(self._value, cap)
            self._wall = _grow(self._wall, cap)
        self._step[self.n:self.n + k] = steps
        self._value[self.n:self.n + k] = values
        self._wall[self.n:self.n + k] = walls
        self.n += k


def _grow(a: np.ndarray, cap: int) -> np.ndarray:
    out = np.empty(cap, dtype=a.dtype)
    out[: len(a)] = a
    return out


class RunFeed:
    """What a live view of one run needs, kept current by `poll()`."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.row: RunRecord = store.get_run(run_id)
        self.events: list[EventRecord] = []
        self._series: dict[str, Series] = {}
        self._matrices: dict[str, tuple[int, np.ndarray]] = {}
        self._dists: dict[str, list[DistRecord]] = {}
        self._scalar_cursor = 0
        self._record_cursor = 0
        self.polls = 0
        self.partial = False  # series hold a preview only (the newest points)

    # -- reading ----------------------------------------------------------------------

    def preview(self, limit: int = PREVIEW_POINTS) -> bool:
        """Fill the series with the run's newest `limit` points, moving no cursor: a
        big run paints at once, then `poll()` reads the whole history in their place."""
        columns = self.store.scalar_tail(self.run_id, limit)
        for key, (steps, values, walls) in columns.items():
            series = Series()
            series.extend(steps, values, walls)
            self._series[key] = series
        self.partial = bool(columns)
        return self.partial

    def poll(self, store: Store | None = None, *, write_cache: bool = True) -> bool:
        """Read what was committed since the last poll. True when anything changed
        (new records, or the run's status or step). `store`: another connection to
        the same store (a loader thread's); after a preview the new series replace
        the preview's at the end, so a view never sees half a history.
        `write_cache=False`: a due write of the run's scalar cache waits for that
        store's `write_scalar_cache()` (a view paints first)."""
        store = store or self.store
        before = (self.row.status, self.row.last_step, self.row.heartbeat)
        self.row = store.get_run(self.run_id)
        changed = before != (self.row.status, self.row.last_step,
                             self.row.heartbeat) or self.polls == 0
        self.polls += 1
        if self._scalar_cursor == 0:  # the whole history: from the run's cache if valid
            self._scalar_cursor, columns = store.scalar_history(self.run_id,
                                                                write=write_cache)
        else:
            self._scalar_cursor, columns = store.scalar_columns(self.run_id,
                                                                self._scalar_cursor)
        target: dict[str, Series] = {} if self.partial else self._series
        for key, (steps, values, walls) in columns.items():
            target.setdefault(key, Series()).extend(steps, values, walls)
        if self.partial:
            self._series, self.partial = target, False
        changed |= bool(columns)
        for _ in range(MAX_PAGES):
            page = list(store.records(self.run_id, since=self._record_cursor,
                                      limit=RECORD_PAGE,
                                      tables=("dists", "matrices", "events")))
            for rec in page:
                self._take(rec)
                self._record_cursor = rec.id
            changed |= bool(page)
            if len(page) < RECORD_PAGE:
                break
        return changed

    def _take(self, rec: Record) -> None:
        if isinstance(rec, EventRecord):
            self.events.append(rec)
        elif isinstance(rec, MatrixRecord):
            self._matrices[rec.key] = (rec.step, rec.array())
        elif isinstance(rec, DistRecord):
            self._dists.setdefault(rec.key, []).append(rec)

    # -- views ------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return sorted(self._series)

    def series(self, key: str) -> Series:
        """The key's points (empty when it has none yet)."""
        return self._series.get(key) or Series()

    def matrix(self, key: str) -> tuple[int, np.ndarray] | None:
        """(step, array) of the latest matrix logged under `key`."""
        return self._matrices.get(key)

    def matrix_keys(self) -> list[str]:
        return sorted(self._matrices)

    def dist(self, key: str) -> DistRecord | None:
        """The latest distribution record of `key` (count, min, max, mean, p50, p90,
        p99, edges, counts)."""
        history = self._dists.get(key)
        return history[-1] if history else None

    def dist_history(self, key: str) -> list[DistRecord]:
        return self._dists.get(key, [])

    def dist_keys(self) -> list[str]:
        return sorted(self._dists)

    def events_of(self, *kinds: str) -> list[EventRecord]:
        return [e for e in self.events if e.kind in kinds]

    @property
    def config(self) -> Mapping[str, Any]:
        return self.row.config

    @property
    def tau(self) -> float | None:
        """The QK-Clip threshold of a pretrain run (optim.tau), else None."""
        tau = (self.config.get("optim") or {}).get("tau")
        return float(tau) if isinstance(tau, int | float) else None

    @property
    def tokens_per_step(self) -> int | None:
        """Global tokens per step of a pretrain run (batch x seq_len), for token x-axes."""
        cfg = self.config
        try:
            return int(cfg["train"]["batch_size"]) * int(cfg["model"]["seq_len"])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def spec_text(self) -> str:
        return self.row.spec or ""

    @property
    def log_path(self) -> Path:
        return self.store.run_dir(self.run_id) / "stdout.log"

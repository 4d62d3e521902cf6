"""The tracking SDK: `Run`, the buffered writer every process logs through.

`log()` appends tuples to an in-memory buffer under a lock and returns; a
background thread writes the buffer to the store in one transaction per batch.
A training step therefore never waits on disk, and a kill -9 loses at most the
batch that was not yet committed, never half of one.

`init()` inside a launched worker (WB_RUN_ID set) attaches to that run, so a
user's script logs into the run the launcher made; outside, it creates a run of
its own and owns its status, like any launched run.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from workbench.signals.tails import summarize
from workbench.store import HEARTBEAT_S, NAN, NEG_INF, POS_INF, Batch, Store

SEVERITIES = ("debug", "info", "warning", "error")
_live_runs: weakref.WeakSet[Run] = weakref.WeakSet()
_exit_status = "finished"  # what atexit records for owned runs still open


class Run:
    """One run as seen by one process. Thread-safe; cheap to call from a hot loop."""

    def __init__(self, store: Store, row: dict[str, Any], *, owner: bool,
                 flush_interval: float = 0.25, max_buffer: int = 100_000):
        self.id: str = row["id"]
        self.name: str = row["name"]
        self.kind: str = row["kind"]
        self.root: Path = store.root
        self.dir: Path = store.run_dir(self.id)
        self.owner = owner
        self._config: dict[str, Any] = json.loads(row.get("config") or "{}")
        self._store = store
        self._interval = flush_interval
        self._max_buffer = max_buffer
        self._lock = threading.Lock()
        self._scalars: list[tuple] = []
        self._dists: list[tuple] = []
        self._matrices: list[tuple] = []
        self._events: list[tuple] = []
        self._nonfinite_keys: set[str] = set()
        self._step = -1  # last step used; log() without a step advances it
        self._max_step: int | None = None
        self._enqueued = 0
        self.flushed_rows = 0  # rows committed so far (read by tests and benches)
        self._flushed = threading.Condition()
        self._wake = threading.Event()
        self._closing = False
        self._finished = False
        self._error_reported = False
        self._thread = threading.Thread(target=self._loop, name=f"wb-writer-{self.id}",
                                        daemon=True)
        self._thread.start()
        _live_runs.add(self)

    # -- public API ---------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    @property
    def step(self) -> int:
        return max(self._step, 0)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalars. Without `step`, each call advances the run's step by one."""
        wall = time.time()
        with self._lock:
            if step is None:
                step = self._step + 1
            self._step = step
            rows = self._scalars
            for key, value in metrics.items():
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    raise TypeError(
                        f"log() takes numbers; {key!r} is {type(value).__name__} "
                        "(use log_dist for many values, log_matrix for arrays)"
                    ) from None
                if v - v == 0.0:  # finite (inf - inf and nan - nan are nan)
                    rows.append((step, key, v, wall, 0))
                else:
                    self._nonfinite(key, v, step, wall)
            self._enqueued += len(metrics)
            n = len(rows)
        if n > self._max_buffer:
            self._wake.set()

    def log_dist(self, key: str, values: Any, step: int | None = None, bins: int = 32) -> None:
        """Log a distribution (rollout lengths, staleness, depth per token) as one record."""
        s = summarize(_as_numpy(values), bins=bins)
        row = (key, s.count, s.min, s.max, s.mean, s.p50, s.p90, s.p99,
               json.dumps(s.edges), json.dumps(s.counts), s.nonfinite, time.time())
        with self._lock:
            self._dists.append((self._at(step), *row))
            self._enqueued += 1

    def log_matrix(self, key: str, array: Any, step: int | None = None) -> None:
        """Log a 2-D (or any-D) array, e.g. the layer x head max-logit map."""
        arr = np.ascontiguousarray(_as_numpy(array), dtype=np.float32)
        row = (key, json.dumps(list(arr.shape)), "float32", arr.tobytes(), time.time())
        with self._lock:
            self._matrices.append((self._at(step), *row))
            self._enqueued += 1

    def event(self, kind: str, step: int | None = None, severity: str = "info",
              **payload: Any) -> None:
        """Record an event (loss_spike, checkpoint, weight_sync, ...) with a JSON payload."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        body = json.dumps(payload, default=str)
        with self._lock:
            self._events.append((self._at(step), kind, severity, body, time.time()))
            self._enqueued += 1

    def update_config(self, config: Mapping[str, Any]) -> None:
        """Merge keys into the run's stored config."""
        self._config.update(config)
        self._store.update_run(self.id, config=self._config)

    def set_total_steps(self, total: int) -> None:
        """How many steps the run expects: drives progress bars and ETA."""
        self._store.update_run(self.id, total_steps=int(total))

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Block until everything logged so far is committed. True if it was."""
        with self._lock:
            target = self._enqueued
        self._wake.set()
        with self._flushed:
            return self._flushed.wait_for(lambda: self.flushed_rows >= target or
                                          not self._thread.is_alive(), timeout)

    def finish(self, status: str = "finished", exit_code: int | None = None) -> None:
        """Flush and stop the writer. An owning run records its final status."""
        if self._finished:
            return
        self._finished = True
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=120)
        if self.owner:
            self._store.update_run(self.id, status=status, ended=time.time(),
                                   exit_code=exit_code, heartbeat=time.time())
        _live_runs.discard(self)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.finish("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("stopped")
        else:
            self.finish("failed")

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, name={self.name!r}, kind={self.kind!r})"

    # -- internals ----------------------------------------------------------------------

    def _at(self, step: int | None) -> int:
        """Step for records other than log(): the given one, or the current step."""
        if step is None:
            return max(self._step, 0)
        self._step = max(self._step, step)
        return step

    def _nonfinite(self, key: str, v: float, step: int, wall: float) -> None:
        """Keep the point (value NULL for NaN, inf as is), flag it, and say so once per key."""
        flag = NAN if v != v else (POS_INF if v > 0 else NEG_INF)
        self._scalars.append((step, key, None if flag == NAN else v, wall, flag))
        if key not in self._nonfinite_keys:
            self._nonfinite_keys.add(key)
            label = "nan" if flag == NAN else ("inf" if flag == POS_INF else "-inf")
            self._events.append((step, "nan", "warning",
                                 json.dumps({"key": key, "value": label}), wall))
            self._enqueued += 1

    def _take(self) -> tuple[Batch, int | None]:
        with self._lock:
            batch = Batch(self.id, self._scalars, self._dists, self._matrices, self._events)
            self._scalars, self._dists, self._matrices, self._events = [], [], [], []
            step = self._step if self._step >= 0 else None
        return batch, step

    def _loop(self) -> None:
        store = Store(self.root)
        last_beat = 0.0
        pending: list[Batch] = []
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                closing = self._closing
                batch, step = self._take()
                if len(batch):
                    pending.append(batch)
                beat = self.owner and time.monotonic() - last_beat > HEARTBEAT_S
                while pending or beat:
                    b = pending[0] if pending else Batch(self.id)
                    try:
                        store.write_batch(b, last_step=step, heartbeat=beat)
                    except Exception as exc:  # disk full, locked beyond timeout: keep and retry
                        self._report(exc)
                        if closing:
                            break
                        time.sleep(1.0)
                        break
                    if pending:
                        pending.pop(0)
                    if beat:
                        last_beat = time.monotonic()
                        beat = False
                    with self._flushed:
                        self.flushed_rows += len(b)
                        self._flushed.notify_all()
                if closing and not pending:
                    return
                if closing and self._error_reported:
                    return
        finally:
            store.close()
            with self._flushed:
                self._flushed.notify_all()

    def _report(self, exc: Exception) -> None:
        if not self._error_reported:
            self._error_reported = True
            print(f"workbench: cannot write run {self.id} to {self.root}: {exc} "
                  "(keeping data in memory and retrying)", file=sys.stderr)


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def init(name: str | None = None, config: Mapping[str, Any] | None = None,
         kind: str = "custom", store: str | os.PathLike[str] | None = None) -> Run:
    """Start (or, inside a launched worker, attach to) a run and return its `Run`.

    Outside the workbench this creates a run with launcher "sdk" that shows in
    `wb ls` and the dashboard like a launched one; its status follows the
    process (finished on exit, failed on an uncaught exception, lost on kill).
    """
    run_id = os.environ.get("WB_RUN_ID")
    st = Store(store or os.environ.get("WB_STORE"))
    if run_id:
        row = st.get_run(run_id)
        run = Run(st, row, owner=False)
        if config:  # the launched spec's values win over the script's defaults
            run.update_config({**config, **run.config})
    else:
        row = st.create_run(kind=kind, name=name, status="running", launcher="sdk",
                            config=dict(config or {}), pid=os.getpid())
        run = Run(st, row, owner=True)
    _install_exit_hooks()
    return run


_hooks_installed = False


def _install_exit_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    previous = sys.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        global _exit_status
        _exit_status = "stopped" if issubclass(exc_type, KeyboardInterrupt) else "failed"
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook
    atexit.register(_finish_all)


def _finish_all() -> None:
    for run in list(_live_runs):
        run.finish(_exit_status)

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
import operator
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from workbench.run_record import RunRecord
from workbench.signals.tails import summarize
from workbench.store import HEARTBEAT_S, NAN, POS_INF, Batch, Store, StoreError, flag_of

SEVERITIES = ("debug", "info", "warning", "error")
_live_runs: weakref.WeakSet[Run] = weakref.WeakSet()
_exit_status = "finished"  # what atexit records for owned runs still open


class Run:
    """One run as seen by one process. Thread-safe; cheap to call from a hot loop."""

    def __init__(self, store: Store, row: RunRecord, *, owner: bool,
                 heartbeat: bool | None = None, own_store: bool = False,
                 flush_interval: float = 0.25, max_buffer: int = 100_000,
                 max_pending: int = 1_000_000, disabled: bool = False):
        """`owner`: this process records the run's final status. `heartbeat` (default:
        owner): the writer keeps the run's heartbeat fresh. `own_store`: close `store`
        on finish (init() opened it for this run). `disabled`: every call is accepted
        and nothing is written (the ranks other than 0 of a data-parallel run, so that
        training code logs unconditionally and the run still has one writer)."""
        self.disabled = disabled
        self.id: str = row.id
        self.name: str = row.name
        self.kind: str = row.kind
        self.root: Path = store.root
        self.dir: Path = store.run_dir(self.id)
        self.owner = owner
        self._beats = owner if heartbeat is None else heartbeat
        self._own_store = own_store
        self._config: dict[str, Any] = dict(row.config)
        self._store = store
        self._interval = flush_interval
        self._max_buffer = max_buffer  # buffered scalars that wake the writer early
        self._max_pending = max_pending  # logged but uncommitted rows that make log() wait
        self._lock = threading.Lock()
        self._scalars: list[tuple] = []
        self._dists: list[tuple] = []
        self._matrices: list[tuple] = []
        self._events: list[tuple] = []
        self._nonfinite_keys: set[str] = set()
        self._step = -1  # last step used; log() without a step advances it
        self._enqueued = 0
        self.flushed_rows = 0  # rows committed so far (read by tests and benches)
        self.dropped_rows = 0  # rows SQLite refused for good (reported on stderr)
        self._flushed = threading.Condition()
        self._wake = threading.Event()
        self._closing = False
        self._finished = False
        self._error_reported = False
        self._drop_reported = False
        self._sampler: Any = None  # the sysmetrics.SystemSampler finish() stops, if any
        self._thread = threading.Thread(target=self._loop, name=f"wb-writer-{self.id}",
                                        daemon=True)
        if not disabled:
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
        if self.disabled:
            return
        wall = time.time()
        with self._lock:
            if self._closing:
                self._refuse()
            if step is None:
                at = self._step + 1
            else:
                at = step if type(step) is int else _step_of(step)
            rows = self._scalars
            n0 = len(rows)
            nonfinite = None
            for key, value in metrics.items():
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    del rows[n0:]  # a call logs all of its metrics or none
                    raise TypeError(
                        f"log() takes numbers; {key!r} is {type(value).__name__} "
                        "(use log_dist for many values, log_matrix for arrays)"
                    ) from None
                if v - v == 0.0:  # finite (inf - inf and nan - nan are nan)
                    rows.append((at, key, v, wall, 0))
                elif nonfinite is None:
                    nonfinite = [(key, v)]
                else:
                    nonfinite.append((key, v))
            if nonfinite:  # after the loop, so that a refused call leaves no warning behind
                for key, v in nonfinite:
                    self._nonfinite(key, v, at, wall)
            self._step = at
            self._enqueued += len(metrics)
            n = len(rows)
        if n > self._max_buffer:
            self._wake.set()
            if self._enqueued - self.flushed_rows - self.dropped_rows > self._max_pending:
                self._backpressure()

    def log_system(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalars at `step` (default: the current step) WITHOUT moving the run's step.

        For the system-metrics sampler (sysmetrics.py), which logs from its own thread
        while training logs: log() would advance the step (or, given an older one, set
        it back), so the training loop's next step, `last_step` and the ETA would move.
        Non-finite values are left out; after finish() the call does nothing (the sampler
        may race it).
        """
        if self.disabled:
            return
        wall = time.time()
        with self._lock:
            if self._closing:
                return
            at = max(self._step, 0) if step is None else _step_of(step)
            rows = [(at, key, v, wall, 0) for key, v in
                    ((str(k), float(x)) for k, x in metrics.items()) if v - v == 0.0]
            self._scalars.extend(rows)
            self._enqueued += len(rows)

    def log_dist(self, key: str, values: Any, step: int | None = None, bins: int = 32) -> None:
        """Log a distribution (rollout lengths, staleness, depth per token) as one record."""
        _check_name("key", key)
        if self.disabled:
            return
        s = summarize(_as_numpy(values), bins=bins)
        row = (key, s.count, s.min, s.max, s.mean, s.p50, s.p90, s.p99,
               json.dumps(s.edges), json.dumps(s.counts), s.nonfinite, time.time())
        with self._lock:
            if self._closing:
                self._refuse()
            self._dists.append((self._at(step), *row))
            self._enqueued += 1

    def log_matrix(self, key: str, array: Any, step: int | None = None) -> None:
        """Log a 2-D (or any-D) array, e.g. the layer x head max-logit map."""
        _check_name("key", key)
        if self.disabled:
            return
        arr = np.ascontiguousarray(_as_numpy(array), dtype=np.float32)
        row = (key, json.dumps(list(arr.shape)), "float32", arr.tobytes(), time.time())
        with self._lock:
            if self._closing:
                self._refuse()
            self._matrices.append((self._at(step), *row))
            self._enqueued += 1

    def event(self, kind: str, step: int | None = None, severity: str = "info",
              **payload: Any) -> None:
        """Record an event (loss_spike, checkpoint, weight_sync, ...) with a JSON payload."""
        _check_name("kind", kind)
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        if self.disabled:
            return
        body = json.dumps(payload, default=str)
        with self._lock:
            if self._closing:
                self._refuse()
            # An event marks a step; it does not advance the run's progress.
            at = max(self._step, 0) if step is None else _step_of(step)
            self._events.append((at, kind, severity, body, time.time()))
            self._enqueued += 1

    def update_config(self, config: Mapping[str, Any], *, keep_existing: bool = False) -> None:
        """Merge keys into the run's stored config (`keep_existing`: only add new keys)."""
        if self.disabled:
            return
        self._config = self._store.merge_config(self.id, dict(config),
                                                keep_existing=keep_existing)

    def set_total_steps(self, total: int) -> None:
        """How many steps the run expects: drives progress bars and ETA."""
        if self.disabled:
            return
        self._store.update_run(self.id, total_steps=int(total))

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Block until everything logged so far is committed. True if it was."""
        if self.disabled:
            return True
        with self._lock:
            target = self._enqueued
        self._wake.set()
        with self._flushed:
            self._flushed.wait_for(lambda: self.flushed_rows + self.dropped_rows >= target
                                   or not self._thread.is_alive(), timeout)
            return self.flushed_rows >= target  # False if the writer died or dropped rows

    def start_system_metrics(self) -> None:
        """Sample `sys/...` into this run from a background thread until finish()
        (workbench/sysmetrics.py); at most one sampler per run, none when sampling is off
        or the run is disabled. `init()` calls it for a run it creates."""
        from workbench.sysmetrics import start_sampler  # psutil only when a run samples

        if self._sampler is None:
            self._sampler = start_sampler(self)

    def finish(self, status: str = "finished", exit_code: int | None = None) -> None:
        """Flush and stop the writer. An owning run records its final status."""
        if self._finished:
            return
        self._finished = True
        if self._sampler is not None:  # first: its last sample still goes in
            self._sampler.stop()
        self._closing = True
        self._wake.set()
        if not self.disabled:
            self._thread.join(timeout=120)
        try:
            if self.owner and not self.disabled:
                self._store.update_run(self.id, status=status, ended=time.time(),
                                       exit_code=exit_code, heartbeat=time.time())
        finally:
            if self._own_store:
                self._store.close()
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

    def _refuse(self) -> None:
        raise RuntimeError(f"run {self.id} is finished; start another with workbench.init()")

    def _at(self, step: int | None) -> int:
        """Step for records other than log(): the given one, or the current step."""
        if step is None:
            return max(self._step, 0)
        step = _step_of(step)
        self._step = max(self._step, step)
        return step

    def _nonfinite(self, key: str, v: float, step: int, wall: float) -> None:
        """Keep the point (value NULL for NaN, inf as is), flag it, and say so once per key."""
        flag = flag_of(v)
        self._scalars.append((step, key, None if flag == NAN else v, wall, flag))
        if key not in self._nonfinite_keys:
            self._nonfinite_keys.add(key)
            label = "nan" if flag == NAN else ("inf" if flag == POS_INF else "-inf")
            self._events.append((step, "nan", "warning",
                                 json.dumps({"key": key, "value": label}), wall))
            self._enqueued += 1

    def _backpressure(self) -> None:
        """Wait until the writer has committed half of what is pending.

        Only a producer far faster than the disk gets here (about a million rows
        ahead). Without it, memory grows without bound until the OOM killer ends
        the training process, and in the same process a Python loop that never
        waits starves the writer thread of the GIL. A writer that is failing
        (disk full, store locked beyond its timeout) does not block the caller:
        its rows stay in memory, as before.
        """
        low = self._max_pending // 2
        self._wake.set()
        with self._flushed:
            while (self._enqueued - self.flushed_rows - self.dropped_rows > low
                   and self._thread.is_alive()
                   and not self._error_reported and not self._closing):
                self._wake.set()
                self._flushed.wait(0.5)

    def _take(self) -> tuple[Batch, int | None]:
        with self._lock:
            batch = Batch(self.id, self._scalars, self._dists, self._matrices, self._events)
            self._scalars, self._dists, self._matrices, self._events = [], [], [], []
            step = self._step if self._step >= 0 else None
        return batch, step

    def _loop(self) -> None:
        try:
            store = Store(self.root)
        except StoreError as exc:
            self._report(exc)
            with self._flushed:
                self._flushed.notify_all()
            return
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
                beat = self._beats and time.monotonic() - last_beat > HEARTBEAT_S
                while pending or beat:
                    b = pending[0] if pending else Batch(self.id)
                    done, dropped = len(b), 0
                    try:
                        store.write_batch(b, last_step=step, heartbeat=beat)
                        self._error_reported = False  # recovered: report the next failure
                    except sqlite3.OperationalError as exc:  # locked too long, disk full: retry
                        self._report(exc)
                        if not closing:
                            time.sleep(1.0)
                        break
                    except Exception as exc:
                        # A row SQLite refuses, or the run was deleted: retrying cannot help,
                        # and keeping the batch would hold back every later row.
                        self._report_drop(exc, len(b))
                        done, dropped = 0, len(b)
                    if pending:
                        pending.pop(0)
                    if beat:
                        last_beat = time.monotonic()
                        beat = False
                    with self._flushed:
                        self.flushed_rows += done
                        self.dropped_rows += dropped
                        self._flushed.notify_all()
                if closing and not pending:
                    return
                if closing and self._error_reported:
                    lost = sum(len(b) for b in pending)
                    print(f"workbench: {lost} rows of run {self.id} could not be written "
                          "before exit", file=sys.stderr)
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

    def _report_drop(self, exc: Exception, rows: int) -> None:
        if not self._drop_reported:
            self._drop_reported = True
            print(f"workbench: dropped {rows} rows of run {self.id}: {exc}", file=sys.stderr)


def _step_of(step: Any) -> int:
    """Steps are integers; numpy and torch integers become Python ints (sqlite3 would
    store a numpy int64 as an 8-byte BLOB)."""
    try:
        return operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer, not {type(step).__name__} ({step!r})") from None


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__} ({name!r})")


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def init(name: str | None = None, config: Mapping[str, Any] | None = None,
         kind: str = "custom", store: str | os.PathLike[str] | None = None,
         disabled: bool = False, system_metrics: bool = True) -> Run:
    """Start (or, inside a launched worker, attach to) a run and return its `Run`.

    Outside the workbench this creates a run with launcher "sdk" that shows in
    `wb ls` and the dashboard like a launched one; its status follows the
    process (finished on exit, failed on an uncaught exception, lost on kill).

    In a script run under torchrun every rank attaches and may log (e.g. per-rank
    throughput); log from rank 0 alone where one copy is wanted, or pass
    `disabled=True` on the other ranks.

    A run it creates gets `sys/...` system metrics (CPU, memory, GPUs) every few
    seconds from a background thread (workbench/sysmetrics.py; `system_metrics=False`
    or WB_SYSTEM_METRICS=0 turns that off). Attaching samples nothing: the launched
    run's worker does.
    """
    run_id = os.environ.get("WB_RUN_ID")
    st = Store(store or os.environ.get("WB_STORE"))
    try:
        if run_id:
            run = Run(st, st.get_run(run_id), owner=False, own_store=True, disabled=disabled)
            if config:  # the launched spec's values win over the script's defaults
                run.update_config(config, keep_existing=True)
        elif disabled:  # nothing to attach to, and nothing to create
            row = RunRecord(id="disabled", num=0, name=name or "disabled", kind=kind,
                            status="running", host="", launcher="sdk", created=time.time(),
                            dir="", config=dict(config or {}))
            run = Run(st, row, owner=False, own_store=True, disabled=True)
        else:
            row = st.create_run(kind=kind, name=name, status="running", launcher="sdk",
                                config=dict(config or {}), pid=os.getpid())
            run = Run(st, row, owner=True, own_store=True)
            if system_metrics:  # the owner samples
                run.start_system_metrics()
    except BaseException:
        st.close()
        raise
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
        try:  # one run's failure must not keep the others from recording their status
            run.finish(_exit_status)
        except Exception as exc:
            print(f"workbench: could not finish run {run.id}: {exc}", file=sys.stderr)

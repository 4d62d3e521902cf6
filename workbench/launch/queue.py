"""Queued runs of a group: a worker waits for the run it is chained after.

`wb launch A B C --parallel N` chains run i after run i-N (N lanes), so at most N
of the group train at once: three CPU trainings side by side on two cores are each
about ten times slower, and their tokens/s would not be comparable. The waiting
happens in the run's own worker, not in `wb launch`, so a detached group keeps
going after the terminal closes, and `wb stop`, `wb ls` and the lost check treat
a waiting run like any other live worker (it has a pid; it is `queued`).
"""

from __future__ import annotations

import threading
import time

from workbench.store import HEARTBEAT_S, Store, StoreError

POLL_S = 0.5
# A predecessor still queued with no pid this long after creation never got a worker
# (its launcher died in between): it would block the chain for ever.
ORPHAN_S = 60.0


def wait_turn(store: Store, run_id: str, stop: threading.Event,
              poll_s: float = POLL_S) -> bool:
    """Block while the run this one is chained after is still queued or running.

    Returns True when this run may start. Returns False when it must not: `wb stop`
    (SIGTERM, which sets `stop`) arrived while it waited, recorded here as `stopped`
    without running anything; or its stored status was already settled by someone
    else. Whatever way the predecessor ended (failed, stopped, lost, deleted), this
    run still starts: a group is a comparison, one bad run must not void the rest.
    """
    row = store.get_run(run_id)
    after = row.after
    if not after:
        return True
    announced = False
    next_beat = 0.0
    while not stop.is_set():
        if store.stored_status(run_id) != "queued":  # e.g. recorded lost by `wb stop`
            return False
        if not _blocks(store, after):
            return True
        now = time.time()
        if not announced:
            print(f"workbench: run {run_id} queued after run {after}", flush=True)
            announced = True
        if now >= next_beat:  # the status shows it alive; the heartbeat too
            store.update_run(run_id, heartbeat=now)
            next_beat = now + HEARTBEAT_S
        stop.wait(poll_s)
    store.update_run(run_id, status="stopped", ended=time.time(), exit_code=0,
                     heartbeat=time.time())
    print(f"workbench: run {run_id} stopped while queued; it never started", flush=True)
    return False


def _blocks(store: Store, run_id: str) -> bool:
    """True while `run_id`, or the run it stands in for, is active.

    A predecessor that ended without ever starting (stopped or lost while queued)
    passes its place in the lane on: the wait moves to the run *it* waited for, or
    stopping a queued run would let its successor start beside a running one.
    Statuses are read-time, so a dead worker reads `lost`.
    """
    for _ in range(10_000):  # bounded: a chain is as long as a group, and has no cycle
        try:
            pred = store.get_run(run_id)
        except StoreError:  # deleted (`wb rm`)
            return False
        orphan = (pred.status == "queued" and not pred.pid
                  and time.time() - pred.created > ORPHAN_S)
        if pred.is_active and not orphan:
            return True
        if pred.started or not pred.after:
            return False
        run_id = pred.after
    return False

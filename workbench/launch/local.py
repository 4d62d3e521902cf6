"""The local backend's work: start, stop and resume runs as detached worker processes on
this machine (launch/backends.py picks it; workbench/procs.py judges the processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.procs import is_worker_of, kill_tree, pid_alive
from workbench.run_record import RunRecord
from workbench.spec import LoadedSpec, dump_toml, parse_spec
from workbench.store import ACTIVE_STATUSES, Store, StoreError


@dataclass(frozen=True)
class Launched:
    """A run just started: its record, and the process this call started for it (the
    local worker, or the mirror of a remote run), for a foreground caller to reap."""

    record: RunRecord
    process: subprocess.Popen[bytes] | None = None


def start(store: Store, loaded: LoadedSpec, *, name: str | None = None,
          resumed_from: str | None = None, group: str | None = None,
          after: str | None = None, node_rank: int = 0,
          master: str | None = None) -> Launched:
    """Create the run (queued), write its spec, and start its worker in a new session.

    With `after`, the worker stays queued until that run has ended (launch/queue.py).
    `node_rank` / `master` ("HOST" or "HOST:PORT", node 0's address): this run is that
    node of a `resources.nodes > 1` run; passed to the worker as WB_NODE_RANK,
    WB_MASTER_ADDR, WB_MASTER_PORT (launch/distributed.py node_settings). Always set
    here, so a value inherited from our own environment never leaks into the worker.
    """
    node_env: dict[str, str] = {}  # parsed before the run exists: a typo creates nothing
    if master:
        host, sep, port = master.rpartition(":")
        if sep and (":" not in host or host.startswith("[")):  # HOST:PORT or [IPV6]:PORT
            if not port.isdigit():
                raise StoreError(f"master {master!r}: the port must be a number (HOST:PORT)")
            node_env = {"WB_MASTER_ADDR": host.strip("[]"), "WB_MASTER_PORT": port}
        else:  # HOST alone (or a bare IPv6 address): the spec's resources.rdzv_port
            node_env = {"WB_MASTER_ADDR": master.strip("[]")}
    spec = loaded.spec.for_launch()
    row = store.create_run(
        kind=spec.kind, name=name or spec.name, base=loaded.default_name, status="queued",
        launcher="local", spec=dump_toml(spec), config=spec.run_config(),
        resumed_from=resumed_from,
        total_steps=getattr(spec, "total_steps", None), group=group, after=after,
    )
    run_dir = store.run_dir(row.id)
    write_private(run_dir / "spec.toml", row.spec or "")
    env = {**os.environ, "WB_STORE": str(store.root.resolve()), "WB_RUN_ID": row.id,
           "PYTHONUNBUFFERED": "1", "WB_NODE_RANK": str(node_rank)}
    env.pop("WB_MASTER_ADDR", None)
    env.pop("WB_MASTER_PORT", None)
    env.update(node_env)
    fd = os.open(run_dir / "stdout.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.launch.worker", row.id],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, close_fds=True,
        )
    store.update_run(row.id, pid=proc.pid)
    return Launched(store.get_run(row.id), proc)


def write_private(path: Path, text: str) -> None:
    """Write a store file readable by its owner only (specs may hold paths and tokens)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def start_group(store: Store, specs: list[LoadedSpec], *, group: str, parallel: int = 1,
                names: list[str | None] | None = None) -> list[Launched]:
    """Start every spec of a group; run i is chained after run i - `parallel`.

    Every worker starts at once, but a chained one waits (queued) for its predecessor,
    so at most `parallel` runs train at a time, in launch order per lane. Lanes are
    fixed, not a shared pool: simple to reason about, and with equal-sized specs (the
    usual comparison) just as fast.
    """
    names = names or [None] * len(specs)
    started: list[Launched] = []
    for i, (loaded, name) in enumerate(zip(specs, names, strict=True)):
        after = started[i - parallel].record.id if i >= parallel else None
        started.append(start(store, loaded, name=name, group=group, after=after))
    return started


def stop(store: Store, row: RunRecord, grace: float = 10.0, *, own_worker: bool = True) -> str:
    """SIGTERM the worker (it checkpoints and exits), SIGKILL its group after `grace` s.

    `own_worker`: the pid is a worker `wb launch` started, so a pid now running
    something else was reused and is not signalled. False for a script's own process
    (an SDK run), which has no worker command line to check.
    """
    stored = store.stored_status(row.id)  # row.status may read `lost`
    if stored not in ACTIVE_STATUSES:
        return f"run {row.id} is already {stored}"
    pid = row.pid
    if not pid or not pid_alive(pid) or (own_worker and not is_worker_of(pid, row.id)):
        store.update_run(row.id, status="lost", ended=time.time())
        return f"run {row.id} had no live process; recorded as lost"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        kill_tree(pid)
        store.update_run(row.id, status="stopped", ended=time.time(), exit_code=-9)
        return f"run {row.id} did not exit within {grace:g}s; killed"
    if store.stored_status(row.id) in ACTIVE_STATUSES:  # died without recording
        store.update_run(row.id, status="stopped", ended=time.time())
    return f"run {row.id} stopped"


def resume(store: Store, row: RunRecord, *, name: str | None = None) -> Launched:
    """Start a new run from the same spec; its worker resumes from the old run's folder."""
    if row.is_active:
        raise StoreError(f"run {row.id} is still {row.status}; stop it first "
                         f"(wb stop {row.id})")
    if not row.spec:
        raise StoreError(f"run {row.id} was not launched from a spec; only launched runs "
                         "can be resumed")
    spec = parse_spec(row.spec, label=f"run {row.id} spec")
    # The new run stays in the old one's group: it continues that comparison.
    return start(store, LoadedSpec(spec, f"run:{row.id}"), name=name or row.name,
                 resumed_from=row.id, group=row.group)

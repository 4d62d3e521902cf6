"""The local launcher: start, stop and resume runs as detached processes on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from workbench.spec import LoadedSpec, dump_toml, parse_spec
from workbench.store import ACTIVE_STATUSES, Store, StoreError, pid_alive


def start(store: Store, loaded: LoadedSpec, *, name: str | None = None,
          resumed_from: str | None = None, group: str | None = None,
          after: str | None = None, node_rank: int = 0,
          master: str | None = None) -> dict[str, Any]:
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
    run_dir = store.run_dir(row["id"])
    write_private(run_dir / "spec.toml", row["spec"])
    env = {**os.environ, "WB_STORE": str(store.root.resolve()), "WB_RUN_ID": row["id"],
           "PYTHONUNBUFFERED": "1", "WB_NODE_RANK": str(node_rank)}
    env.pop("WB_MASTER_ADDR", None)
    env.pop("WB_MASTER_PORT", None)
    env.update(node_env)
    fd = os.open(run_dir / "stdout.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.launch.worker", row["id"]],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, close_fds=True,
        )
    store.update_run(row["id"], pid=proc.pid)
    row["pid"] = proc.pid
    row["_process"] = proc  # lets a foreground caller reap it
    return row


def write_private(path: Path, text: str) -> None:
    """Write a store file readable by its owner only (specs may hold paths and tokens)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def start_group(store: Store, specs: list[LoadedSpec], *, group: str, parallel: int = 1,
                names: list[str | None] | None = None) -> list[dict[str, Any]]:
    """Start every spec of a group; run i is chained after run i - `parallel`.

    Every worker starts at once, but a chained one waits (queued) for its predecessor,
    so at most `parallel` runs train at a time, in launch order per lane. Lanes are
    fixed, not a shared pool: simple to reason about, and with equal-sized specs (the
    usual comparison) just as fast.
    """
    names = names or [None] * len(specs)
    rows: list[dict[str, Any]] = []
    for i, (loaded, name) in enumerate(zip(specs, names, strict=True)):
        after = rows[i - parallel]["id"] if i >= parallel else None
        rows.append(start(store, loaded, name=name, group=group, after=after))
    return rows


def stop(store: Store, row: dict[str, Any], grace: float = 10.0) -> str:
    """SIGTERM the worker (it checkpoints and exits), SIGKILL its group after `grace` s."""
    stored = store.stored_status(row["id"])  # row["status"] may read `lost`
    if stored not in ACTIVE_STATUSES:
        return f"run {row['id']} is already {stored}"
    pid = row["pid"]
    if not pid_alive(pid) or not _is_worker_of(pid, row):
        store.update_run(row["id"], status="lost", ended=time.time())
        return f"run {row['id']} had no live process; recorded as lost"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        kill_tree(pid)
        store.update_run(row["id"], status="stopped", ended=time.time(), exit_code=-9)
        return f"run {row['id']} did not exit within {grace:g}s; killed"
    if store.stored_status(row["id"]) in ACTIVE_STATUSES:  # died without recording
        store.update_run(row["id"], status="stopped", ended=time.time())
    return f"run {row['id']} stopped"


def _is_worker_of(pid: int, row: dict[str, Any]) -> bool:
    """False when a local run's pid now belongs to another process (the pid was reused,
    e.g. after a reboot): never signal a stranger. True where it cannot be told."""
    if row.get("launcher") != "local":
        return True
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return b"workbench.launch.worker" in argv and row["id"].encode() in argv


def kill_tree(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL the worker's process group and every descendant of the worker.

    The group alone is not enough: torchrun starts each rank in a session of its
    own, so ranks are found through the process tree (read before anything dies,
    since orphans are re-parented).
    """
    tree = descendants(pid)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in tree:
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in (pid, *tree)):
        time.sleep(0.05)


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids of every live process (from /proc; {} where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Pids of every live descendant of `pid` (from /proc; [] where there is none)."""
    children = children_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def resume(store: Store, row: dict[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """Start a new run from the same spec; its worker resumes from the old run's folder."""
    if row["status"] in ACTIVE_STATUSES:
        raise StoreError(f"run {row['id']} is still {row['status']}; stop it first "
                         f"(wb stop {row['id']})")
    if not row["spec"]:
        raise StoreError(f"run {row['id']} was not launched from a spec (launcher "
                         f"{row['launcher']}); only launched runs can be resumed")
    spec = parse_spec(row["spec"], label=f"run {row['id']} spec")
    # The new run stays in the old one's group: it continues that comparison.
    return start(store, LoadedSpec(spec, f"run:{row['id']}"), name=name or row["name"],
                 resumed_from=row["id"], group=row.get("grp"))

"""The local launcher: start, stop and resume runs as detached processes on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from workbench.spec import LoadedSpec, parse_spec
from workbench.store import ACTIVE_STATUSES, Store, StoreError, pid_alive


def start(store: Store, loaded: LoadedSpec, *, name: str | None = None,
          resumed_from: str | None = None) -> dict[str, Any]:
    """Create the run (queued), write its spec, and start its worker in a new session."""
    spec = loaded.spec
    row = store.create_run(
        kind=spec.kind, name=name or spec.name, base=loaded.default_name, status="queued",
        launcher="local", spec=loaded.to_toml(), config=spec.run_config(),
        resumed_from=resumed_from,
        total_steps=getattr(spec, "total_steps", None),
    )
    run_dir = store.run_dir(row["id"])
    (run_dir / "spec.toml").write_text(row["spec"])
    env = {**os.environ, "WB_STORE": str(store.root.resolve()), "WB_RUN_ID": row["id"],
           "PYTHONUNBUFFERED": "1"}
    with open(run_dir / "stdout.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.launch.worker", row["id"]],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, close_fds=True,
        )
    store.update_run(row["id"], pid=proc.pid)
    row["pid"] = proc.pid
    row["_process"] = proc  # lets a foreground caller reap it
    return row


def stop(store: Store, row: dict[str, Any], grace: float = 10.0) -> str:
    """SIGTERM the worker (it checkpoints and exits), SIGKILL its group after `grace` s."""
    if row["status"] not in ACTIVE_STATUSES:
        return f"run {row['id']} is already {row['status']}"
    pid = row["pid"]
    if not pid_alive(pid):
        store.update_run(row["id"], status="stopped", ended=time.time())
        return f"run {row['id']} had no live process; marked stopped"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        store.update_run(row["id"], status="stopped", ended=time.time(), exit_code=-9)
        return f"run {row['id']} did not exit within {grace:g}s; killed"
    if store.get_run(row["id"])["status"] in ACTIVE_STATUSES:  # died without recording
        store.update_run(row["id"], status="stopped", ended=time.time())
    return f"run {row['id']} stopped"


def resume(store: Store, row: dict[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """Start a new run from the same spec; its worker resumes from the old run's folder."""
    if row["status"] in ACTIVE_STATUSES:
        raise StoreError(f"run {row['id']} is still {row['status']}; stop it first "
                         f"(wb stop {row['id']})")
    if not row["spec"]:
        raise StoreError(f"run {row['id']} was not launched from a spec (launcher "
                         f"{row['launcher']}); only launched runs can be resumed")
    spec = parse_spec(row["spec"], label=f"run {row['id']} spec")
    return start(store, LoadedSpec(spec, f"run:{row['id']}"), name=name or row["name"],
                 resumed_from=row["id"])

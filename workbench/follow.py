"""Foreground view of a launched run: live progress, its output, and its events (Rich)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from workbench.render import duration, eta, event_line, fmt_value, key_metric
from workbench.store import ACTIVE_STATUSES, Store

POLL_S = 0.25


def follow_run(st: Store, row: dict[str, Any], console: Console) -> str:
    """Follow a run until it ends; returns its final status.

    Ctrl-C once stops the run (SIGTERM, so it checkpoints); twice detaches.
    """
    run_id = row["id"]
    proc = row.get("_process")
    console.print(f"[bold]{row['name']}[/] ({run_id}) started; "
                  f"output in {st.run_dir(run_id) / 'stdout.log'}")
    metric = key_metric(row["kind"])
    log_path = st.run_dir(run_id) / "stdout.log"
    offset, cursor, interrupts = 0, 0, 0
    current = row  # a Ctrl-C before the first poll still finds the pid
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.fields[step]}"), TextColumn("{task.fields[metric]}"),
                        TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
                        console=console, transient=True)
    task = progress.add_task(row["name"], total=row.get("total_steps"), step="", metric="",
                             eta="-")
    with progress:
        while True:
            try:
                current = st.get_run(run_id)
                offset = _tail(log_path, offset, progress.console)
                for e in st.events(run_id, since=cursor):
                    cursor = e["id"]
                    if e["kind"] != "stage":
                        progress.console.print(event_line(e), highlight=False)
                latest = st.latest_value(run_id, metric)
                step = current["last_step"]
                progress.update(task, completed=step or 0, total=current.get("total_steps"),
                                step=f"step {step if step is not None else '-'}",
                                metric=f"{metric} {fmt_value(latest[1])}" if latest else "",
                                eta=duration(eta(current)))
                if current["status"] not in ACTIVE_STATUSES:  # a dead worker reads `lost`
                    break
                time.sleep(POLL_S)
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts > 1:
                    progress.console.print(f"detached; the run goes on. Stop it with: "
                                           f"wb stop {run_id}")
                    return "detached"
                progress.console.print("stopping (the run checkpoints); Ctrl-C again to detach")
                if current.get("pid"):
                    try:
                        os.kill(current["pid"], signal.SIGTERM)
                    except ProcessLookupError:
                        pass
    if proc is not None:
        proc.wait(timeout=30)  # reap the worker we started
    offset = _tail(log_path, offset, console)
    final = st.get_run(run_id)
    style = {"finished": "green", "failed": "red"}.get(final["status"], "yellow")
    console.print(f"[{style}]{final['status']}[/] {row['name']} ({run_id}) at step "
                  f"{final['last_step'] if final['last_step'] is not None else '-'}; "
                  f"see wb show {run_id}")
    return final["status"]


def _tail(path: os.PathLike[str], offset: int, console: Console) -> int:
    """Print what the run wrote since `offset`; returns the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1  # only whole lines
    if end:
        console.out(data[:end].decode(errors="replace").rstrip("\n"), highlight=False)
    return offset + end

"""Foreground view of a launched run (live progress, its output, its events) or of a
group of runs (a bar per run) (Rich)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from workbench.render import duration, eta, event_line, fmt_value, key_metric
from workbench.run_record import RunRecord
from workbench.store import Store

if TYPE_CHECKING:
    from workbench.launch.local import Launched

POLL_S = 0.25


def follow_run(st: Store, launched: Launched, console: Console,
               stop: Callable[[RunRecord], Any] | None = None) -> str:
    """Follow a run until it ends; returns its final status.

    Ctrl-C once stops the run (SIGTERM, so it checkpoints; or `stop(row)`, which a
    remote run needs); twice detaches. A remote run is followed through its mirror,
    which copies its output too.
    """
    row, proc = launched.record, launched.process
    run_id = row.id
    where = f" on host {row.host}" if row.is_remote else ""
    console.print(f"[bold]{row.name}[/] ({run_id}) started{where}; output in "
                  f"{st.run_dir(run_id) / 'stdout.log'}")
    metric = key_metric(row.kind)
    log_path = st.run_dir(run_id) / "stdout.log"
    offset, cursor, interrupts = 0, 0, 0
    current = row  # a Ctrl-C before the first poll still finds the pid
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.fields[step]}"), TextColumn("{task.fields[metric]}"),
                        TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
                        console=console, transient=True)
    task = progress.add_task(row.name, total=row.total_steps, step="", metric="", eta="-")
    with progress:
        while True:
            try:
                current = st.get_run(run_id)
                offset = _tail(log_path, offset, progress.console)
                for e in st.events(run_id, since=cursor):
                    cursor = e.id
                    if e.kind != "stage":
                        progress.console.print(event_line(e), highlight=False)
                latest = st.latest_value(run_id, metric)
                step = current.last_step
                progress.update(task, completed=step or 0, total=current.total_steps,
                                step=f"step {step if step is not None else '-'}",
                                metric=f"{metric} {fmt_value(latest[1])}" if latest else "",
                                eta=duration(eta(current)))
                if not current.is_active:  # a dead worker reads `lost`
                    break
                time.sleep(POLL_S)
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts > 1:
                    progress.console.print(f"detached; the run goes on. Stop it with: "
                                           f"wb stop {run_id}")
                    return "detached"
                progress.console.print("stopping (the run checkpoints); Ctrl-C again to detach")
                if stop is not None:
                    try:
                        progress.console.print(stop(current))
                    except Exception as exc:  # noqa: BLE001 - say it, keep following
                        progress.console.print(f"could not stop: {exc}")
                elif current.pid:
                    try:
                        os.kill(current.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
    if proc is not None:
        proc.wait(timeout=30)  # reap the worker (or mirror) we started
    offset = _tail(log_path, offset, console)
    final = st.get_run(run_id)
    style = {"finished": "green", "failed": "red"}.get(final.status, "yellow")
    console.print(f"[{style}]{final.status}[/] {row.name} ({run_id}) at step "
                  f"{final.last_step if final.last_step is not None else '-'}; "
                  f"see wb show {run_id}")
    return final.status


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



@dataclass
class _Member:
    """What the group view tracks of one run."""

    launched: Launched  # the record as launched, and the worker's Popen
    task: TaskID
    current: RunRecord  # as last read
    cursor: int = 0  # last event id shown
    started: bool = False
    final: str | None = None  # the status it ended with


def follow_group(st: Store, runs: list[Launched], console: Console,
                 group: str) -> dict[str, str]:
    """Follow a group's runs in one display, a bar per run, until all have ended.

    Several logs interleaved would be unreadable, so unlike `follow_run` this shows
    each run's progress and events, not its output; a run that fails gets the tail of
    its log. It ends with the `wb compare` table. Ctrl-C once stops every run of the
    group (queued ones first, so none starts in between); twice detaches. Returns
    run id -> final status ("detached" for those still going after a detach).
    """
    console.print(f"group [bold]{group}[/]: {len(runs)} runs; outputs in "
                  f"{st.root}/RUN/stdout.log; compare with: wb compare {group}")
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                        TextColumn("{task.fields[status]}"), BarColumn(),
                        TextColumn("{task.fields[step]}"), TextColumn("{task.fields[metric]}"),
                        TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
                        console=console, transient=True)
    members = [_Member(r, progress.add_task(r.record.name, total=r.record.total_steps,
                                            start=False, status="queued", step="", metric="",
                                            eta="-"), r.record)
               for r in runs]
    interrupts = 0
    with progress:
        while any(m.final is None for m in members):
            try:
                for m in members:
                    if m.final is None:
                        _poll_member(st, m, progress)
                if any(m.final is None for m in members):
                    time.sleep(POLL_S)
            except KeyboardInterrupt:
                interrupts += 1
                live = [m for m in members if m.final is None]
                if interrupts > 1:
                    progress.console.print("detached; the runs go on. Stop them with: wb stop "
                                           + " ".join(m.current.id for m in live))
                    return {m.current.id: m.final or "detached" for m in members}
                progress.console.print("stopping the group (running runs checkpoint, queued "
                                       "runs never start); Ctrl-C again to detach")
                # Queued first: a queued run whose predecessor stops must not start.
                for m in sorted(live, key=lambda m: m.current.status != "queued"):
                    if m.current.pid:
                        try:
                            os.kill(m.current.pid, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
    for m in members:
        if m.launched.process is not None:
            m.launched.process.wait(timeout=30)  # reap the workers we started
    from workbench.render import compare_rows, compare_table

    console.print(compare_table(compare_rows(st, [st.get_run(m.current.id) for m in members])))
    return {m.current.id: m.final or "detached" for m in members}


def _poll_member(st: Store, m: _Member, progress: Progress) -> None:
    """One poll of one run of a followed group: its bar, new events, and its ending."""
    run_id, name = m.current.id, m.current.name
    cur = m.current = st.get_run(run_id)
    for e in st.events(run_id, since=m.cursor):
        m.cursor = e.id
        if e.kind != "stage":
            progress.console.print(Text(f"{name}: ").append_text(event_line(e)),
                                   highlight=False)
    if cur.status == "running" and not m.started:
        m.started = True
        progress.start_task(m.task)  # the elapsed time counts from here, not while queued
        progress.console.print(f"[bold]{name}[/] ({run_id}) started")
    metric = key_metric(cur.kind)
    latest = st.latest_value(run_id, metric)
    step = cur.last_step
    progress.update(m.task, completed=step or 0, total=cur.total_steps,
                    status=cur.status, step=f"step {step if step is not None else '-'}",
                    metric=f"{metric} {fmt_value(latest[1])}" if latest else "",
                    eta=duration(eta(cur)))
    if cur.is_active:
        return
    m.final = cur.status
    style = {"finished": "green", "failed": "red", "lost": "red"}.get(cur.status, "yellow")
    progress.console.print(f"[{style}]{cur.status}[/] {name} ({run_id}) at step "
                           f"{step if step is not None else '-'}; see wb show {run_id}")
    if cur.status in ("failed", "lost"):
        tail = _last_lines(st.run_dir(run_id) / "stdout.log", 10)
        if tail:
            progress.console.out(tail, highlight=False)


def _last_lines(path: os.PathLike[str], n: int) -> str:
    """The last `n` lines of a log (read from its end: logs can be large)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-n:])

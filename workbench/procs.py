"""Liveness and process trees: is a pid alive, what are its descendants, kill them all.

One module for the store's read-time `lost` judgement, the launch backends' stop and
the distributed launcher's rank watch (docs/ARCHITECTURE.md, "Processes"). Reads
/proc; imports nothing from the workbench.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def pid_alive(pid: int | None) -> bool:
    """True if a process with this pid exists on this host and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def is_worker_of(pid: int, run_id: str) -> bool:
    """False when a worker's pid now belongs to another process (the pid was reused,
    e.g. after a reboot): never signal a stranger. True where it cannot be told."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return b"workbench.launch.worker" in argv and run_id.encode() in argv


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

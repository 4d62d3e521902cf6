"""RunRecord: one run as the store returns it, typed, with its config parsed once.

The `runs` table's rows are dicts only inside `store.py`; everything else reads these
attributes (docs/ARCHITECTURE.md, "The store"). The JSON that `wb ls --json` and
`wb show --json` print keeps the table's column names: `to_dict()`.

This module imports nothing from the workbench, so any layer may use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

ACTIVE_STATUSES = ("queued", "running")
# `launcher` values of runs that another host executes and a mirror copies here.
REMOTE_LAUNCHERS = ("ssh",)
# `launcher` of a host's `wb selftest` answer, copied here by selftest/remote.py.
HOST_ANSWER_LAUNCHER = "ssh-selftest"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's row. `status` is the read-time status: an active run whose process is gone
    reads `lost` (the store judges it; `stored_status` is what was written)."""

    id: str
    num: int
    name: str
    kind: str
    status: str
    host: str
    launcher: str
    created: float
    dir: str
    config: Mapping[str, Any] = field(default_factory=dict)
    spec: str | None = None  # the spec's TOML text
    pid: int | None = None
    started: float | None = None
    ended: float | None = None
    heartbeat: float | None = None
    exit_code: int | None = None
    resumed_from: str | None = None
    last_step: int | None = None
    total_steps: int | None = None
    group: str | None = None
    after: str | None = None  # the run a queued group member waits for
    stored_status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row under the table's column names, config as JSON text: the shape the
        JSON outputs have always printed."""
        return {
            "id": self.id, "num": self.num, "name": self.name, "kind": self.kind,
            "status": self.status, "host": self.host, "pid": self.pid,
            "launcher": self.launcher, "spec": self.spec,
            "config": json.dumps(dict(self.config), default=str), "created": self.created,
            "started": self.started, "ended": self.ended, "heartbeat": self.heartbeat,
            "exit_code": self.exit_code, "resumed_from": self.resumed_from,
            "last_step": self.last_step, "total_steps": self.total_steps, "dir": self.dir,
            "grp": self.group, "after": self.after,
        }

    def with_status(self, status: str) -> RunRecord:
        return replace(self, status=status)

    @property
    def is_remote(self) -> bool:
        """Executed on another host; this store holds its mirror."""
        return self.launcher in REMOTE_LAUNCHERS

    @property
    def ran_elsewhere(self) -> bool:
        """Ran on its configured host, not here: a mirrored run or a host's copied
        selftest answer. Every other launcher (local, sdk, torchrun, selftest) ran here."""
        return self.is_remote or self.launcher == HOST_ANSWER_LAUNCHER

    @property
    def is_active(self) -> bool:
        """Queued or running (as judged at read time)."""
        return self.status in ACTIVE_STATUSES

    @property
    def node_runs(self) -> list[dict[str, Any]]:
        """The per-node runs of a multi-node launch, `{node, host, run}` each, recorded
        on node 0's run (launch/nodes.py); empty for a one-node run."""
        return list(self.config.get("node_runs") or [])

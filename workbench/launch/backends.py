"""Launch backends: where a run's process lives decides how it starts, stops and resumes.

- `Local`: a detached worker on this machine (launch/local.py); also a run whose
  process is a user's own script (SDK, selftest), which `wb stop` signals directly.
- `Ssh`: a run on a configured host, mirrored into the local store (launch/ssh.py).
- `MultiNode`: a run of `resources.nodes > 1`, one worker per node (launch/nodes.py);
  node 0's record speaks for the run.

`backend_for(record)` is the only code that reads a run's `launcher`;
`backend_for_spec(loaded)` picks where a new spec runs. The CLI and the dashboard go
through these two (docs/ARCHITECTURE.md, "Launch backends").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from workbench.hosts import LOCAL, get_host
from workbench.launch import local, nodes, ssh
from workbench.launch.local import Launched
from workbench.run_record import RunRecord
from workbench.spec import LoadedSpec
from workbench.store import Store, StoreError

__all__ = ["Backend", "Launched", "Local", "MultiNode", "Ssh", "backend_for",
           "backend_for_spec", "host_of", "start"]


class Backend(Protocol):
    def start(self, store: Store, loaded: LoadedSpec, *, name: str | None = None,
              group: str | None = None) -> Launched:
        """Launch a spec; the new run's record and the process started for it."""
        ...

    def stop(self, store: Store, record: RunRecord, grace: float = 10.0) -> str:
        """Stop the run (checkpoint, then exit; killed after `grace` s); one line saying
        what happened."""
        ...

    def resume(self, store: Store, record: RunRecord) -> Launched:
        """Start a new run from the ended run's spec, resuming from its checkpoint."""
        ...

    def status(self, store: Store, record: RunRecord) -> str:
        """The run's status now, judged where its process lives."""
        ...


@dataclass(frozen=True)
class Local:
    """This machine. `own_worker`: the pid is a worker `wb launch` started (a reused pid
    is then recognised and never signalled); False for a script's own process."""

    own_worker: bool = True
    node_rank: int = 0
    master: str | None = None  # node 0's address, for node N > 0 of a multi-node run

    def start(self, store: Store, loaded: LoadedSpec, *, name: str | None = None,
              group: str | None = None) -> Launched:
        return local.start(store, loaded, name=name, group=group, node_rank=self.node_rank,
                           master=self.master)

    def stop(self, store: Store, record: RunRecord, grace: float = 10.0) -> str:
        return local.stop(store, record, grace, own_worker=self.own_worker)

    def resume(self, store: Store, record: RunRecord) -> Launched:
        return local.resume(store, record)

    def status(self, store: Store, record: RunRecord) -> str:
        return store.judged(record).status


@dataclass(frozen=True)
class Ssh:
    """A configured host, by name (resolved when used: a host removed from the config
    fails the action that needs it, with the host's name, not the listing)."""

    host: str
    node_rank: int = 0
    master: str | None = None

    def start(self, store: Store, loaded: LoadedSpec, *, name: str | None = None,
              group: str | None = None) -> Launched:
        return ssh.start(store, loaded, get_host(self.host), name=name, group=group,
                         node_rank=self.node_rank, master=self.master)

    def stop(self, store: Store, record: RunRecord, grace: float = 10.0) -> str:
        return ssh.stop(store, record, grace=grace)

    def resume(self, store: Store, record: RunRecord) -> Launched:
        return ssh.resume(store, record)

    def status(self, store: Store, record: RunRecord) -> str:
        # The mirror copies the host's own judgement into the record.
        return store.get_run(record.id).status


@dataclass(frozen=True)
class MultiNode:
    """Every node of a `resources.nodes > 1` run. `node0` is the backend of node 0's
    record, which stops the run: every rank stops at the same step."""

    node0: Local | Ssh = Local()

    def start(self, store: Store, loaded: LoadedSpec, *, name: str | None = None,
              group: str | None = None) -> Launched:
        return nodes.start(store, loaded, name=name)

    def stop(self, store: Store, record: RunRecord, grace: float = 10.0) -> str:
        return self.node0.stop(store, record, grace)

    def resume(self, store: Store, record: RunRecord) -> Launched:
        raise StoreError(f"run {record.id} spans several nodes; resuming one is not "
                         "supported yet — launch its spec again")

    def status(self, store: Store, record: RunRecord) -> str:
        return self.node0.status(store, record)


def backend_for(record: RunRecord) -> Backend:
    """The backend that owns an existing run: the one place that reads `launcher`."""
    one: Local | Ssh
    if record.launcher == "ssh":
        one = Ssh(record.host)
    else:
        one = Local(own_worker=record.launcher == "local")
    return MultiNode(one) if record.node_runs else one


def host_of(loaded: LoadedSpec) -> str:
    """Where a spec runs: its `resources.host`."""
    return loaded.spec.resources.host


def backend_for_spec(loaded: LoadedSpec, *, node_rank: int = 0,
                     master: str | None = None) -> Backend:
    """Where a new spec runs. A multi-node spec starts every node, unless `master` says
    this is one node of such a run, started by node 0's launcher (`wb launch
    --node-rank`)."""
    if loaded.spec.resources.nodes > 1 and master is None:
        return MultiNode()
    host = host_of(loaded)
    if host == LOCAL:
        return Local(node_rank=node_rank, master=master)
    return Ssh(host)


def start(store: Store, loaded: LoadedSpec, *, name: str | None = None,
          group: str | None = None, node_rank: int = 0,
          master: str | None = None) -> Launched:
    """Launch one spec where it says (HostError when a remote host refuses or is down)."""
    backend = backend_for_spec(loaded, node_rank=node_rank, master=master)
    return backend.start(store, loaded, name=name, group=group)

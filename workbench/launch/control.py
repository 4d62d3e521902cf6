"""Start, stop and resume a run wherever it lives: the local launcher, or the ssh
launcher for a spec whose `resources.host` names a configured host (and for runs
launched that way). The CLI and the dashboard both go through here."""

from __future__ import annotations

from typing import Any

from workbench.hosts import LOCAL, get_host
from workbench.launch import local, ssh
from workbench.spec import LoadedSpec
from workbench.store import Store, StoreError


def host_of(loaded: LoadedSpec) -> str:
    """Where a spec runs: its `resources.host`."""
    return loaded.spec.resources.host


def start(store: Store, loaded: LoadedSpec, *, name: str | None = None,
          group: str | None = None, node_rank: int = 0,
          master: str | None = None) -> dict[str, Any]:
    """Launch one spec on its host (HostError when a remote host refuses or is down).

    A multi-node spec starts every node (launch/nodes.py), unless `master` says this
    is one node of such a run, started by node 0's launcher (`wb launch --node-rank`).
    """
    if loaded.spec.resources.nodes > 1 and master is None:
        from workbench.launch import nodes

        return nodes.start(store, loaded, name=name)
    host = host_of(loaded)
    if host == LOCAL:
        return local.start(store, loaded, name=name, group=group, node_rank=node_rank,
                           master=master)
    return ssh.start(store, loaded, get_host(host), name=name, group=group)


def stop(store: Store, row: dict[str, Any], grace: float = 10.0) -> str:
    if row.get("launcher") == "ssh":
        return ssh.stop(store, row, grace=grace)
    return local.stop(store, row, grace=grace)


def resume(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    if '"node_runs"' in (row.get("config") or ""):
        raise StoreError(f"run {row['id']} spans several nodes; resuming one is not "
                         "supported yet — launch its spec again")
    if row.get("launcher") == "ssh":
        return ssh.resume(store, row)
    return local.resume(store, row)

"""Multi-node launch: one worker per node of `resources.nodes`, each on its host of
`resources.hosts` (this machine for 'local' or an empty list), meeting at node 0
through torchrun's static rendezvous (launch/distributed.py).

Node 0 holds global rank 0: its run is the one that gets metrics and checkpoints,
and the one returned here (mirrored when it is remote). Nodes 1.. are runs of their
own host's store, named NAME.nodeR, recorded in node 0's config (`node_runs`) so
`wb show` says where each is. `wb stop` on node 0 is enough: every rank stops at
the same step.
"""

from __future__ import annotations

from typing import Any

from workbench.hosts import LOCAL, get_host
from workbench.launch import local, ssh
from workbench.launch.local import Launched
from workbench.spec import LoadedSpec
from workbench.store import Store


def master_address(hosts: list[str], configured: str | None) -> str:
    """Node 0's address as the other nodes reach it."""
    if configured:
        return configured
    if all(h == LOCAL for h in hosts):
        return "127.0.0.1"
    if hosts[0] == LOCAL:
        import socket

        return socket.getfqdn()
    return get_host(hosts[0]).address()


def start(store: Store, loaded: LoadedSpec, *, name: str | None = None) -> Launched:
    """Start every node, node 0 first; returns node 0's local record (no process: every
    node's worker is detached, and node 0 reports for the run)."""
    res = loaded.spec.resources
    hosts = list(res.hosts) or [LOCAL] * res.nodes
    master = f"{master_address(hosts, res.master_addr)}:{res.rdzv_port}"
    name = name or loaded.spec.name or store.next_name(loaded.default_name)
    placed: list[dict[str, Any]] = []
    first = ""
    try:
        for rank, host_name in enumerate(hosts):
            run_id = _start_node(store, loaded, host_name, rank,
                                 name if rank == 0 else f"{name}.node{rank}", master)
            if rank == 0:
                first = run_id
            placed.append({"node": rank, "host": host_name, "run": run_id})
    except BaseException:
        _stop_started(store, placed)  # node 0 would wait for the others for minutes
        raise
    store.merge_config(first, {"node_runs": placed, "master": master})
    return Launched(store.get_run(first))


def _start_node(store: Store, loaded: LoadedSpec, host_name: str, rank: int, name: str,
                master: str) -> str:
    """Start node `rank` on its host; its run id."""
    if host_name == LOCAL:
        return local.start(store, loaded, name=name, node_rank=rank, master=master).record.id
    host = get_host(host_name)
    if rank == 0:  # mirrored: its metrics are the run's
        return ssh.start(store, loaded, host, name=name, master=master).record.id
    return ssh.launch_remote(host, loaded.spec, name, node_rank=rank, master=master)


def _stop_started(store: Store, placed: list[dict[str, Any]]) -> None:
    """Best effort: stop the nodes already started when a later one failed to start."""
    for node in placed:
        try:
            # Stopped the way _start_node started it: no record says so yet.
            if node["host"] == LOCAL:
                local.stop(store, store.get_run(node["run"]), grace=5)
            elif node["node"] == 0:  # node 0 on a remote host: its local mirror run
                ssh.stop(store, store.get_run(node["run"]), grace=5)
            else:
                host = get_host(node["host"])
                host.run(host.wb("stop", node["run"], "--grace", "5"), timeout=60)
        except Exception:  # noqa: BLE001,S112 - the original error is the one to report
            continue

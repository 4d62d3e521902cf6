"""Multi-process runs: the worker starts one process per rank under torch's elastic
launcher (`torchrun`), and each rank runs the recipe (`python -m
workbench.launch.distributed RUN_ID`, started by torchrun).

Why torchrun and not `accelerate launch`: without a GPU, `accelerate launch
--num_processes 2` starts one process (its multi-CPU mode wants MPI); torchrun
starts every rank on gloo, and `accelerate.Accelerator` works inside each
(docs/ARCHITECTURE.md).

Who does what:
- the worker keeps the run's status and heartbeat, waits for torchrun, and turns
  `wb stop` (SIGTERM) into a SIGTERM to every rank, so they stop at the same step
  and rank 0 checkpoints;
- each rank attaches to the run; rank 0 logs, the others hold a disabled `Run`;
- a rank exits when the worker is gone (kill -9 of the worker): nothing keeps
  training, unrecorded, behind a run shown as lost.

One node (`resources.nodes = 1`): traffic stays on this machine, `--standalone`
rendezvous on localhost, gloo on `lo`.

Several nodes (`resources.nodes = N`): each node's worker starts its own torchrun with
`--nnodes N --node_rank R --master_addr HOST --master_port PORT` (see
`torchrun_command` for why static rendezvous). World size is N * procs; global rank 0
is local rank 0 of node 0, so node 0's run gets the metrics and checkpoints, and every
other rank (on every node) holds a disabled Run. A node R > 0 keeps its own run row in
its own store: status, heartbeat and output, no metrics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from workbench.procs import children_map

if TYPE_CHECKING:
    from workbench.spec import Resources

WATCH_S = 1.0  # how often a rank checks that its worker is alive
POLL_S = 0.2


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(addr: str) -> bool:
    """True for an address of this machine's loopback interface (127.0.0.0/8 too)."""
    return addr in LOOPBACK or addr.startswith("127.")


def torchrun_command(run_id: str, procs: int, nodes: int = 1, node_rank: int = 0,
                     master: tuple[str, int] | None = None) -> list[str]:
    """torchrun's argv for node `node_rank` of `nodes`, `procs` ranks on each.

    One node: `--standalone` (a private rendezvous on a free local port).

    Several nodes: static rendezvous (`--master_addr/--master_port --node_rank`), not
    c10d. With static, node R's ranks are R*procs .. R*procs+procs-1, fixed by the
    node rank we pass, so global rank 0 (the one that logs and checkpoints) is always
    on node 0, the node whose store the user watches. c10d hands out node ranks in
    arrival order, so rank 0 could land on any node; it also wants one `--rdzv_id`
    shared by every node, which our per-store run ids are not. Static needs no
    extra services: node 0's torchrun opens a TCPStore on the master port and the
    others connect to it (retrying while node 0 is still starting), which works the
    same over loopback and between machines. It cannot re-form after a failure, but
    runs use `--max_restarts=0` anyway: a failed rank fails the run.
    """
    argv = [sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1:
        argv.append("--standalone")
    else:
        if master is None:
            raise ValueError("a multi-node run needs the master address (host, port)")
        if not 0 <= node_rank < nodes:
            raise ValueError(f"node rank {node_rank} is outside 0..{nodes - 1}")
        addr, port = master
        # Static is torchrun's default, named so a PET_RDZV_BACKEND in the environment
        # cannot swap it.
        argv += [f"--nnodes={nodes}", f"--node_rank={node_rank}", "--rdzv_backend=static",
                 f"--master_addr={addr}", f"--master_port={port}"]
    return [*argv, f"--nproc_per_node={procs}", "--max_restarts=0",
            "-m", "workbench.launch.distributed", run_id]


def rank_env(procs: int, master_addr: str | None = None) -> dict[str, str]:
    """The ranks' environment: the worker's, plus thread and network settings.

    gloo is pinned to `lo` only when every rank is on this machine (one node, or a
    loopback master); between machines gloo must use the interface that reaches
    the master, which it finds itself from the hostname (or a GLOO_SOCKET_IFNAME /
    NCCL_SOCKET_IFNAME the user set).
    """
    env = {**os.environ, "WB_WORKER_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    # One share of the cores per rank (torchrun would say 1 and print a banner).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
    if master_addr is None or is_loopback(master_addr):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def node_settings(resources: Resources, environ: Mapping[str, str] | None = None,
                  ) -> tuple[int, tuple[str, int] | None]:
    """(node rank, (master address, port) or None for one node) of this worker.

    Whoever starts node R's worker says which node it is through the environment
    (launch/local.py `start(node_rank=, master=)` sets these):
    - WB_NODE_RANK: 0 .. nodes-1 (default 0);
    - WB_MASTER_ADDR: node 0's address as the other nodes reach it. Default
      127.0.0.1, but only when every node runs here (`resources.hosts` empty or all
      'local'): between machines a wrong guess would hang the rendezvous;
    - WB_MASTER_PORT: default `resources.rdzv_port`.
    Raises ValueError (one line: variable, problem, fix) on a bad value.
    """
    env = os.environ if environ is None else environ
    nodes = resources.nodes
    try:
        node_rank = int(env.get("WB_NODE_RANK") or 0)
    except ValueError:
        raise ValueError(f"WB_NODE_RANK={env['WB_NODE_RANK']!r} is not an integer — set "
                         f"it to this node's rank, 0..{nodes - 1}") from None
    if not 0 <= node_rank < nodes:
        raise ValueError(f"WB_NODE_RANK={node_rank} but resources.nodes is {nodes} — set "
                         f"it to 0..{nodes - 1}")
    if nodes == 1:
        return 0, None
    addr = env.get("WB_MASTER_ADDR") or ""
    if not addr:
        if any(h != "local" for h in resources.hosts):
            raise ValueError(f"node {node_rank} of a run over {', '.join(resources.hosts)} "
                             "needs WB_MASTER_ADDR (node 0's address) — start it with "
                             "local.start(..., master='HOST:PORT')")
        addr = "127.0.0.1"
    try:
        port = int(env.get("WB_MASTER_PORT") or resources.rdzv_port)
    except ValueError:
        raise ValueError(f"WB_MASTER_PORT={env['WB_MASTER_PORT']!r} is not a port number "
                         "— set it to node 0's rendezvous port") from None
    return node_rank, (addr, port)


def run_ranks(run_id: str, procs: int, stop: threading.Event, nodes: int = 1,
              node_rank: int = 0, master: tuple[str, int] | None = None) -> int:
    """Run this node's ranks to the end; returns torchrun's exit code (0 = every rank ok).

    Once `stop` is set, every rank (torchrun's children) gets one SIGTERM; a rank
    that appears later gets its own.
    """
    if nodes > 1 and master:
        print(f"workbench: node {node_rank}/{nodes}: starting {procs} of {nodes * procs} ranks, "
              f"master {master[0]}:{master[1]} (torchrun, gloo on a CPU / NCCL on GPUs)",
              flush=True)
    else:
        print(f"workbench: starting {procs} ranks (torchrun, gloo on a CPU / NCCL on GPUs)",
              flush=True)
    proc = subprocess.Popen(torchrun_command(run_id, procs, nodes, node_rank, master),
                            env=rank_env(procs, master[0] if nodes > 1 and master else None),
                            stdin=subprocess.DEVNULL)
    signalled: set[int] = set()
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if stop.is_set():
            for pid in children_map().get(proc.pid, []):  # the ranks
                if pid not in signalled:
                    signalled.add(pid)
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass


def _watch_worker(pid: int) -> None:
    """Exit this rank (at once, like the worker did) when the worker is gone."""
    from workbench.procs import pid_alive

    def watch() -> None:
        while True:
            time.sleep(WATCH_S)
            if not pid_alive(pid):
                print(f"workbench: rank {os.environ.get('RANK')}: worker {pid} is gone; "
                      "exiting", file=sys.stderr, flush=True)
                os._exit(1)

    threading.Thread(target=watch, name="wb-watch-worker", daemon=True).start()


def rank_main(argv: list[str] | None = None) -> int:
    """One rank: attach to the run and run its recipe (started by torchrun)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before the heavy imports

    from workbench.recipes import Context, get
    from workbench.spec import parse_spec
    from workbench.store import Store
    from workbench.tracking import Run

    argv = sys.argv[1:] if argv is None else argv
    run_id = argv[0] if argv else os.environ["WB_RUN_ID"]
    rank = int(os.environ.get("RANK") or 0)
    if os.environ.get("WB_WORKER_PID"):
        _watch_worker(int(os.environ["WB_WORKER_PID"]))
    store = Store(os.environ.get("WB_STORE"), create=False)
    row = store.get_run(run_id)
    run = Run(store, row, owner=False, heartbeat=False, disabled=rank != 0)
    resume_dir = store.run_dir(row.resumed_from) if row.resumed_from else None
    ctx = Context(run=run, run_dir=store.run_dir(run_id), stop=stop, resume_dir=resume_dir)
    try:
        spec = parse_spec(row.spec or "", label=f"run {run_id} spec")
        get(row.kind).entry_point()(spec, ctx)
    finally:
        run.finish()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(rank_main())

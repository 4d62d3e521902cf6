"""Multi-process runs: the worker starts one process per rank under torch's elastic
launcher (`torchrun`), and each rank runs the recipe (`python -m
workbench.launch.distributed RUN_ID`, started by torchrun).

Why torchrun and not `accelerate launch`: without a GPU, `accelerate launch
--num_processes 2` starts one process (its multi-CPU mode wants MPI); torchrun
starts every rank on gloo, and `accelerate.Accelerator` works inside each (DESIGN.md).

Who does what:
- the worker keeps the run's status and heartbeat, waits for torchrun, and turns
  `wb stop` (SIGTERM) into a SIGTERM to every rank, so they stop at the same step
  and rank 0 checkpoints;
- each rank attaches to the run; rank 0 logs, the others hold a disabled `Run`;
- a rank exits when the worker is gone (kill -9 of the worker): nothing keeps
  training, unrecorded, behind a run shown as lost.

Traffic stays on this machine: `--standalone` rendezvous on localhost, gloo on `lo`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from workbench.launch.local import children_map

WATCH_S = 1.0  # how often a rank checks that its worker is alive
POLL_S = 0.2


def torchrun_command(run_id: str, procs: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={procs}", "--max_restarts=0",
            "-m", "workbench.launch.distributed", run_id]


def rank_env(procs: int) -> dict[str, str]:
    """The ranks' environment: the worker's, plus thread and network settings."""
    env = {**os.environ, "WB_WORKER_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    # One share of the cores per rank (torchrun would say 1 and print a banner).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def run_ranks(run_id: str, procs: int, stop: threading.Event) -> int:
    """Run the ranks to the end; returns torchrun's exit code (0 = every rank ok).

    Once `stop` is set, every rank (torchrun's children) gets one SIGTERM; a rank
    that appears later gets its own.
    """
    print(f"workbench: starting {procs} ranks (torchrun, gloo on a CPU / NCCL on GPUs)",
          flush=True)
    proc = subprocess.Popen(torchrun_command(run_id, procs), env=rank_env(procs),
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
    from workbench.store import pid_alive

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
    resume_dir = store.run_dir(row["resumed_from"]) if row["resumed_from"] else None
    ctx = Context(run=run, run_dir=store.run_dir(run_id), stop=stop, resume_dir=resume_dir)
    try:
        spec = parse_spec(row["spec"], label=f"run {run_id} spec")
        get(row["kind"]).entry_point()(spec, ctx)
    finally:
        run.finish()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(rank_main())

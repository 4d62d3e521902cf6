"""The worker: the process a launched run lives in (`python -m workbench.launch.worker ID`).

It marks the run running, keeps a heartbeat, runs the recipe for the spec's
kind, and records how it ended. A multi-process or multi-node run's recipe runs in
torchrun's ranks instead (launch/distributed.py); node R of a multi-node run learns
its place from WB_NODE_RANK / WB_MASTER_ADDR / WB_MASTER_PORT (set by
local.start(node_rank=, master=); see distributed.node_settings). Every node's worker
records its own run's status; only node 0's run gets metrics (global rank 0 logs).

SIGTERM (`wb stop`) sets the stop flag the recipe polls, so it can checkpoint and
return; the run then ends as `stopped`.

The worker samples the system metrics (`sys/...`, workbench/sysmetrics.py) of its whole
process tree, ranks and script subprocesses included: the one sampler of the run (a
script's attaching `workbench.init()` starts none).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback


def main(argv: list[str] | None = None) -> int:
    # Catch SIGTERM before the heavy imports: a stop that arrives while the worker
    # starts must still end the run as `stopped`, not kill it unrecorded.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    os.umask(0o077)  # checkpoints and logs of the run: readable by its owner only

    from workbench.launch.queue import wait_turn
    from workbench.recipes import Context, get
    from workbench.spec import parse_spec
    from workbench.store import Store
    from workbench.sysmetrics import StoreStep, start_sampler
    from workbench.tracking import Run

    argv = sys.argv[1:] if argv is None else argv
    run_id = argv[0] if argv else os.environ["WB_RUN_ID"]
    store = Store(os.environ.get("WB_STORE"), create=False)
    if not wait_turn(store, run_id, stop):  # queued in a group: stopped before its turn
        return 0
    row = store.get_run(run_id)
    store.update_run(run_id, status="running", pid=os.getpid(), started=time.time(),
                     heartbeat=time.time())
    # The worker owns the status (written below), and its writer keeps the heartbeat.
    run = Run(store, row, owner=False, heartbeat=True)
    # At the step the store knows: ranks and scripts log from other processes.
    sampler = start_sampler(run, step=StoreStep(run, store.root))
    resume_dir = store.run_dir(row.resumed_from) if row.resumed_from else None
    ctx = Context(run=run, run_dir=store.run_dir(run_id), stop=stop, resume_dir=resume_dir)
    print(f"workbench: run {run_id} ({row.name}, kind {row.kind}) pid {os.getpid()}",
          flush=True)
    status, code = "finished", 0
    try:
        if not stop.is_set():
            spec = parse_spec(row.spec or "", label=f"run {run_id} spec")
            recipe, procs = get(row.kind), spec.resources.procs
            nodes = spec.resources.nodes  # > 1 only for per-rank kinds (their specs)
            if (procs > 1 or nodes > 1) and recipe.per_rank:  # under torchrun
                from workbench.launch.distributed import node_settings, run_ranks

                node_rank, master = node_settings(spec.resources)
                if master is not None:  # which node this run is, for `wb show`
                    run.update_config({"node_rank": node_rank, "nodes": nodes,
                                       "master": f"{master[0]}:{master[1]}"})
                rc = run_ranks(run_id, procs, stop, nodes, node_rank, master)
                if rc != 0 and not stop.is_set():
                    raise RuntimeError(f"{procs} ranks ended with exit code {rc} (see the "
                                       "rank's traceback above)")
            else:
                recipe.entry_point()(spec, ctx)
        if stop.is_set():
            status = "stopped"
    except BaseException:  # noqa: BLE001 - every ending is recorded
        traceback.print_exc()
        status, code = ("stopped", 0) if stop.is_set() else ("failed", 1)
    finally:
        if sampler is not None:  # before the ending: no sample after the stage event
            sampler.stop()
        # At the run's last step: the recipe may have logged from another process.
        last = store.get_run(run_id).last_step
        run.event("stage", step=max(last or 0, run.step), stage=status, exit_code=code)
        run.finish()
        # Printed before the status: a `wb logs --follow` that sees the ending has it.
        print(f"workbench: run {run_id} {status}", flush=True)
        store.update_run(run_id, status=status, ended=time.time(), exit_code=code,
                         heartbeat=time.time())
    return code


if __name__ == "__main__":
    sys.exit(main())

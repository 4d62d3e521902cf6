"""Distributed training on NCCL.

Why: data parallelism is where a GPU host's setup (driver, NCCL, topology, ports)
fails first, and a wrong gradient reduction is silent until curves are compared.

- dist/nccl-init: a 1-rank NCCL process group in a fresh process (init, all_reduce,
  barrier, destroy), on any CUDA machine.
- dist/muon-tiny-2rank: with 2 GPUs or more, muon-tiny launched as a real run with
  ``resources.procs=2`` (torchrun, NCCL, distributed Muon) and again with one rank; the
  loss curves must agree: the first step (same weights, the same global batch split
  in two) to 5e-3, every step to 3e-2 (bf16 rounding differs with the batch split).
  README's "Data parallel" section: on a CPU the two agree to 1e-4.

Both start processes of their own, so a hung NCCL cannot take the selftest with it
(each has a timeout).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from workbench.run_record import RunRecord
from workbench.selftest import Context, Outcome, check
from workbench.selftest.compare import curves_agree

FIRST_STEP_REL = 5e-3
CURVE_REL = 3e-2
RUN_TIMEOUT_S = 300.0
PROBE_TIMEOUT_S = 120.0
TINY = ("train.steps=20", "train.batch_size=16", "train.checkpoint_every=0",
        "train.svd_every=0", "train.eval_every=20", "data.max_bytes=1000000",
        "optim.warmup_steps=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nccl_probe() -> dict[str, Any]:
    """In this process: a 1-rank NCCL group, one all_reduce; the answer as a dict."""
    import torch
    import torch.distributed as dist

    t0 = time.perf_counter()
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1, device_id=torch.device("cuda", 0))
    init_s = time.perf_counter() - t0
    x = torch.full((1024,), 2.0, device="cuda")
    dist.all_reduce(x)
    dist.barrier()
    value = float(x[0])
    dist.destroy_process_group()
    version = torch.cuda.nccl.version()
    return {"init_s": init_s, "allreduce": value,
            "nccl": ".".join(map(str, version)) if isinstance(version, tuple) else str(version)}


def run_probe(timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """`nccl_probe` in a fresh interpreter: its JSON line, or a RuntimeError with the tail
    of what it printed."""
    r = subprocess.run([sys.executable, "-m", "workbench.selftest.dist"], capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the NCCL probe exited {r.returncode}: {tail}")
    return json.loads(lines[-1])


@check("dist/nccl-init", needs=("cuda",),
       summary="a 1-rank NCCL process group: init, all_reduce, destroy")
def nccl_check(ctx: Context) -> Outcome:
    answer = run_probe()
    out = Outcome(figures={"init_s": answer["init_s"]}, detail={"nccl": answer["nccl"]})
    out.require(answer["allreduce"] == 2.0, f"all_reduce over 1 rank gave {answer['allreduce']}")
    out.headline = f"NCCL {answer['nccl']}: init {answer['init_s']:.1f} s, all_reduce ok"
    return out


def launched(store: Any, source: str, overrides: Sequence[str], name: str,
             timeout: float = RUN_TIMEOUT_S) -> RunRecord:
    """Launch ``source`` as a real run (worker process, torchrun when procs > 1) and wait
    for its end; the final record. Killed (its whole tree) past ``timeout``."""
    from workbench.launch import local
    from workbench.procs import kill_tree
    from workbench.spec import load_spec

    started = local.start(store, load_spec(source, list(overrides)), name=name)
    proc, run_id = started.process, started.record.id
    assert proc is not None  # a local start always has its worker
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        raise RuntimeError(f"{name} did not finish within {timeout:.0f} s") from None
    deadline = time.monotonic() + 10
    while store.get_run(run_id).is_active:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return store.get_run(run_id)


def compare_ranks(one: Mapping[int, float], two: Mapping[int, float]) -> Outcome:
    """1 rank's loss curve against N ranks' (see the module docstring for the bounds)."""
    failures, figures = curves_agree(two, one, FIRST_STEP_REL, CURVE_REL)
    return Outcome(figures=figures, failures=failures)


@check("dist/muon-tiny-2rank", needs=("cuda", "gpus2"),
       summary="muon-tiny on 2 ranks (NCCL, torchrun) has 1 rank's loss curve")
def two_rank_check(ctx: Context) -> Outcome:
    from workbench.store import Store

    with Store(ctx.tmp / "store") as st:
        rows = {}
        for procs in (1, 2):
            ctx.say(f"  muon-tiny on {procs} rank{'s' if procs > 1 else ''}")
            rows[procs] = launched(st, "muon-tiny", [*TINY, f"resources.procs={procs}"],
                                   f"selftest-{procs}rank")
        out = Outcome()
        for procs, row in rows.items():
            if not out.require(row.status == "finished", f"the {procs}-rank run ended "
                                                          f"{row.status}"):
                log = st.run_dir(row.id) / "stdout.log"
                out.detail[f"log_tail_{procs}"] = log.read_text()[-1500:] if log.exists() else ""
        curves = {p: {s: v for _, s, _, v, _ in st.scalars(r.id, "train/loss")}
                  for p, r in rows.items()}
    out.merge(compare_ranks(curves[1], curves[2]))
    out.headline = (f"{len(curves[2])} steps: step-1 loss diff "
                    f"{out.figures.get('first_step_rel_diff', float('nan')):.1e}, max "
                    f"{out.figures.get('max_rel_diff', float('nan')):.1e}")
    return out


if __name__ == "__main__":  # the probe's process (run_probe)
    os.environ.setdefault("NCCL_DEBUG", "WARN")
    print(json.dumps(nccl_probe()), flush=True)

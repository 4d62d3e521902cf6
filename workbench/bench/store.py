"""`wb bench store`: SDK logging throughput against raw SQLite, in one invocation.

- sdk: scalar points/s through `Run.log` (5 metrics a call) from 1 and from 4
  processes into one run, timed from the first call until everything is
  committed (`flush`), on the run's real store.
- raw: the same rows through plain `sqlite3.executemany`, 10k rows per
  transaction, into the same schema (WAL, same indexes), in this process
  (`Store.time_raw_scalar_inserts`: the store owns its SQL, the baseline too).
- ratio = sdk / raw, with sdk the slower of the 1- and 4-process figures.
- wandb: the same calls through the W&B drop-in (`workbench.compat.wandb.log`,
  which keeps W&B's step rules and summary), per-call p50 against `Run.log`'s.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from workbench.store import Store

METRICS = 5
KEYS = [f"train/m{i}" for i in range(METRICS)]


def _writer(root: str, run_id: str, calls: int, offset: int, start_at: float) -> dict[str, Any]:
    """One writer process: `calls` log() calls, then flush. Times on time.monotonic()."""
    from workbench.tracking import Run

    st = Store(root)
    run = Run(st, st.get_run(run_id), owner=False)
    durations = [0] * calls
    clock = time.perf_counter_ns
    while time.monotonic() < start_at:
        time.sleep(0.001)
    t0 = time.monotonic()
    for i in range(calls):
        step = offset + i
        metrics = {k: step * 1e-3 + j for j, k in enumerate(KEYS)}
        a = clock()
        run.log(metrics, step=step)
        durations[i] = clock() - a
    run.flush(timeout=600)
    t1 = time.monotonic()
    run.finish()
    return {"t0": t0, "t1": t1, "p50_ns": statistics.median(durations),
            "p99_ns": sorted(durations)[int(0.99 * (calls - 1))]}


def _sdk(root: Path, points: int, procs: int) -> dict[str, Any]:
    st = Store(root)
    run_id = st.create_run(kind="bench", name=f"bench-{procs}p", status="running",
                           launcher="sdk").id
    calls = points // METRICS // procs
    start_at = time.monotonic() + 1.5  # let every process import and open first
    children = [
        subprocess.Popen([sys.executable, "-m", "workbench.bench.store", str(root), run_id,
                          str(calls), str(p * calls), repr(start_at)],
                         stdout=subprocess.PIPE, text=True)
        for p in range(procs)
    ]
    results = []
    for child in children:
        out, _ = child.communicate(timeout=900)
        if child.returncode != 0:
            raise RuntimeError(f"bench writer exited with {child.returncode}")
        results.append(json.loads(out))
    rows = st.scalar_count(run_id)
    st.close()
    total = calls * procs * METRICS
    if rows != total:
        raise RuntimeError(f"bench lost rows: {rows} of {total}")
    elapsed = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    return {"points_per_s": total / elapsed, "p50_us": results[0]["p50_ns"] / 1e3,
            "p99_us": results[0]["p99_ns"] / 1e3, "points": total}


def _raw(root: Path, points: int, batch: int = 10_000) -> float:
    st = Store(root)
    run = st.create_run(kind="bench", name="bench-raw", status="running", launcher="sdk")
    rows = [(i // METRICS, KEYS[i % METRICS], i * 1e-3) for i in range(points)]
    elapsed = st.time_raw_scalar_inserts(run.id, rows, batch=batch)
    st.close()
    return points / elapsed


def _wandb_p50_us(root: Path, calls: int) -> float:
    """Median µs of one `wandb.log` call of METRICS numbers through the drop-in."""
    import os

    import workbench.compat.wandb as wandb

    old = os.environ.get("WB_STORE")
    os.environ["WB_STORE"] = str(root)
    try:
        wandb.init(project="bench-wandb")
        durations = [0] * calls
        clock = time.perf_counter_ns
        for i in range(calls):
            metrics = {k: i * 1e-3 + j for j, k in enumerate(KEYS)}
            a = clock()
            wandb.log(metrics)
            durations[i] = clock() - a
        wandb.finish()
    finally:
        if old is None:
            os.environ.pop("WB_STORE", None)
        else:
            os.environ["WB_STORE"] = old
    return statistics.median(durations) / 1e3


def bench_store(quick: bool = False, progress: Console | None = None) -> dict[str, Any]:
    points = 200_000 if quick else 1_000_000
    say = progress.print if progress else (lambda *a, **k: None)
    with tempfile.TemporaryDirectory(prefix="wb-bench-") as tmp:
        say(f"raw executemany: {points:,} rows ...")
        raw = _raw(Path(tmp) / "raw", points)
        say(f"  {raw:,.0f} rows/s")
        sdk = {}
        for procs in (1, 4):
            say(f"sdk Run.log from {procs} process(es): {points:,} points ...")
            sdk[procs] = _sdk(Path(tmp) / f"sdk{procs}", points, procs)
            say(f"  {sdk[procs]['points_per_s']:,.0f} points/s")
        say("the W&B drop-in: wandb.log calls ...")
        wandb_us = _wandb_p50_us(Path(tmp) / "wandb", points // METRICS)
        say(f"  {wandb_us:.2f} µs a call")
    slow = min(sdk[1]["points_per_s"], sdk[4]["points_per_s"])
    return {
        "sdk_points_per_s": round(slow),
        "raw_points_per_s": round(raw),
        "ratio": round(slow / raw, 3),
        "log_call_us_p50": round(sdk[1]["p50_us"], 2),
        "log_call_us_p99": round(sdk[1]["p99_us"], 2),
        "wandb_log_call_us_p50": round(wandb_us, 2),
        "wandb_vs_sdk_call": round(wandb_us / sdk[1]["p50_us"], 2),
        "sdk_points_per_s_1proc": round(sdk[1]["points_per_s"]),
        "sdk_points_per_s_4proc": round(sdk[4]["points_per_s"]),
        "metrics_per_call": METRICS,
        "points": points,
        "quick": quick,
    }


if __name__ == "__main__":
    root, run_id, calls, offset, start_at = sys.argv[1:6]
    print(json.dumps(_writer(root, run_id, int(calls), int(offset), float(start_at))))

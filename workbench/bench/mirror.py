"""`wb bench mirror`: how fast and how fresh a remote run's mirror is, over ssh to a
throwaway sshd on 127.0.0.1 (workbench/sshd.py) with a store of its own.

- lag: a script on the "host" logs one scalar every 10 ms; a local poller (every
  5 ms) stamps each mirrored row when it becomes visible. Lag = that time minus the
  row's wall time (when the script logged it; same clock on loopback). It includes
  the SDK's flush interval, the export's poll and the mirror's batching: what a
  person watching the dashboard waits.
- rows_per_s: a fresh local store catches up the finished run (steady rows plus a
  burst), through one `wb export` stream over ssh: the rate after a reconnect.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from workbench.bench.runs import say

WRITER = """
import time
import workbench
run = workbench.init()
c = run.config
for i in range(c["steady"]):
    run.log({"bench/steady": float(i)}, step=i)
    time.sleep(c["pause"])
for i in range(c["burst"]):
    run.log({"bench/burst": float(i)}, step=c["steady"] + i)
run.finish()
"""


@contextmanager
def _env(**values: str) -> Any:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def bench_mirror(quick: bool = False, progress: Console | None = None) -> dict[str, Any]:
    from workbench.hosts import Host, add_host
    from workbench.launch import ssh
    from workbench.launch.mirror import Mirror
    from workbench.spec import LoadedSpec, parse_spec
    from workbench.sshd import loopback_sshd
    from workbench.store import Store

    steady, pause = (300, 0.01) if quick else (1500, 0.01)
    burst = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="wb-bench-mirror-") as tmp:
        root = Path(tmp)
        with loopback_sshd(root / "sshd") as server, _env(
                XDG_CONFIG_HOME=str(root / "config"), WB_SSH_CONFIG=str(server.config)):
            host = Host("loop", server.alias, python=sys.executable, store=str(root / "remote"))
            add_host(host)  # the mirror process finds its host in the hosts file
            (root / "writer.py").write_text(WRITER)
            spec = parse_spec(
                f'kind = "script"\n[script]\ncommand = ["python", "{root / "writer.py"}"]\n'
                f"[config]\nsteady = {steady}\npause = {pause}\nburst = {burst}\n",
                label="bench spec")
            local = Store(root / "local")
            say(progress, f"mirror: a run on 127.0.0.1 over ssh logs {steady} rows at "
                          f"{1 / pause:.0f}/s, then {burst:,} at once")
            started = ssh.start(local, LoadedSpec(spec, "bench-mirror"), host,
                                name="bench-mirror")
            row = started.record
            lags, cursor = [], 0
            deadline = time.monotonic() + 120 + steady * pause * 3
            while time.monotonic() < deadline:
                now = time.time()
                for rec in local.records(row.id, since=cursor, keys=["bench/steady"]):
                    lags.append(now - (rec.wall or now))
                    cursor = rec.id
                if not local.get_run(row.id).is_active:
                    break
                time.sleep(0.005)
            status = local.get_run(row.id).status
            if status != "finished" or len(lags) != steady:
                raise RuntimeError(f"the mirrored run ended {status} with {len(lags)} of "
                                   f"{steady} steady rows; see {local.run_dir(row.id)}")
            if started.process is not None:
                started.process.wait(timeout=30)
            say(progress, f"  lag p50 {_quantile(lags, 0.5):.3f} s, p99 "
                          f"{_quantile(lags, 0.99):.3f} s over {len(lags)} rows")

            fresh = Store(root / "catch-up")
            fresh.create_run(run_id=row.id, host="loop", launcher="ssh", kind="script",
                             name="catch-up")
            t0 = time.perf_counter()
            outcome = Mirror(fresh, row.id, host, log=io.StringIO()).run(give_up_s=30)
            seconds = time.perf_counter() - t0
            rows = fresh.scalar_count(row.id)
            ours = fresh.scalar_count(row.id, keys=["bench/*"])  # besides system metrics
            if outcome != "done" or ours != steady + burst:
                raise RuntimeError(f"catch-up ended {outcome} with {ours} of "
                                   f"{steady + burst} rows")
            say(progress, f"  catch-up: {rows:,} rows in {seconds:.2f} s")
            local.close()
            fresh.close()
    return {
        "rows_per_s": rows / seconds,
        "lag_p50_s": _quantile(lags, 0.5),
        "lag_p99_s": _quantile(lags, 0.99),
        "lag_max_s": max(lags),
        "lag_rows": len(lags),
        "catch_up_rows": rows,
        "bench_rows": ours,
        "catch_up_s": seconds,
        "transport": "ssh to sshd on 127.0.0.1 (ControlMaster), one `wb export --follow` "
                     "stream",
    }

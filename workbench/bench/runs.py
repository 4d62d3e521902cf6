"""Benches that measure whole runs: launch a spec as a real run and wait for its end."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from workbench.run_record import RunRecord


def say(progress: Console | None, text: str) -> None:
    if progress is not None:
        progress.print(text, highlight=False)


def run_to_end(store: Any, spec: str, overrides: list[str], progress: Console | None,
               label: str, timeout: float) -> RunRecord:
    """Launch `spec` (built-in name or file) with `overrides` into `store`, print its step
    as it moves, and return its record once it finished; raise with its output's tail if
    it ended otherwise or ran past `timeout` seconds (then it is stopped)."""
    from workbench.launch import local
    from workbench.spec import load_spec

    started = local.start(store, load_spec(spec, overrides), name=f"bench-{label}")
    t0 = time.monotonic()
    proc, run_id = started.process, started.record.id
    assert proc is not None  # a local start always has its worker
    last = -1
    while proc.poll() is None:
        if time.monotonic() - t0 > timeout:
            local.stop(store, store.get_run(run_id), grace=10)
            raise RuntimeError(f"{label} run did not finish within {timeout:.0f} s")
        step = store.get_run(run_id).last_step or 0
        if step != last:
            say(progress, f"  {label}: step {step}")
            last = step
        time.sleep(1.0)
    done = store.get_run(run_id)
    if done.status != "finished":
        log = (store.run_dir(run_id) / "stdout.log").read_text()[-2000:]
        raise RuntimeError(f"{label} run ended {done.status}:\n{log}")
    return done

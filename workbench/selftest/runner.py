"""Running the selected checks: in order, each timed, its output kept out of the way.

Why the output is redirected at the file-descriptor level: checks run the recipes'
own code (which prints parameter tables and step lines), subprocesses (RL
generators, a script, torchrun) and compilers (Triton, Inductor) that all write to
fds 1 and 2. `wb selftest --json` must print nothing but its JSON on stdout, and
the table should not drown in step lines. So during each check fds 1 and 2 point at
a log file (the selftest run's `stdout.log`, which `wb logs` shows), and progress
goes to a duplicate of the original stderr taken before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from workbench.selftest import Check, Context, Facts, Result, run_one


@contextlib.contextmanager
def redirected(log: Path | None) -> Iterator[None]:
    """fds 1 and 2 (and sys.stdout / sys.stderr) appended to ``log`` for the block;
    no-op when ``log`` is None."""
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def progress_stream() -> IO[str]:
    """A writable copy of the current stderr that a redirection of fd 2 does not reach."""
    return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)


def run_checks(checks: list[Check], *, quick: bool, facts: Facts,
               say: Callable[[str], None] = lambda _t: None, log: Path | None = None,
               on_result: Callable[[int, Result], None] | None = None) -> list[Result]:
    """Run ``checks`` in order; each gets a scratch folder, its output goes to ``log``
    (see the module docstring), and ``on_result(index, result)`` records it as soon
    as it is known (a run's metrics, a progress line)."""
    results: list[Result] = []
    for i, chk in enumerate(checks):
        if facts.missing(chk.needs) is None:
            say(f"[{i + 1}/{len(checks)}] {chk.name} …")
        tmp = Path(tempfile.mkdtemp(prefix=f"wb-selftest-{chk.name.replace('/', '-')}-"))
        try:
            if log is not None:
                with open(log, "a") as f:
                    f.write(f"\n===== {chk.name} =====\n")
            with redirected(log):
                result = run_one(chk, Context(quick=quick, facts=facts, tmp=tmp, say=say))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results.append(result)
        if on_result is not None:
            on_result(i, result)
    return results


def execute(run: Any, checks: list[Check], *, quick: bool, facts: Facts,
            say: Callable[[str], None], log: Path | None, end_run: bool = True,
            ) -> tuple[list[Result], dict[str, Any]]:
    """Run ``checks`` recording into ``run`` (a `workbench.tracking.Run`; finished here
    with ``end_run``) and return the results and the JSON answer (with the run). An
    interrupt or a crash of the selftest itself ends the run stopped or failed (with
    ``end_run``), and propagates."""
    from workbench.selftest.report import Recorder, answer, result_line

    recorder = Recorder(run, len(checks))

    def on_result(index: int, result: Result) -> None:
        recorder.result(index, result)
        say(result_line(result))

    try:
        results = run_checks(checks, quick=quick, facts=facts, say=say, log=log,
                             on_result=on_result)
    except BaseException as exc:
        if end_run:
            run.finish("stopped" if isinstance(exc, KeyboardInterrupt) else "failed",
                       exit_code=1)
        raise
    data = answer(results, facts, quick)
    data["run"] = {"id": run.id, "name": run.name, "store": str(run.root)}
    recorder.finish(results, data, end_run=end_run)
    return results, data

"""`wb hosts check NAME --selftest`: `wb selftest --json` on a configured host over ssh.

Why here and not through `wb launch --host`: an acceptance check is asked for and
waited on, like `wb hosts check`, and its answer is one JSON document, so it needs no
mirror. The host runs the selftest against its own store (where it is recorded
too); its progress lines (stderr) are shown here as they come; its JSON answer
(stdout) is recorded here as a selftest run of that host (launcher
``ssh-selftest``, ``host`` = the configured name), which is what the Hosts screen
shows as the host's last selftest.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from workbench.hosts import Host, HostError
from workbench.run_record import RunRecord
from workbench.selftest import KIND, REMOTE_LAUNCHER, Result
from workbench.selftest.report import Recorder, results_of

TIMEOUT_S = {True: 900.0, False: 1800.0}  # quick, full: the host's budget plus start-up


def remote_command(host: Host, quick: bool, only: list[str]) -> list[str]:
    args = ["selftest", "--json", *(["--quick"] if quick else [])]
    for pattern in only:
        args += ["--only", pattern]
    return host.wb(*args)


def parse_answer(stdout: str) -> dict[str, Any] | None:
    """The last line of ``stdout`` that is a JSON object with ``checks``, or None."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and "checks" in data:
                return data
    return None


def run_remote(host: Host, *, quick: bool = False, only: list[str] | None = None,
               say: Callable[[str], None] = lambda _t: None,
               timeout: float | None = None) -> dict[str, Any]:
    """Run the selftest on ``host``; its stderr lines go to ``say`` (prefixed with the
    host's name) as they arrive; returns its JSON answer. HostError (one line, with the
    fix) when the host cannot be reached, times out or gives no answer."""
    timeout = TIMEOUT_S[quick] if timeout is None else timeout
    proc = subprocess.Popen(host.ssh_argv(remote_command(host, quick, only or [])),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    tail: list[str] = []

    def pump_stdout() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            tail[:] = [*tail[-19:], line]
            if line.strip():
                say(f"{host.name}: {line}")

    threads = [threading.Thread(target=f, daemon=True) for f in (pump_stdout, pump_stderr)]
    for t in threads:
        t.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise HostError(f"host {host.name!r} ({host.dest}): the selftest did not finish within "
                        f"{timeout:.0f} s — see `wb ls --kind selftest --store {host.store}` "
                        "there") from None
    finally:
        for t in threads:
            t.join(timeout=5)
    data = parse_answer("".join(out))
    if data is None:
        last = next((ln for ln in reversed(tail) if ln.strip()), "no output")
        hint = ("update workbench-lab there (its `wb` has no selftest)"
                if "No such command" in last else "check `wb hosts check "
                f"{host.name}` and --python")
        raise HostError(f"host {host.name!r} ({host.dest}): no selftest answer (exit "
                        f"{proc.returncode}): {last.strip()} — {hint}")
    return data


def record_remote(store: Any, host_name: str, data: dict[str, Any],
                  ) -> tuple[list[Result], RunRecord]:
    """Store a host's answer here as a selftest run of that host; (results, its row)."""
    from workbench.tracking import Run

    results = results_of(data)
    row = store.create_run(kind=KIND, status="running", launcher=REMOTE_LAUNCHER,
                           host=host_name, total_steps=len(results),
                           config={"quick": data.get("quick", False),
                                   "remote_run": data.get("run"),
                                   "remote_facts": data.get("facts")})
    run = Run(store, row, owner=True)
    recorder = Recorder(run, len(results))
    for i, result in enumerate(results):
        recorder.result(i, result)
    recorder.finish(results, data)
    return results, store.get_run(row.id)

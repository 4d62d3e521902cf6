"""Helpers for tests that drive the real `wb` command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textual.pilot import Pilot


def wb(*args: str, check: bool = False, timeout: float = 120,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `wb` console entry point in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"wb {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def wb_inproc(*args: str, check: bool = False, env: dict[str, str | None] | None = None,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `wb` in this process, as `wb` would run piped: the real entry point
    (`workbench.cli.main`, so usage errors are its one line and exit 2), under Typer's
    test runner (captured stdout/stderr, stdin from `input`, os.environ plus `env`, a value
    of None unsets). The consoles are rebuilt for the captured streams. An uncaught
    exception is a traceback on stderr and exit 1, as in a subprocess. Returns what `wb`
    returns; use `wb` where processes, signals, terminals or detaching are the point."""
    import traceback

    from typer.testing import CliRunner

    from workbench import cli
    from workbench.cli import common

    saved = common.console, common.err_console, sys.argv
    with CliRunner().isolation(input=input, env=env) as (out, err, _):
        common.console, common.err_console = common._consoles()
        sys.argv = ["wb", *args]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            common.console, common.err_console, sys.argv = saved
            sys.stdout.flush()
            sys.stderr.flush()
        stdout = out.getvalue().decode()
        stderr = err.getvalue().decode("utf-8", "backslashreplace")
    proc = subprocess.CompletedProcess(["wb", *args], code, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"wb {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; bounded in time and count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def until(pilot: Pilot[Any], predicate: Callable[[], Any], timeout: float,
                what: str) -> Any:
    """Let a Textual app (under Pilot) run until `predicate()` is truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


def assert_nothing_created(store_dir: Path) -> None:
    """No run row and no run folder: the store either does not exist or is empty."""
    from workbench.store import Store

    if not store_dir.exists():
        return
    folders = [p for p in store_dir.iterdir() if p.is_dir()]
    assert folders == [], f"run folders were created: {folders}"
    if (store_dir / "workbench.db").exists():
        with Store(store_dir, create=False) as st:
            assert st.runs() == []


def assert_rounded_ratio(ratio: float, num: float, den: float, places: int,
                         ratio_places: int, offset: float = 0.0) -> None:
    """`ratio` is round(num / den + offset, ratio_places) where the bench reported num and
    den rounded to `places` decimals: check it against every value the unrounded pair
    could give. The slack is the rounding's, so the check does not depend on how fast
    the machine is (at a few milliseconds, rounding to 1 us moves a ratio by 1e-3 and
    more; a fixed relative tolerance then fails on a faster machine)."""
    half = 0.5 * 10.0 ** -places
    lo = (num - half) / (den + half)
    hi = (num + half) / (den - half) if den > half else float("inf")
    slack = 0.5 * 10.0 ** -ratio_places + 1e-12
    assert lo + offset - slack <= ratio <= hi + offset + slack, (ratio, num, den, lo, hi)

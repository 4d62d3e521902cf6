"""Smoke test in a real terminal: `wb` (no arguments) inside tmux at 80x24 with
TERM=xterm-256color, as a user over SSH would start it. The pane is captured and
must show the run; `q` must end the program with exit code 0."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for
from workbench.store import Store
from workbench.tracking import Run

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed (apt-get install tmux; .ci/run installs it)")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    """A private tmux server (its own socket name), killed afterwards whatever happens."""
    base = [str(TMUX), "-L", f"wb-test-{os.getpid()}-{time.monotonic_ns()}", "-f", "/dev/null"]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, timeout=10)


def capture(tmux: list[str]) -> str:
    proc = subprocess.run([*tmux, "capture-pane", "-p", "-t", "wb"], capture_output=True,
                          text=True, timeout=10)
    return proc.stdout


def test_wb_opens_the_dashboard_in_a_real_terminal(tmp_path: Path, store: Store,
                                                   store_dir: Path, tmux: list[str]) -> None:
    row = store.create_run(kind="pretrain", name="smoke-run", status="finished",
                           launcher="sdk", total_steps=10)
    run = Run(store, row, owner=False)
    for step in range(10):
        run.log({"train/loss": 2.0 - step * 0.1}, step=step)
    run.finish()

    wb = shutil.which("wb") or str(Path(sys.executable).parent / "wb")
    done = tmp_path / "exit-code"
    env = {"TERM": "xterm-256color", "WB_STORE": str(store_dir),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": os.environ["PATH"]}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = f"env {exports} {shlex.quote(wb)}; echo $? > {shlex.quote(str(done))}"
    subprocess.run([*tmux, "new-session", "-d", "-s", "wb", "-x", "80", "-y", "24", command],
                   check=True, timeout=10)

    screen = wait_for(lambda: (text := capture(tmux)) and "smoke-run" in text and text,
                      30, "the run in the captured pane", interval=0.1)
    lines = screen.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    shown = next(line for line in lines if "smoke-run" in line)
    assert "finished" in shown and "9/10" in shown
    assert "Quit" in screen  # the footer

    subprocess.run([*tmux, "send-keys", "-t", "wb", "q"], check=True, timeout=10)
    wait_for(done.exists, 15, "wb to exit after q", interval=0.1)
    assert done.read_text().strip() == "0"

"""Helpers for tests that drive the real `wb` command."""

from __future__ import annotations

import os
import subprocess
import sys


def wb(*args: str, check: bool = False, timeout: float = 120,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `wb` console entry point in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"wb {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc

"""Shared fixtures: every test gets its own store folder and a clean environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workbench.store import Store

pytest_plugins = ["tests.sshd"]  # the `sshd` fixture: a real OpenSSH server on loopback


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes ./runs, or inherits a launched run's identity."""
    monkeypatch.setenv("WB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # the TUI's saved theme
    monkeypatch.delenv("WB_RUN_ID", raising=False)
    monkeypatch.delenv("WB_RESUME_DIR", raising=False)
    # Exact row counts stay exact; tests/test_sysmetrics.py turns sampling back on.
    monkeypatch.setenv("WB_SYSTEM_METRICS", "0")
    monkeypatch.setenv("WB_BENCH_CACHE", str(tmp_path / "bench-cache"))  # not /tmp's
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_dir: Path) -> Store:
    st = Store(store_dir)
    yield st
    st.close()


@pytest.fixture
def one_thread() -> Any:
    """Decode steps are many tiny ops: one thread is faster and immune to a busy host."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""The `sshd` fixture: a real OpenSSH server on 127.0.0.1 for the remote-host tests
(workbench/sshd.py), with `WB_SSH_CONFIG` pointing ssh at its client config.
`.ci/run` installs openssh-server; without it the tests skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.sshd import SSHServer, available, loopback_sshd

__all__ = ["SSHServer", "sshd"]


@pytest.fixture
def sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SSHServer]:
    if not available():
        pytest.skip("openssh-server is not installed (.ci/run installs it)")
    with loopback_sshd(tmp_path / "sshd") as server:  # RuntimeError: sshd did not start
        monkeypatch.setenv("WB_SSH_CONFIG", str(server.config))
        yield server

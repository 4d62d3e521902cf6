"""A throwaway OpenSSH server on 127.0.0.1: what the remote-host tests and `wb bench
mirror` connect to when there is no second machine.

It makes a host key and a user key, an sshd_config that listens on a free loopback
port with key-only login, and an ssh client config (for `WB_SSH_CONFIG`) whose
known_hosts is seeded with the host key, so host-key checking stays on and no prompt
can appear. It needs openssh-server (`/usr/sbin/sshd`; `.ci/run` installs it).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
START_TIMEOUT_S = 10.0
ALIAS = "wbtest"


@dataclass
class SSHServer:
    alias: str  # the Host name in `config`
    port: int
    config: Path  # ssh client config (WB_SSH_CONFIG)
    folder: Path
    host_pub: str  # "ssh-ed25519 AAAA..."


def available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)


@contextmanager
def loopback_sshd(folder: Path) -> Iterator[SSHServer]:
    """Run sshd on 127.0.0.1 with its keys and configs in `folder` (made here) until
    the block ends. RuntimeError when sshd is missing or does not start."""
    if not available():
        raise RuntimeError("openssh-server is not installed (apt-get install openssh-server)")
    folder.mkdir(parents=True)
    _keygen(folder / "hostkey")
    _keygen(folder / "userkey")
    shutil.copy(folder / "userkey.pub", folder / "authorized_keys")
    os.chmod(folder / "authorized_keys", 0o600)
    port = _free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/hostkey\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {folder}/sshd.pid\n")
    host_pub = " ".join((folder / "hostkey.pub").read_text().split()[:2])
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (folder / "ssh_config").write_text(
        f"Host {ALIAS}\n  HostName 127.0.0.1\n  Port {port}\n  User {getpass.getuser()}\n"
        f"  IdentityFile {folder}/userkey\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {folder}/known_hosts\n  StrictHostKeyChecking yes\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder
    with open(folder / "sshd.log", "w") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_listening(proc, port, folder)
            yield SSHServer(ALIAS, port, folder / "ssh_config", folder, host_pub)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, folder: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(folder / 'sshd.log').read_text()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} in "
                                   f"{START_TIMEOUT_S:g} s") from None
            time.sleep(0.05)

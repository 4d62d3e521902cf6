"""Remote hosts: a TOML file of SSH destinations, and the system `ssh` to reach them.

`hosts.toml` in the config folder (`workbench.paths.config_dir`) holds, per host, its
SSH destination (anything `ssh` accepts: user@host or an alias from ~/.ssh/config),
port, remote Python and remote store. No secrets: keys, agents and passwords stay
with ssh, which runs with BatchMode (never a prompt) and host-key checking as the user
configured it, and reuses one connection per host (ControlMaster, socket in a 0700
folder). `WB_SSH_CONFIG` points ssh at another config file (`ssh -F`): isolated
setups and the tests use it.

Every remote command is a list of arguments joined with `shlex.join`, so a name or a
path holding spaces, quotes or semicolons reaches the remote side as one argument.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from workbench.paths import config_dir
from workbench.store import StoreError, validate_name

LOCAL = "local"
CHECK_TIMEOUT_S = 20.0

# Run on the host by `check`: one JSON line; each probe fails on its own.
PROBE = r"""
import json, os, platform, shutil, subprocess, sys
out = {"python": platform.python_version(), "executable": sys.executable}
try:
    import workbench
    out["workbench"] = workbench.__version__
except Exception as exc:
    out["workbench"] = None
store = os.path.expanduser(sys.argv[1])
probe = store
while not os.path.exists(probe):
    probe = os.path.dirname(probe) or "/"
out["disk_free_bytes"] = shutil.disk_usage(probe).free
out["gpus"] = []
if shutil.which("nvidia-smi"):
    q = "name,memory.total,memory.used,utilization.gpu"
    r = subprocess.run(["nvidia-smi", "--query-gpu=" + q, "--format=csv,noheader,nounits"],
                       capture_output=True, text=True, timeout=10)
    for line in r.stdout.strip().splitlines():
        name, total, used, util = [x.strip() for x in line.split(",")]
        out["gpus"].append({"name": name, "memory_total_mib": int(total),
                            "memory_used_mib": int(used), "utilization": int(util)})
print(json.dumps(out))
"""


class HostError(ValueError):
    """A host that cannot be added, found or reached. One line: the problem and the fix."""


@dataclass(frozen=True)
class Host:
    name: str
    dest: str  # ssh destination: user@host or an ~/.ssh/config alias
    port: int | None = None
    python: str = "python3"  # the remote interpreter that has workbench installed
    store: str = "~/runs"  # the remote store folder

    def ssh_argv(self, command: list[str]) -> list[str]:
        """`ssh ... DEST -- 'quoted command'` with BatchMode and connection reuse."""
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if cfg := os.environ.get("WB_SSH_CONFIG"):
            argv += ["-F", cfg]
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_folder()}/%C",
                 "-o", "ControlPersist=60"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        return [*argv, "--", self.dest, shlex.join(command)]

    def run(self, command: list[str], timeout: float = CHECK_TIMEOUT_S,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command on the host; `input` goes to its stdin (a spec, say)."""
        return subprocess.run(self.ssh_argv(command), capture_output=True, text=True,
                              timeout=timeout, input=input,
                              stdin=subprocess.DEVNULL if input is None else None)

    def wb(self, *args: str) -> list[str]:
        """The remote `wb ARGS --store STORE` command line, run by the host's Python."""
        return [self.python, "-m", "workbench.cli", *args, "--store", self.store]

    def address(self) -> str:
        """The host name or address ssh connects to (an alias resolved by `ssh -G`):
        what other machines use to reach this host, e.g. as a rendezvous master."""
        argv = self.ssh_argv([])[:-3]  # the options, without `-- DEST COMMAND`
        try:
            r = subprocess.run([*argv, "-G", self.dest], capture_output=True, text=True,
                               timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            r = None
        for line in (r.stdout if r and r.returncode == 0 else "").splitlines():
            key, _, value = line.partition(" ")
            if key == "hostname" and value:
                return value
        return self.dest.rpartition("@")[2]

    def check(self) -> dict[str, Any]:
        """Python and workbench versions, GPUs and free disk, from the host itself."""
        try:
            r = self.run([self.python, "-c", PROBE, self.store])
        except subprocess.TimeoutExpired:
            raise HostError(f"host {self.name!r} ({self.dest}) did not answer within "
                            f"{CHECK_TIMEOUT_S:.0f} s — check the address and network") from None
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise HostError(f"host {self.name!r} ({self.dest}) failed: {last} — check "
                            "`ssh` to it works without a prompt, and --python")
        return json.loads(r.stdout.strip().splitlines()[-1])


def control_folder() -> Path:
    """ssh ControlMaster sockets: a 0700 folder of this user's (short path: the socket
    path limit is about 100 bytes)."""
    folder = Path(f"/tmp/wb-ssh-{os.getuid()}")
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def hosts_path() -> Path:
    return config_dir() / "hosts.toml"


def load_hosts() -> dict[str, Host]:
    path = hosts_path()
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HostError(f"cannot read {path}: {exc} — fix or remove the file") from None
    return {name: Host(name=name, **fields) for name, fields in data.get("hosts", {}).items()}


def save_hosts(hosts: dict[str, Host]) -> None:
    """Written to a temporary file (mode 0600) and renamed: never half a file."""
    path = hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"hosts": {h.name: {k: v for k, v in asdict(h).items()
                               if k != "name" and v is not None} for h in hosts.values()}}
    tmp = path.with_suffix(".toml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tomli_w.dumps(data))
    os.replace(tmp, path)


def add_host(host: Host) -> None:
    try:
        validate_name(host.name, "host name")
    except StoreError as exc:
        raise HostError(str(exc)) from None
    if host.name == LOCAL:
        raise HostError("'local' is this machine — pick another host name")
    if not host.dest or host.dest.startswith("-") or any(c.isspace() for c in host.dest):
        raise HostError(f"invalid ssh destination {host.dest!r}: use user@host or an "
                        "alias from ~/.ssh/config")
    if host.port is not None and not 1 <= host.port <= 65535:
        raise HostError(f"port {host.port} must be in 1..65535")
    hosts = load_hosts()
    hosts[host.name] = host
    save_hosts(hosts)


def remove_host(name: str) -> None:
    hosts = load_hosts()
    if name not in hosts:
        raise HostError(f"no host {name!r} — see `wb hosts ls`")
    del hosts[name]
    save_hosts(hosts)


def get_host(name: str) -> Host:
    hosts = load_hosts()
    if name not in hosts:
        known = ", ".join(hosts) or "none yet"
        raise HostError(f"no host {name!r} (configured: {known}) — add it with "
                        "`wb hosts add NAME DEST`")
    return hosts[name]


def local_check(store: str | os.PathLike[str] = ".",
                timeout: float = CHECK_TIMEOUT_S) -> dict[str, Any]:
    """`Host.check` for this machine: the same PROBE, run by this interpreter without
    ssh, so the dashboard's "local" row reads the same fields (GPUs from nvidia-smi
    included) through the same code as every remote host. `store` is the folder
    whose disk is measured (the local run store)."""
    import sys  # local: only this function runs the interpreter itself

    try:
        r = subprocess.run([sys.executable, "-c", PROBE, os.fspath(store)],
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HostError(f"the local probe did not finish within {timeout:.0f} s — is "
                        "nvidia-smi hanging?") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise HostError(f"the local probe failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])

"""Remote hosts (`wb hosts`) against a real sshd on 127.0.0.1: the hosts file, `check`
over ssh, quoting of remote arguments, host-key checking and refusals."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from tests.helpers import wb, wb_inproc
from tests.sshd import SSHServer
from workbench.hosts import Host, hosts_path, load_hosts

NASTY = "a b'c\";d $(touch pwned) `x` & e"


def test_add_ls_rm_keep_a_private_toml_file(tmp_path: Path) -> None:
    r = wb_inproc("hosts", "add", "gpu1", "me@gpu1.lab", "--port", "2222", "--store",
                  "/data/runs")
    assert r.returncode == 0, r.stderr
    hosts = load_hosts()
    assert hosts["gpu1"] == Host("gpu1", "me@gpu1.lab", 2222, "python3", "/data/runs")
    assert stat.S_IMODE(os.stat(hosts_path()).st_mode) == 0o600  # not world-readable
    listed = json.loads(wb_inproc("hosts", "ls", "--json").stdout)
    assert [h["name"] for h in listed] == ["gpu1"]
    assert wb_inproc("hosts", "rm", "gpu1").returncode == 0 and load_hosts() == {}


def test_bad_hosts_are_refused_in_one_line() -> None:
    for args, expected in [
        (["add", "../x", "me@h"], "invalid host name"),
        (["add", "local", "me@h"], "'local' is this machine"),
        (["add", "h", "me@h", "--port", "70000"], "port 70000"),
        (["add", "h", "me@h x"], "invalid ssh destination"),
        (["check", "nope"], "no host 'nope'"),
        (["rm", "nope"], "no host 'nope'"),
    ]:
        r = wb_inproc("hosts", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert load_hosts() == {}  # nothing half-written


def test_a_spec_may_name_a_configured_host_only() -> None:
    r = wb_inproc("launch", "muon-tiny", "--set", "resources.host=gpu1", "--detach")
    assert r.returncode == 2 and "host 'gpu1' is not configured" in r.stderr
    wb_inproc("hosts", "add", "gpu1", "me@gpu1.lab", check=True)
    from workbench.spec import load_spec

    assert load_spec("muon-tiny", ["resources.host=gpu1"]).spec.resources.host == "gpu1"


def test_check_reports_versions_gpus_and_disk_over_real_ssh(sshd: SSHServer,
                                                           tmp_path: Path) -> None:
    store = tmp_path / f"remote {NASTY}"
    wb_inproc("hosts", "add", "box", sshd.alias, "--python", sys.executable, "--store",
              str(store), check=True)
    r = wb("hosts", "check", "box", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["workbench"] == __import__("workbench").__version__
    assert info["disk_free_bytes"] > 0 and info["gpus"] == []  # no nvidia-smi here
    human = wb("hosts", "check", "box")
    assert "no GPUs" in human.stdout and "GiB free" in human.stdout


def test_remote_arguments_arrive_as_one_argument_each(sshd: SSHServer, tmp_path: Path) -> None:
    host = Host("box", sshd.alias, python=sys.executable)
    os.chdir(tmp_path)
    r = host.run([sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))",
                  NASTY, "two words", ";", "--"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [NASTY, "two words", ";", "--"]
    assert not list(Path.home().glob("pwned")) and not (tmp_path / "pwned").exists()


def test_host_key_checking_stays_on_and_never_prompts(sshd: SSHServer) -> None:
    (sshd.folder / "known_hosts").write_text(  # a different key for that address
        f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    wb_inproc("hosts", "add", "box", sshd.alias, "--python", sys.executable, check=True)
    r = wb("hosts", "check", "box", timeout=30)
    assert r.returncode == 1
    assert "failed" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

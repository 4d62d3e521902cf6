"""Remote runs over a real sshd on 127.0.0.1: `wb launch --host`, the live mirror, a
dropped connection, `wb stop` / `wb resume` on the host, quoting and file modes.

The "host" is this machine reached through ssh, with its own store folder (a path
holding spaces, quotes and a semicolon), so the remote and local stores are separate.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for, wb, wb_inproc
from tests.sshd import SSHServer
from workbench.store import ACTIVE_STATUSES, Store

pytestmark = pytest.mark.timeout(240)

# Logs every record kind, NaN and inf included, a little at a time.
SCRIPT = """
import math, sys, time
import workbench
run = workbench.init()
steps, pause = run.config["steps"], run.config["pause"]
for step in range(steps):
    run.log({"train/loss": 1.0 / (step + 1), "odd": math.nan if step == 3 else
             (math.inf if step == 4 else step)}, step=step)
    if step % 10 == 0:
        run.log_dist("rollout/length", [step, step + 1, step + 5], step=step)
        run.log_matrix("attn/max_logit_heads", [[step, 1.0], [2.0, 3.0]], step=step)
        run.event("note", step=step, text=f"step {step}")
    time.sleep(pause)
run.finish()
"""

NASTY_STORE = "remote store; it's \"here\""


@pytest.fixture
def box(sshd: SSHServer, tmp_path: Path) -> dict[str, Any]:
    """A configured host `box` (the sshd), its store, and a script spec to launch."""
    remote = tmp_path / NASTY_STORE
    wb_inproc("hosts", "add", "box", sshd.alias, "--python", sys.executable, "--store",
              str(remote), check=True)
    script = tmp_path / "logger.py"
    script.write_text(SCRIPT)
    spec = tmp_path / "logger.toml"
    spec.write_text(f'kind = "script"\ntotal_steps = 200\n[script]\ncommand = ["python", '
                    f'"{script}"]\n[config]\nsteps = 200\npause = 0.01\n')
    yield {"remote": remote, "spec": spec, "sshd": sshd}
    _kill_runs(remote)
    _kill_runs(tmp_path / "store")


def _kill_runs(root: Path) -> None:
    """Leave no worker or mirror behind (bounded: one pass, SIGKILL)."""
    if not (root / "workbench.db").exists():
        return
    with Store(root, create=False) as st:
        for row in st.runs():
            worker = row.pid if row.launcher == "local" else None
            for pid in (worker, st.mirror(row.id)["pid"]):
                if pid and row.status in ACTIVE_STATUSES:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def _rows(root: Path, run_id: str) -> list[tuple]:
    """Every record of a run, as comparable tuples without store-specific ids."""
    with Store(root, create=False) as st:
        out = []
        for r in st.records(run_id, limit=1_000_000):
            fields = {**asdict(r), "type": r.type}
            fields.pop("id")
            out.append(tuple(sorted((k, repr(v)) for k, v in fields.items())))
        return out


def _log(root: Path, run_id: str) -> str:
    path = root / run_id / "stdout.log"
    return path.read_text() if path.exists() else ""


def _by_kind(rows: list[tuple]) -> dict[str, list[tuple]]:
    """Rows per record kind, in order. A batch is written kind by kind (on both sides),
    so only the order within a kind is the order of logging."""
    out: dict[str, list[tuple]] = {}
    for row in rows:
        out.setdefault(dict(row)["type"], []).append(row)
    return out


def _status(root: Path, run_id: str) -> str | None:
    if not (root / "workbench.db").exists():
        return None
    with Store(root, create=False) as st:
        return st.get_run(run_id).status


def _wait_ended(root: Path, run_id: str, timeout: float = 120) -> str:
    return wait_for(lambda: (s := _status(root, run_id)) not in (*ACTIVE_STATUSES, None) and s,
                    timeout, f"run {run_id} in {root} to end", interval=0.2)


def _ssh_processes(sshd: SSHServer) -> list[int]:
    """Pids of this test's ssh clients and ControlMaster (their command line names the
    fixture's ssh config)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ssh") and str(sshd.config).encode() in argv:
            pids.append(int(entry))
    return pids


def test_remote_launch_is_mirrored_exactly(box: dict[str, Any], store_dir: Path) -> None:
    r = wb("launch", str(box["spec"]), "--host", "box", "--detach")
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.strip()
    with Store(store_dir, create=False) as st:
        row = st.get_run(run_id)
    assert (row.launcher, row.host, row.name) == ("ssh", "box", "logger-1")
    assert _wait_ended(box["remote"], run_id) == "finished"
    assert _wait_ended(store_dir, run_id) == "finished"
    remote, local = _rows(box["remote"], run_id), _rows(store_dir, run_id)
    assert len(local) == len(remote) > 200 and Counter(local) == Counter(remote)
    assert _by_kind(local) == _by_kind(remote)  # each kind in the same order too
    with Store(store_dir, create=False) as st:
        assert st.get_run(run_id).last_step == 199
        wait_for(lambda: st.mirror(run_id)["state"] == "done", 30, "the mirror to end")
    assert _log(store_dir, run_id) == _log(box["remote"], run_id)  # its output too
    assert f"run {run_id} finished" in _log(store_dir, run_id)
    shown = wb_inproc("show", run_id, "--json", check=True).stdout
    assert '"status": "finished"' in shown
    _assert_private(store_dir)
    _assert_private(box["remote"])


def test_a_dropped_connection_loses_and_repeats_nothing(box: dict[str, Any],
                                                        store_dir: Path) -> None:
    spec = box["spec"]
    r = wb("launch", str(spec), "--host", "box", "--set", "config.pause=0.03", "--detach")
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.strip()

    def mirrored() -> int:
        with Store(store_dir, create=False) as st:
            return st.mirror(run_id)["cursor"]

    kills = 0
    for _ in range(2):  # cut every ssh connection (client and master) twice mid-run
        seen = mirrored()
        wait_for(lambda s=seen: mirrored() > s, 60, "the mirror to copy more rows")
        pids = _ssh_processes(box["sshd"])
        assert pids, "no ssh process to kill"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        assert _status(box["remote"], run_id) in ACTIVE_STATUSES  # the run goes on
        time.sleep(0.5)
    assert _wait_ended(box["remote"], run_id) == "finished"  # unaffected
    assert _wait_ended(store_dir, run_id) == "finished"
    remote, local = _rows(box["remote"], run_id), _rows(store_dir, run_id)
    assert len(local) == len(remote)  # no gap, no duplicate
    assert _by_kind(local) == _by_kind(remote)
    log = (store_dir / run_id / "mirror.log").read_text()
    assert kills >= 2 and log.count("retrying") >= 2, log
    wait_for(lambda: _log(store_dir, run_id) == _log(box["remote"], run_id), 30,
             "the mirrored output to match, byte for byte")


def test_stop_and_resume_act_on_the_host(box: dict[str, Any], store_dir: Path) -> None:
    r = wb("launch", str(box["spec"]), "--host", "box", "--set", "config.pause=0.05",
           "--set", "config.steps=1000", "--detach")
    run_id = r.stdout.strip()
    wait_for(lambda: _status(store_dir, run_id) == "running", 60, "the mirrored run to start")
    r = wb("stop", run_id)
    assert r.returncode == 0 and "(on box)" in r.stdout, r.stderr
    assert _status(box["remote"], run_id) == "stopped"
    assert _wait_ended(store_dir, run_id, timeout=60) == "stopped"
    r = wb("resume", run_id, "--detach")
    assert r.returncode == 0, r.stderr
    new_id = r.stdout.strip()
    with Store(store_dir, create=False) as st:
        row = st.get_run(new_id)
    assert (row.resumed_from, row.host, row.launcher) == (run_id, "box", "ssh")
    wait_for(lambda: _status(box["remote"], new_id) == "running", 60, "the resumed run")
    wb("stop", new_id, check=True)
    assert _wait_ended(store_dir, new_id, timeout=60) == "stopped"


def test_bad_remote_input_is_refused_before_anything_starts(box: dict[str, Any],
                                                            store_dir: Path) -> None:
    for args, expected in [
        (["--name", "a;b"], "invalid run name"),
        (["--name", "../up"], "invalid run name"),
        (["--host", "nowhere"], "host 'nowhere' is not configured"),
        (["muon-tiny", "adamw-tiny"], "group cannot run on a remote host"),
    ]:
        specs = args[:2] if args[0] == "muon-tiny" else [str(box["spec"]), *args]
        extra = ["--host", "box"] if args[0] == "muon-tiny" or args[0] == "--name" else []
        r = wb("launch", *specs, *extra, "--detach")
        assert r.returncode == 2, (args, r.stderr)
        assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (store_dir / "workbench.db").exists() or not Store(store_dir).runs()
    assert not (box["remote"] / "workbench.db").exists()  # nothing reached the host


def test_an_unreachable_host_fails_in_one_line(sshd: SSHServer, tmp_path: Path,
                                               store_dir: Path) -> None:
    wb_inproc("hosts", "add", "down", "127.0.0.1", "--port", "1", "--store",
              str(tmp_path / "r"), check=True)
    r = wb("launch", "charlm", "--host", "down", "--detach")
    assert r.returncode == 1 and "cannot reach host 'down'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (store_dir / "workbench.db").exists() or not Store(store_dir).runs()


def _assert_private(root: Path) -> None:
    """No file or folder of a store is readable by group or others."""
    assert stat.S_IMODE(root.stat().st_mode) & 0o077 == 0
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {oct(mode)}"


@pytest.mark.slow
def test_two_nodes_on_two_hosts_match_one_node(box: dict[str, Any], sshd: SSHServer,
                                               tmp_path: Path, store_dir: Path) -> None:
    """`resources.nodes = 2` over two configured hosts (the same sshd, two stores): node
    0's mirrored losses equal a one-node, two-rank run's with the same global batch."""
    from tests.test_multinode import free_port, spec_text
    from tests.test_pretrain import losses

    wb_inproc("hosts", "add", "box2", sshd.alias, "--python", sys.executable, "--store",
              str(tmp_path / "second store"), check=True)
    one_spec = tmp_path / "one.toml"
    one_spec.write_text(spec_text(2, 1))
    one = wb("launch", str(one_spec), "--detach", check=True).stdout.strip()
    assert _wait_ended(store_dir, one, timeout=180) == "finished"
    two_spec = tmp_path / "two.toml"
    two_spec.write_text(spec_text(1, 2))
    r = wb("launch", str(two_spec), "--set", 'resources.hosts=["box", "box2"]', "--set",
           f"resources.rdzv_port={free_port()}", "--detach")
    assert r.returncode == 0, r.stderr
    node0 = r.stdout.strip()
    assert _wait_ended(store_dir, node0, timeout=180) == "finished", (
        box["remote"] / node0 / "stdout.log").read_text()[-2000:]
    with Store(store_dir, create=False) as st:
        row = st.get_run(node0)
        placed = row.config["node_runs"]
        a, b = losses(st, one), losses(st, node0)
    assert (row.launcher, row.host) == ("ssh", "box")
    assert [(n["node"], n["host"]) for n in placed] == [(0, "box"), (1, "box2")]
    assert _wait_ended(tmp_path / "second store", placed[1]["run"]) == "finished"
    assert sorted(a) == sorted(b) and len(a) > 0
    for step, value in a.items():
        assert b[step] == pytest.approx(value, rel=1e-6), step


def test_bench_mirror_prints_its_figures() -> None:
    """`wb bench mirror --quick --json`: its own loopback sshd, the issue's fields."""
    from workbench.sshd import available

    if not available():
        pytest.skip("openssh-server is not installed (.ci/run installs it)")
    r = wb("bench", "mirror", "--quick", "--json", timeout=200)
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert figures["rows_per_s"] > 0 and figures["bench_rows"] == 20_300
    assert figures["catch_up_rows"] >= 20_300  # plus any system metrics
    assert 0 < figures["lag_p50_s"] <= figures["lag_p99_s"] <= figures["lag_max_s"]
    assert figures["lag_rows"] == 300

"""The local launcher: detached workers, heartbeats, endings, stop/resume, lost runs, and
multi-process runs under torchrun. Real processes, real signals, a real SQLite store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for, wb, wb_inproc
from workbench.launch import local
from workbench.run_record import RunRecord
from workbench.spec import load_spec
from workbench.store import Store

HEADER = """\
import os, signal, sys, time
from pathlib import Path
import workbench

HERE = Path(__file__).parent
run = workbench.init()


def wait_file(name, timeout=60.0):
    deadline = time.time() + timeout
    while not (HERE / name).exists():
        if time.time() > deadline:
            sys.exit("timed out waiting for " + name)
        time.sleep(0.02)
"""


# -- helpers -----------------------------------------------------------------------------


def script_spec(tmp_path: Path, name: str, body: str, *, procs: int = 1) -> Path:
    """A script-kind spec running HEADER + body, both written into tmp_path (the cwd).

    The command names the script by a relative path, as a user would."""
    (tmp_path / f"{name}.py").write_text(HEADER + textwrap.dedent(body))
    spec = tmp_path / f"{name}.toml"
    spec.write_text(f'kind = "script"\n\n[script]\ncommand = ["python", "{name}.py"]'
                    f"\n\n[resources]\nprocs = {procs}\n")
    return spec


def launch(spec: Path, *args: str) -> str:
    proc = wb("launch", str(spec), "--detach", *args, check=True, timeout=60)
    return proc.stdout.strip()


def get_run(store_dir: Path, run_id: str) -> RunRecord:
    with Store(store_dir, create=False) as st:
        return st.get_run(run_id)


def wait_status(store_dir: Path, run_id: str, statuses: tuple[str, ...],
                timeout: float = 60) -> RunRecord:
    return wait_for(lambda: (row := get_run(store_dir, run_id)).status in statuses and row,
                    timeout, f"run {run_id} to become {'/'.join(statuses)}")


def log_text(store_dir: Path, run_id: str) -> str:
    return (store_dir / run_id / "stdout.log").read_text()


def proc_stat(pid: int) -> list[str] | None:
    """[state, ppid, pgrp, session, ...] of a live (non-zombie) process, else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields


def alive(pid: int) -> bool:
    return proc_stat(pid) is not None


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := proc_stat(int(entry))) and int(st[2]) == pgid:
            members.append(int(entry))
    return members


def processes_of_store(store_dir: Path) -> list[int]:
    """Every live process launched for this store (its environment names the store)."""
    wanted = {f"WB_STORE={store_dir}".encode(), f"WB_STORE={store_dir.resolve()}".encode()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted & set(env) and alive(int(entry)):
            found.append(int(entry))
    return found


def scalar_rows(store_dir: Path, run_id: str) -> list[tuple]:
    with Store(store_dir, create=False) as st:
        return st.scalars(run_id)


@pytest.fixture(autouse=True)
def _no_leftover_processes(store_dir: Path) -> Iterator[None]:
    """Teardown: SIGKILL whatever a test left running for its store, then check."""
    yield
    for pid in processes_of_store(store_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    wait_for(lambda: not processes_of_store(store_dir), 10, "leftover processes to die")


# -- the detached worker -----------------------------------------------------------------


def test_worker_is_detached_heartbeats_and_finishes(tmp_path: Path, store: Store,
                                                    store_dir: Path) -> None:
    spec = script_spec(tmp_path, "lifecycle", """\
        print("hello from the script", flush=True)
        for step in range(3):
            run.log({"x": step}, step=step)
        wait_file("go")
        print("script done", flush=True)
    """)
    launched = local.start(store, load_spec(str(spec)))
    row, worker = launched.record, launched.process
    try:
        assert get_run(store_dir, row.id).status == "queued"
        running = wait_status(store_dir, row.id, ("running",), timeout=30)
        pid = running.pid
        assert pid == worker.pid
        # Its own session and process group: not the test's.
        assert os.getsid(pid) != os.getsid(0)
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid
        wait_for(lambda: "hello from the script" in log_text(store_dir, row.id), 30,
                 "the script's output in stdout.log")
        beat = get_run(store_dir, row.id).heartbeat
        wait_for(lambda: get_run(store_dir, row.id).heartbeat > beat, 10,
                 "the heartbeat to advance")
        assert get_run(store_dir, row.id).status == "running"
        (tmp_path / "go").touch()
        done = wait_status(store_dir, row.id, ("finished", "failed"), timeout=30)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    assert done.status == "finished" and done.exit_code == 0
    assert done.ended >= done.started >= done.created
    assert done.last_step == 2
    text = log_text(store_dir, row.id)
    assert "script done" in text and f"run {row.id} finished" in text
    assert (store_dir / row.id / "spec.toml").read_text() == row.spec


def test_failing_script_is_failed_with_a_traceback(tmp_path: Path, store_dir: Path) -> None:
    spec = script_spec(tmp_path, "fails", """\
        run.log({"x": 1.0}, step=0)
        raise ValueError("boom from the script")
    """)
    fg = wb("launch", str(spec), timeout=90)  # in the foreground: exits 1 when it fails
    assert fg.returncode == 1, (fg.stdout, fg.stderr)
    assert "ValueError: boom from the script" in fg.stdout
    assert fg.stdout.strip().splitlines()[-1].startswith("failed fails-1 (")
    with Store(store_dir, create=False) as st:
        (row,) = st.runs()
    run_id = row.id
    row = wait_status(store_dir, run_id, ("finished", "failed", "stopped", "lost"))
    assert row.status == "failed" and row.exit_code == 1
    text = log_text(store_dir, run_id)
    assert "Traceback (most recent call last)" in text
    assert "ValueError: boom from the script" in text
    show = json.loads(wb_inproc("show", run_id, "--json", check=True).stdout)
    assert show["status"] == "failed" and show["latest"]["x"]["value"] == 1.0


# -- stop ----------------------------------------------------------------------------------

STOPPABLE = """\
    stop = False


    def on_term(*_):
        global stop
        stop = True


    signal.signal(signal.SIGTERM, on_term)
    resume = os.environ.get("WB_RESUME_DIR")
    print(f"RESUME_DIR={resume}", flush=True)
    if resume:
        for step in range(3):
            run.log({"resumed": step}, step=step)
        wait_file("go")
        sys.exit(0)
    step = 0
    deadline = time.time() + 60
    while not stop and time.time() < deadline:
        run.log({"x": step}, step=step)
        step += 1
        time.sleep(0.02)
    (HERE / "marker").write_text(str(step))
    run.event("checkpoint", step=step, reason="sigterm")
    print(f"caught SIGTERM at step {step}", flush=True)
"""


def test_stop_sigterm_then_resume(tmp_path: Path, store_dir: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spec = script_spec(tmp_path, "stoppable", STOPPABLE)
    run_id = launch(spec)
    wait_for(lambda: (get_run(store_dir, run_id).last_step or 0) >= 3, 30, "a few steps")
    proc = wb("stop", run_id, "--grace", "20", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"run {run_id} stopped"
    row = get_run(store_dir, run_id)
    assert row.status == "stopped" and row.exit_code == 0
    step = int((tmp_path / "marker").read_text())
    assert "caught SIGTERM" in log_text(store_dir, run_id)
    with Store(store_dir, create=False) as st:
        assert [e.step for e in st.events(run_id, kind="checkpoint")] == [step]
    # A second stop is harmless.
    assert "already stopped" in wb_inproc("stop", run_id, check=True).stdout

    # From another folder: the launch folder was pinned in the stored spec.
    assert f'cwd = "{tmp_path.resolve()}"' in row.spec
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    proc = wb("resume", run_id, "--detach", timeout=60)
    assert proc.returncode == 0, proc.stderr
    new_id = proc.stdout.strip()
    assert new_id != run_id
    new = wait_status(store_dir, new_id, ("running",), timeout=30)
    assert new.resumed_from == run_id
    assert new.spec == row.spec
    wait_for(lambda: "RESUME_DIR=" in log_text(store_dir, new_id), 30, "the resumed script")
    assert f"RESUME_DIR={store_dir.resolve() / run_id}" in log_text(store_dir, new_id)
    # Resuming a running run is refused: one line, exit 2, no new run.
    before = {r["id"] for r in json.loads(wb_inproc("ls", "--json", check=True).stdout)}
    refused = wb_inproc("resume", new_id)
    assert refused.returncode == 2
    assert len(refused.stderr.splitlines()) == 1 and "stop it first" in refused.stderr
    assert {r["id"] for r in json.loads(wb_inproc("ls", "--json", check=True).stdout)} == before
    (tmp_path / "go").touch()
    done = wait_status(store_dir, new_id, ("finished", "failed", "stopped", "lost"))
    assert done.status == "finished"
    shown = json.loads(wb_inproc("show", new_id, "--json", check=True).stdout)
    assert shown["resumed_from"] == run_id


def test_ctrl_c_in_a_foreground_launch_stops_the_run(tmp_path: Path, store_dir: Path) -> None:
    spec = script_spec(tmp_path, "interrupted", STOPPABLE)
    fg = subprocess.Popen([sys.executable, "-m", "workbench.cli", "launch", str(spec)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        def started() -> RunRecord | None:
            if not (store_dir / "workbench.db").exists():
                return None
            with Store(store_dir, create=False) as st:
                rows = st.runs()
            return rows[0] if rows and (rows[0].last_step or 0) >= 3 else None

        row = wait_for(started, 30, "the foreground run to log")
        fg.send_signal(signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground
        stdout, stderr = fg.communicate(timeout=60)
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait(timeout=10)
    assert fg.returncode == 0, (stdout, stderr)
    assert "stopping (the run checkpoints)" in stdout
    assert "caught SIGTERM" in stdout
    assert stdout.strip().splitlines()[-1].startswith("stopped interrupted-1 (")
    assert get_run(store_dir, row.id).status == "stopped"
    assert (tmp_path / "marker").exists()


def test_stop_kills_a_script_that_ignores_sigterm(tmp_path: Path, store_dir: Path) -> None:
    spec = script_spec(tmp_path, "stubborn", """\
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (HERE / "pid").write_text(str(os.getpid()))
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.05)
    """)
    run_id = launch(spec)
    pid_file = tmp_path / "pid"
    script_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30,
                              "the script's pid"))
    worker_pid = get_run(store_dir, run_id).pid
    assert os.getpgid(script_pid) == worker_pid  # the script is in the worker's group
    proc = wb("stop", run_id, "--grace", "1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "did not exit within 1s; killed" in proc.stdout
    row = get_run(store_dir, run_id)
    assert row.status == "stopped"
    wait_for(lambda: not alive(script_pid) and not alive(worker_pid), 10, "the processes to die")
    assert group_members(worker_pid) == []


def test_worker_gone_while_running_is_shown_lost(tmp_path: Path, store_dir: Path) -> None:
    spec = script_spec(tmp_path, "victim", """\
        run.log({"x": 0.5}, step=0)
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.05)
    """)
    run_id = launch(spec)
    worker_pid = wait_status(store_dir, run_id, ("running",), timeout=30).pid
    os.killpg(worker_pid, signal.SIGKILL)
    wait_for(lambda: not group_members(worker_pid), 10, "the process group to die")

    def shown_lost() -> bool:
        rows = json.loads(wb_inproc("ls", "--json", check=True).stdout)
        return [r["status"] for r in rows if r["id"] == run_id] == ["lost"]

    wait_for(shown_lost, 20, "wb ls to show the run lost", interval=0.2)
    assert [r["id"] for r in json.loads(wb_inproc("ls", "--status", "lost", "--json",
                                                  check=True).stdout)] == [run_id]
    assert json.loads(wb_inproc("show", run_id, "--json", check=True).stdout)["status"] == "lost"


# -- charlm end to end ----------------------------------------------------------------------


@pytest.mark.slow
def test_charlm_stop_and_resume_continues_from_the_checkpoint(store_dir: Path) -> None:
    run_id = wb("launch", "charlm", "--set", "config.steps=250", "--detach", check=True,
                timeout=60).stdout.strip()
    wait_for(lambda: (get_run(store_dir, run_id).last_step or 0) >= 20, 90, "step 20")
    proc = wb("stop", run_id, "--grace", "30", timeout=90)
    assert proc.returncode == 0, proc.stderr
    row = get_run(store_dir, run_id)
    assert row.status == "stopped", proc.stdout
    ckpt = store_dir / run_id / "checkpoints"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "state.pt").is_file()
    with Store(store_dir, create=False) as st:
        saved = st.events(run_id, kind="checkpoint")
    assert len(saved) == 1
    step = saved[0].step
    assert 20 <= step < 250
    assert "charlm: stopped at step" in log_text(store_dir, run_id)

    new_id = wb("resume", run_id, "--detach", check=True, timeout=60).stdout.strip()
    new = wait_status(store_dir, new_id, ("finished", "failed", "stopped", "lost"), timeout=120)
    assert new.status == "finished", log_text(store_dir, new_id)
    assert new.resumed_from == run_id
    losses = [s for _, s, k, _, _ in scalar_rows(store_dir, new_id) if k == "train/loss"]
    assert losses[0] == step  # continues where the checkpoint left off
    assert losses == list(range(step, 250))
    with Store(store_dir, create=False) as st:
        resumed = [e for e in st.events(new_id, kind="checkpoint")
                   if e.payload.get("action") == "resumed"]
    assert [e.step for e in resumed] == [step]


# -- torchrun ------------------------------------------------------------------------------


@pytest.mark.slow
def test_procs_2_runs_two_ranks_under_torchrun_into_one_run(tmp_path: Path,
                                                            store_dir: Path) -> None:
    spec = script_spec(tmp_path, "ranks", """\
        rank = int(os.environ["RANK"])
        assert os.environ["WORLD_SIZE"] == "2"
        print(f"rank {rank} of {os.environ['WORLD_SIZE']} in run {run.id}", flush=True)
        for step in range(5):
            run.log({f"rank{rank}/x": float(step)}, step=step)
    """, procs=2)
    run_id = launch(spec)
    row = wait_status(store_dir, run_id, ("finished", "failed", "stopped", "lost"), timeout=90)
    text = log_text(store_dir, run_id)
    assert row.status == "finished", text
    assert "torch.distributed.run" in text or "rank 0 of 2" in text
    assert f"rank 0 of 2 in run {run_id}" in text and f"rank 1 of 2 in run {run_id}" in text
    rows = scalar_rows(store_dir, run_id)
    assert len(rows) == 10
    by_key: dict[str, list[int]] = {}
    for _, step, key, _, _ in rows:
        by_key.setdefault(key, []).append(step)
    assert by_key == {"rank0/x": [0, 1, 2, 3, 4], "rank1/x": [0, 1, 2, 3, 4]}
    assert row.last_step == 4


@pytest.mark.slow
def test_stop_kills_torchrun_ranks_that_ignore_sigterm(tmp_path: Path,
                                                       store_dir: Path) -> None:
    """torchrun puts each rank in a session of its own: stop must still reach them."""
    spec = script_spec(tmp_path, "stubborn_ranks", """\
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (HERE / f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.05)
    """, procs=2)
    run_id = launch(spec)
    def rank_pids() -> list[int] | None:
        texts = [p.read_text() for p in sorted(tmp_path.glob("rank*.pid"))]
        return [int(t) for t in texts] if len(texts) == 2 and all(texts) else None

    pids = wait_for(rank_pids, 60, "both ranks to write their pids")
    worker_pid = get_run(store_dir, run_id).pid
    assert all(os.getsid(p) != os.getsid(worker_pid) for p in pids)  # torchrun's doing
    proc = wb("stop", run_id, "--grace", "1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert get_run(store_dir, run_id).status == "stopped"
    wait_for(lambda: not any(alive(p) for p in [*pids, worker_pid]), 10, "ranks to die")
    assert processes_of_store(store_dir) == []


def test_stop_never_signals_a_process_that_reused_the_pid(store: Store,
                                                          store_dir: Path) -> None:
    """A local run whose pid now belongs to another program (a reboot, pid reuse) is
    recorded as lost without signalling that program."""
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        row = store.create_run(kind="script", name="stale", status="running",
                               launcher="local", pid=stranger.pid, spec='kind = "script"')
        assert get_run(store_dir, row.id).status == "running"  # the pid is alive
        proc = wb("stop", row.id, "--grace", "1", timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "had no live process; recorded as lost" in proc.stdout
        assert stranger.poll() is None
        assert get_run(store_dir, row.id).status == "lost"
    finally:
        stranger.kill()
        stranger.wait(timeout=10)

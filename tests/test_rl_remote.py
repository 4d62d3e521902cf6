"""Asynchronous RL across hosts (issue 21): the trainer here, one generator local and one
on the host `box`, which is this machine reached through a real sshd on 127.0.0.1
(tests/sshd.py) with a store of its own, as in tests/test_remote.py. Rollouts and
control over ZeroMQ (recipes/rl/transport.py), weights over gloo on loopback.

Real processes throughout: the remote generator is `python -m
workbench.recipes.rl.remote` started by ssh; the faults kill it, its ssh connection,
or the trainer with SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import wait_for, wb_inproc
from tests.sshd import SSHServer
from tests.test_rl import LAUNCHED, launch, values, wait_end
from tests.test_rl import _no_run_outlives_its_test as _no_run_outlives_its_test  # noqa: F401
from workbench.launch import local
from workbench.procs import pid_alive
from workbench.run_record import RunRecord
from workbench.spec import SpecError, parse_spec
from workbench.store import Store

pytestmark = pytest.mark.timeout(600)
# Long enough that a kill after step 2 lands mid-run: a step of the tiny policy below
# takes 20-40 ms on 2 cores, and 14 steps once ended before the kill.
KILL_STEPS = 100

SPEC = """
kind = "rl"
seed = 1
[policy]
init = "random"
n_layer = 1
d_model = 64
seq_len = 128
[rollout]
generators = 2
hosts = [{{host = "box", generators = 1}}]
slots = 8
l_max = 40
l_cache = 8
max_staleness = 1
[grpo]
steps = {steps}
group_size = 4
groups_per_step = 2
checkpoint_every = 2
[verifier]
procs = 1
"""


@pytest.fixture
def box(sshd: SSHServer, tmp_path: Path) -> SSHServer:
    wb_inproc("hosts", "add", "box", sshd.alias, "--python", sys.executable, "--store",
              str(tmp_path / "box-store"), check=True)
    return sshd


def log_of(store: Store, run_id: str) -> str:
    path = store.run_dir(run_id) / "stdout.log"
    return path.read_text() if path.exists() else ""


def remote_pid_at_step(store: Store, run_id: str, step: int) -> int | None:
    """The remote generator's pid once the trainer has printed `step` (its log is
    written at once; the store's metrics come a flush later, when a short run may have
    ended, its generators with it)."""
    log = log_of(store, run_id)
    pid = remote_pid(store, run_id)
    return pid if pid is not None and re.search(rf"^step {step}/", log, re.M) else None


def remote_pid(store: Store, run_id: str) -> int | None:
    found = re.findall(r"generator 2: pid (\d+)", log_of(store, run_id))
    return int(found[-1]) if found else None


def ssh_clients(trainer_pid: int) -> list[psutil.Process]:
    """The ssh clients the trainer started for its remote generators."""
    try:
        kids = psutil.Process(trainer_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            if p.name() == "ssh" and "workbench.recipes.rl.remote" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def test_rollout_hosts_are_validated_at_launch(box: SSHServer, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC.format(steps=2).replace('host = "box"', 'host = "gpu9"'))
    assert "rollout.hosts" in str(info.value) and "'gpu9' is not configured" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match="places 3 generators but rollout.generators is 2"):
        parse_spec(SPEC.format(steps=2).replace("generators = 1}", "generators = 3}"))
    with pytest.raises(SpecError, match="cannot load hf:example"):
        parse_spec(SPEC.format(steps=2).replace('init = "random"', 'init = "hf:example"')
                   .replace("n_layer = 1\nd_model = 64\n", ""))
    spec = tmp_path / "bad.toml"
    spec.write_text(SPEC.format(steps=2).replace('host = "box"', 'host = "gpu9"'))
    r = wb_inproc("launch", str(spec))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert parse_spec(SPEC.format(steps=2)).rollout.bind == "127.0.0.1"


def test_one_local_one_remote_generator_train_and_a_stranger_is_refused(
        box: SSHServer, store: Store) -> None:
    from workbench.recipes.rl.transport import Link, LinkError

    launched = launch(store, SPEC.format(steps=10))
    row = launched.record
    address = wait_for(lambda: (m := re.search(r"rollouts over ZeroMQ at (tcp://\S+),",
                                               log_of(store, row.id))) and m.group(1),
                       240, "the roles to start", interval=0.2)
    with pytest.raises(LinkError, match="refused"):
        Link(address, "a guess", rank=2, timeout_s=10)
    done = wait_end(store, launched, timeout=300)
    log = log_of(store, done.id)
    assert "2 generators" in log and "1 on box" in log
    assert re.search(r"generator 1: pid \d+ on", log) and re.search(r"generator 2: pid \d+", log)
    config = dict(store.get_run(done.id).config)
    assert config["generator_hosts"] == {"1": "local", "2": "box"}
    assert sorted(values(store, done.id, "policy/version")) == list(range(1, 11))
    assert max(values(store, done.id, "staleness/max").values()) <= 1
    # Both generators produced rollouts: their stats reached the trainer's run.
    assert values(store, done.id, "perf/gen_tokens_per_s/g1")
    assert values(store, done.id, "perf/gen_tokens_per_s/g2")
    (refused,) = store.events(done.id, kind="peer_refused")
    assert refused.payload["reason"] == "wrong secret"
    assert store.events(done.id, kind="generator_lost") == []
    syncs = [e.payload["seconds"] for e in store.events(done.id, kind="weight_sync")]
    floats = re.search(r"gloo broadcast \(([\d,]+) floats\)", log).group(1)
    print(f"weight broadcast to 2 generators (1 remote): mean {1e3 * sum(syncs) / len(syncs):.1f}"
          f" ms, max {1e3 * max(syncs):.1f} ms, {floats} floats")
    # The secret stays out of the store.
    assert "secret" not in str(config) and "secret" not in done.spec


@pytest.mark.slow
def test_remote_generator_killed_is_lost_and_its_groups_restart_here(
        box: SSHServer, store: Store) -> None:
    launched = launch(store, SPEC.format(steps=KILL_STEPS))
    row = launched.record
    pid = wait_for(lambda: remote_pid_at_step(store, row.id, 2), 300,
                   "the remote generator and two steps", interval=0.02)
    os.kill(pid, signal.SIGKILL)
    done = wait_end(store, launched, timeout=300)
    (lost,) = store.events(done.id, kind="generator_lost")
    assert lost.payload["generator"] == 2 and lost.payload["host"] == "box"
    assert lost.payload["remaining"] == 1 and 2 <= lost.step < KILL_STEPS
    assert sorted(values(store, done.id, "policy/version"))[-1] == KILL_STEPS
    assert max(values(store, done.id, "staleness/max").values()) <= 1


@pytest.mark.slow
def test_ssh_connection_killed_declares_the_generator_lost_and_it_exits(
        box: SSHServer, store: Store) -> None:
    launched = launch(store, SPEC.format(steps=KILL_STEPS))
    row = launched.record
    pid = wait_for(lambda: remote_pid_at_step(store, row.id, 2), 300,
                   "the remote generator and two steps", interval=0.02)
    clients = ssh_clients(row.pid)
    assert clients
    t0 = time.monotonic()
    for client in clients:  # the mux client and, if it is ours, the connection's master
        client.kill()
    wait_for(lambda: store.events(row.id, kind="generator_lost"), 60, "generator_lost",
             interval=0.2)
    wait_for(lambda: not pid_alive(pid), 30, "the remote generator to exit")
    print(f"ssh killed: generator lost and gone in {time.monotonic() - t0:.1f} s")
    done = wait_end(store, launched, timeout=300)
    (lost,) = store.events(done.id, kind="generator_lost")
    assert lost.payload["generator"] == 2 and lost.payload["host"] == "box"


@pytest.mark.slow
def test_trainer_killed_remote_generator_exits_and_resume_restarts_it(
        box: SSHServer, store: Store) -> None:
    launched = launch(store, SPEC.format(steps=KILL_STEPS))
    row = launched.record
    pid = wait_for(lambda: (p := remote_pid(store, row.id)) and
                   store.events(row.id, kind="checkpoint") and p,
                   300, "the remote generator and a checkpoint", interval=0.02)
    t0 = time.monotonic()
    os.kill(row.pid, signal.SIGKILL)
    launched.process.wait(timeout=30)
    wait_for(lambda: not pid_alive(pid), 30, "the remote generator to exit")
    print(f"trainer killed: remote generator gone in {time.monotonic() - t0:.1f} s")
    killed = store.get_run(row.id)
    assert killed.status == "lost"
    again = local.resume(store, killed)
    LAUNCHED.append(again)
    resumed = wait_end(store, again, timeout=400)
    log = log_of(store, resumed.id)
    assert "1 on box" in log and remote_pid(store, resumed.id) not in (None, pid)
    assert sorted(values(store, resumed.id, "policy/version"))[-1] == KILL_STEPS



@pytest.mark.slow
@pytest.mark.timeout(2400)  # the warm start (~100 s alone on 2 cores), then 80 steps
def test_rl_async_tiny_shortened_learns_with_a_remote_generator(
        box: SSHServer, store: Store) -> None:
    """rl-async-tiny, 80 steps, its 128 slots split over a local and a remote generator:
    the accuracy `wb bench rl` measures (rl/accuracy, the mean of the last 20 steps)
    rises above the first steps', and staleness stays within max_staleness (4)."""
    from workbench.spec import load_spec

    loaded = load_spec("rl-async-tiny", ["rollout.generators=2", "rollout.slots=64",
                                         'rollout.hosts=[{host = "box", generators = 1}]',
                                         "grpo.steps=80", "grpo.checkpoint_every=0"])
    launched = local.start(store, loaded)
    LAUNCHED.append(launched)
    done = wait_end(store, launched, timeout=2000)
    acc = [v for _, v in sorted(values(store, done.id, "rl/accuracy").items())]
    assert len(acc) == 80
    first, last20 = sum(acc[:10]) / 10, sum(acc[-20:]) / 20
    print(f"rl-async-tiny, 80 steps, 1 local + 1 remote generator: accuracy first 10 "
          f"{first:.3f}, last 20 {last20:.3f}")
    assert last20 > first + 0.03
    assert max(values(store, done.id, "staleness/max").values()) <= 4
    assert values(store, done.id, "perf/gen_tokens_per_s/g2")
    assert store.events(done.id, kind="generator_lost") == []


@pytest.mark.slow
def test_bench_rl_remote_compares_placements(box: SSHServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`wb bench rl --remote box` on a tiny random policy: both placements run and
    report wall time, overhead and weight sync time (figures for the note come from
    the built-in spec)."""
    from workbench.bench.rl import bench_rl

    monkeypatch.setenv("WB_STORE", str(tmp_path / "bench-store"))
    tiny = ["policy.init=random", "policy.n_layer=1", "policy.d_model=64", "policy.seq_len=128",
            "rollout.l_max=40", "rollout.l_cache=8", "rollout.slots=16", "grpo.group_size=4",
            "grpo.groups_per_step=2"]
    r = bench_rl(overrides=tiny, steps=4, remote="box")
    print(r)
    assert r["host"] == "box" and r["slots_each"] == 8 and r["trainer_steps"] == 4
    assert r["local_s"] > 0 and r["remote_s"] > 0
    assert r["overhead"] == pytest.approx(r["remote_s"] / r["local_s"])
    assert r["weight_sync_s_local"] > 0 and r["weight_sync_s_remote"] > 0
    assert r["staleness_max_remote"] <= 4
    bad = wb_inproc("bench", "rl", "--remote", "gpu9", "--quick")
    assert bad.returncode != 0 and "gpu9" in bad.stderr and \
        len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert wb_inproc("bench", "store", "--remote", "box").returncode != 0


def test_rollouts_tab_shows_each_generators_rate_with_its_host(store: Store,
                                                                 store_dir: Path) -> None:
    """Issue 21 item 7: the Rollouts tab's line of per-generator decode rates names each
    generator's host (from the run's config), and stays hidden for a run without them."""
    from textual.widgets import Label, TabbedContent

    from tests.test_tui_run import on_screen, rl_run
    from workbench.screens.run import RunScreen
    from workbench.tracking import Run

    row = store.create_run(kind="rl", name="grpo", status="running", launcher="sdk",
                           config={"generator_hosts": {"1": "local", "2": "box"}})
    run = Run(store, row, owner=True)
    for step in (1, 2):
        run.log({"perf/gen_tokens_per_s/g1": 1000.0 * step,
                 "perf/gen_tokens_per_s/g2": 1500.0 * step, "rl/reward": 0.1}, step=step)
    run.finish()
    plain = rl_run(store)

    def check(run_id: str, shown: str | None) -> None:
        async def body(app: Any, pilot: Any, screen: RunScreen) -> None:
            screen.query_one(TabbedContent).active = "tab-rollouts"
            await pilot.pause(0.3)
            label = screen.query_one("#rollouts-generators", Label)
            if shown is None:
                assert not label.display
            else:
                assert label.display and shown in str(label.render()), str(label.render())

        on_screen(store_dir, lambda: RunScreen(run_id), body)

    check(run.id, "g1 local 2,000 · g2 box 3,000")
    check(plain.id, None)


def test_hosts_screen_lists_an_rl_run_under_its_generators_hosts() -> None:
    from workbench.screens.hosts import runs_of_hosts

    rows = [RunRecord(id="a", num=2, name="a", kind="rl", status="running", host="",
                      launcher="local", created=0.0, dir="",
                      config={"generator_hosts": {"1": "local", "2": "box", "3": "box"}}),
            RunRecord(id="b", num=1, name="b", kind="pretrain", status="finished", host="",
                      launcher="local", created=0.0, dir="", config={})]
    by_host = runs_of_hosts(rows)
    assert [r.id for r in by_host["local"]] == ["a", "b"]
    assert [r.id for r in by_host["box"]] == ["a"]


@pytest.mark.slow
def test_rollout_timeouts_reach_a_remote_generator(box: SSHServer, store: Store) -> None:
    """rollout.trainer_timeout_s travels to a remote generator (in its GeneratorStart's
    spec): with the trainer frozen by SIGSTOP, its ssh client lives and the remote
    generator's stdin stays open, so only that 3 s silence bound (default 20 s) makes it
    leave."""
    text = SPEC.format(steps=200).replace("[grpo]", "trainer_timeout_s = 3\n[grpo]")
    launched = launch(store, text)
    row = launched.record
    pid = wait_for(lambda: (p := remote_pid(store, row.id)) and
                   len(values(store, row.id, "policy/version")) >= 2 and p,
                   300, "the remote generator and two steps", interval=0.2)
    try:
        assert ssh_clients(row.pid)  # alive under a frozen trainer: the stdin stays open
        os.kill(row.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        wait_for(lambda: not pid_alive(pid), 15, "the remote generator to leave")
        left_s = time.monotonic() - t0
        print(f"trainer frozen: remote generator left after {left_s:.1f} s")
        assert left_s < 12, left_s
    finally:
        if pid_alive(row.pid):
            os.kill(row.pid, signal.SIGKILL)

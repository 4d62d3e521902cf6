"""The tracking SDK: `workbench.init()` and `Run`, in-process and from real subprocesses."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import workbench
from tests.helpers import wait_for
from workbench import tracking
from workbench.records import DistRecord, MatrixRecord
from workbench.store import Store
from workbench.tracking import Run, init


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _python(path: Path, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _steps(store: Store, run_id: str, key: str | None = None) -> list[int]:
    return [s for _, s, *_ in store.scalars(run_id, key=key)]


# ---------------------------------------------------------------- init


def test_init_is_reexported_from_the_package() -> None:
    assert workbench.init is tracking.init
    assert workbench.Run is tracking.Run
    assert "init" in workbench.__all__
    params = inspect.signature(workbench.init).parameters
    assert {n: p.default for n, p in params.items()} == {
        "name": None, "config": None, "kind": "custom", "store": None, "disabled": False,
        "system_metrics": True}


def test_init_creates_an_sdk_run(store: Store) -> None:
    run = init(name="mine", config={"lr": 0.1, "opt": {"name": "muon"}}, kind="pretrain",
               store=store.root)
    try:
        assert isinstance(run, Run) and run.owner
        assert run.name == "mine" and run.kind == "pretrain"
        assert run.config == {"lr": 0.1, "opt": {"name": "muon"}}
        row = store.get_run(run.id)
        assert row.status == "running" and row.launcher == "sdk"
        assert row.pid == os.getpid() and row.started is not None
        assert row.config == {"lr": 0.1, "opt": {"name": "muon"}}
        assert run.dir == store.run_dir(run.id) and run.dir.is_dir()
    finally:
        run.finish()
    row = store.get_run(run.id)
    assert row.status == "finished" and row.ended >= row.started


def test_init_uses_wb_store_and_default_names(store: Store) -> None:
    runs = [init() for _ in range(2)]  # WB_STORE points at the fixture's store
    for run in runs:
        run.finish()
    assert [r.name for r in runs] == ["custom-1", "custom-2"]
    assert [r.id for r in store.runs()] == [r.id for r in runs]
    assert all(r.kind == "custom" for r in store.runs())


def test_update_config_and_total_steps(store: Store) -> None:
    with init(config={"a": 1}) as run:
        run.update_config({"b": 2})
        run.set_total_steps(100)
    row = store.get_run(run.id)
    assert row.config == {"a": 1, "b": 2} and row.total_steps == 100


def test_a_disabled_run_accepts_every_call_and_writes_nothing(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    row = store.create_run(kind="custom", status="running", launcher="local")
    monkeypatch.setenv("WB_RUN_ID", row.id)
    run = init(config={"lr": 1}, disabled=True)  # e.g. a rank other than 0
    assert run.disabled and run.id == row.id
    run.log({"loss": 1.0}, step=1)
    run.log_dist("rollout/length", [1, 2, 3], step=1)
    run.log_matrix("attn/max_logit_heads", np.ones((2, 2)), step=1)
    run.event("checkpoint", step=1)
    run.update_config({"x": 2})
    run.set_total_steps(10)
    assert run.flush()
    run.finish()
    assert list(store.records(row.id)) == []
    after = store.get_run(row.id)
    assert after.status == "running" and after.total_steps is None
    assert after.config == {}

    with init() as rank0:
        assert not rank0.disabled
        rank0.log({"loss": 1.0}, step=1)
    assert len(store.scalars(row.id, "loss")) == 1

    monkeypatch.delenv("WB_RUN_ID")  # outside a launched run: no row is created either
    runs = len(store.runs())
    with init(name="rank1", disabled=True) as other:
        other.log({"loss": 2.0})
    assert len(store.runs()) == runs


# ---------------------------------------------------------------- logging


def test_log_with_explicit_and_auto_advancing_steps(store: Store) -> None:
    with init() as run:
        run.log({"x": 1.0})  # step 0
        run.log({"x": 2.0})  # step 1
        run.log({"x": 3.0, "y": 1}, step=10)
        run.log({"x": 4.0})  # step 11
        assert run.step == 11
        run.log({"x": np.float32(5.0), "flag": True, "n": np.int64(7)})  # numpy/bool are numbers
    assert _steps(store, run.id, "x") == [0, 1, 10, 11, 12]
    assert [v for *_, v, _ in store.scalars(run.id, key="x")] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert store.latest(run.id) == {"flag": (12, 1.0), "n": (12, 7.0), "x": (12, 5.0),
                                    "y": (10, 1.0)}
    assert store.get_run(run.id).last_step == 12


def test_log_rejects_non_numbers_and_logs_nothing_of_that_call(store: Store) -> None:
    with init() as run:
        run.log({"x": 1.0}, step=0)
        with pytest.raises(TypeError, match="'name' is str"):
            run.log({"x": 2.0, "name": "hello"}, step=1)
        with pytest.raises(TypeError):
            run.log({"x": float("nan"), "arr": [1, 2]}, step=1)
        with pytest.raises(TypeError):
            run.log({"x": None}, step=1)
        run.log({"x": 3.0})  # the failed calls did not move the step
    assert [(s, v) for _, s, _, v, _ in store.scalars(run.id)] == [(0, 1.0), (1, 3.0)]
    assert store.events(run.id) == []  # not even the nan warning of the refused call
    assert run.flushed_rows == 2


def test_numpy_and_torch_style_steps_are_stored_as_integers(store: Store) -> None:
    with init() as run:
        run.log({"x": 1.0}, step=np.int64(3))
        run.log_dist("d", [1.0, 2.0], step=np.int32(4))
        run.log_matrix("m", np.eye(2), step=np.uint8(5))
        run.event("stage", step=np.int16(6))
        run.log({"x": 2.0})  # continues from the numpy steps (events do not advance it)
        for bad in (2.5, "7", 3.0, [1]):
            with pytest.raises(TypeError, match="step must be an integer"):
                run.log({"x": 0.0}, step=bad)
        with pytest.raises(TypeError, match="step"):
            run.event("stage", step=1.5)
    types = {t: store.conn.execute(f"SELECT DISTINCT typeof(step) FROM {t}").fetchall()
             for t in ("scalars", "dists", "matrices", "events")}
    assert all(v == [("integer",)] for v in types.values()), types
    steps = {(r.type, r.step) for r in store.records(run.id)}
    assert steps == {("scalar", 3), ("dist", 4), ("matrix", 5), ("event", 6), ("scalar", 6)}
    assert store.get_run(run.id).last_step == 6


def test_bad_names_are_refused_or_kept_without_poisoning_the_writer(store: Store) -> None:
    with init() as run:
        for call in (lambda: run.event(("not", "a", "str")), lambda: run.log_dist(1, [1.0]),
                     lambda: run.log_matrix(None, np.eye(2))):
            with pytest.raises(TypeError, match="must be a str"):
                call()
        run.log({1: 1.0, "ok": 2.0}, step=0)  # a non-str metric name is stored as its str()
        assert run.flush(timeout=30)
        run.log({"later": 3.0}, step=1)
        assert run.flush(timeout=30)
    assert sorted(k for _, _, k, _, _ in store.scalars(run.id)) == ["1", "later", "ok"]


def test_a_batch_sqlite_refuses_is_dropped_not_retried_forever(
        store: Store, capfd: pytest.CaptureFixture[str]) -> None:
    with init() as run:
        run.log({"x": 1.0}, step=0)
        assert run.flush(timeout=30)
        run.log({"x": 2.0}, step=2**70)  # beyond SQLite's 64-bit integers
        assert run.flush(timeout=30) is False  # refused: not everything is committed
        assert run.dropped_rows == 1
        run.log({"x": 3.0}, step=1)  # later rows are not held behind it
        run.event("stage", step=1)
        assert run.flush(timeout=30) is False
        assert run.flushed_rows == 3
    assert [(s, v) for _, s, _, v, _ in store.scalars(run.id)] == [(0, 1.0), (1, 3.0)]
    assert len(store.events(run.id)) == 1
    assert store.get_run(run.id).status == "finished"
    err = capfd.readouterr().err
    assert "dropped 1 rows of run" in err and run.id in err


def test_log_dist_and_log_matrix(store: Store) -> None:
    values = np.random.default_rng(0).exponential(100.0, size=1000)
    cube = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    with init() as run:
        run.log({"x": 0.0}, step=4)
        run.log_dist("rollout/length", values)  # at the current step
        run.log_dist("staleness", [0, 0, 1, 2, 2, 2], step=5, bins=8)
        run.log_matrix("attn/max_logit_heads", cube[0])
        run.log_matrix("cube", cube, step=6)
        run.log_matrix("row", [1.5, 2.5])
    recs = {r.key: r for r in store.records(run.id) if isinstance(r, DistRecord | MatrixRecord)}
    d = recs["rollout/length"]
    assert isinstance(d, DistRecord)
    assert d.step == 4 and d.count == 1000
    assert d.min == pytest.approx(values.min()) and d.max == pytest.approx(values.max())
    assert d.mean == pytest.approx(values.mean())
    assert [d.p50, d.p90, d.p99] == pytest.approx(np.quantile(values, [.5, .9, .99]))
    assert sum(d.counts) == 1000 and len(d.edges) == 33
    s = recs["staleness"]
    assert isinstance(s, DistRecord)
    assert s.step == 5 and s.counts == (2, 1, 3)  # unit bins for small integers
    for key, array, step in (("attn/max_logit_heads", cube[0], 5), ("cube", cube, 6),
                             ("row", np.array([1.5, 2.5]), 6)):
        m = recs[key]
        assert isinstance(m, MatrixRecord)
        assert m.shape == array.shape and m.step == step
        got = np.frombuffer(m.data, dtype=m.dtype).reshape(m.shape)
        np.testing.assert_allclose(got, array)


def test_event_payload_and_severity(store: Store) -> None:
    with init() as run:
        run.log({"x": 1.0}, step=7)
        run.event("checkpoint", path="c/7")  # at the current step
        run.event("loss_spike", step=8, severity="warning", z=4.2, keys=["a", "b"])
        for sev in ("debug", "info", "error"):
            run.event("stage", severity=sev)
        with pytest.raises(ValueError, match="severity"):
            run.event("stage", severity="fatal")
    evs = store.events(run.id)
    assert [(e.kind, e.step, e.severity) for e in evs] == [
        ("checkpoint", 7, "info"), ("loss_spike", 8, "warning"), ("stage", 7, "debug"),
        ("stage", 7, "info"), ("stage", 7, "error")]  # an event does not advance the step
    assert evs[0].payload == {"path": "c/7"}
    assert evs[1].payload == {"z": 4.2, "keys": ["a", "b"]}
    assert store.events(run.id, kind="stage")[0].severity == "debug"


def test_finish_records_status_once(store: Store) -> None:
    run = init()
    run.log({"x": 1.0})
    run.finish("stopped", exit_code=143)
    run.finish("finished")  # a second finish changes nothing
    row = store.get_run(run.id)
    assert (row.status, row.exit_code) == ("stopped", 143)
    assert store.scalars(run.id)[0][3] == 1.0


def test_context_manager_sets_the_status(store: Store) -> None:
    with init(name="ok") as ok:
        ok.log({"x": 1.0})
    with pytest.raises(RuntimeError), init(name="bad") as bad:
        bad.log({"x": 1.0})
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), init(name="ctrl-c"):
        raise KeyboardInterrupt
    status = {r.name: r.status for r in store.runs()}
    assert status == {"ok": "finished", "bad": "failed", "ctrl-c": "stopped"}
    assert len(store.scalars(bad.id)) == 1  # what was logged before the error is kept


# ---------------------------------------------------------------- buffering


def test_log_never_waits_on_disk(store: Store, store_dir: Path) -> None:
    """While another connection holds the write lock, log() still returns at once;
    the rows reach the database only when the writer thread gets the lock."""
    import sqlite3

    run = init(name="buffered")
    try:
        run.log({"x": 0.0}, step=0)
        assert run.flush(timeout=30)
        blocker = sqlite3.connect(store_dir / "workbench.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # every other writer now waits
        try:
            for step in range(1, 2001):  # returns although the lock is held throughout
                run.log({"x": float(step), "y": 1.0}, step=step)
            assert run.flush(timeout=0.5) is False  # the writer is stuck behind the lock
            assert run.flushed_rows == 1
            assert len(store.scalars(run.id)) == 1  # nothing of it on disk yet
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        assert run.flush(timeout=30)
        assert run.flushed_rows == 4001
        scalars = store.scalars(run.id)
        assert len(scalars) == 4001
        # in call order, with no gaps (no other writer)
        ids = [i for i, *_ in scalars[1:]]
        assert ids == list(range(ids[0], ids[0] + 4000))
    finally:
        run.finish()


def test_rows_appear_only_after_a_flush(store: Store) -> None:
    row = store.create_run(kind="custom", status="running", launcher="sdk", pid=os.getpid())
    run = Run(store, row, owner=True, flush_interval=3600)  # the thread sleeps between flushes
    try:
        for step in range(100):
            run.log({"a": 1.0, "b": 2.0}, step=step)
        run.event("stage", name="warmup")
        time.sleep(0.3)
        assert store.scalars(run.id) == [] and store.events(run.id) == []
        assert run.flush(timeout=30)
        assert len(store.scalars(run.id)) == 200 and len(store.events(run.id)) == 1
        assert run.flushed_rows == 201
    finally:
        run.finish()
    assert store.get_run(run.id).status == "finished"


def test_log_waits_only_when_far_behind_the_disk(store: Store, store_dir: Path) -> None:
    """Memory is bounded: past `max_pending` uncommitted rows, log() waits for the writer."""
    import sqlite3
    import threading

    row = store.create_run(kind="custom", status="running", launcher="sdk", pid=os.getpid())
    run = Run(store, row, owner=True, max_buffer=100, max_pending=1000)
    progress: list[int] = []

    def produce() -> None:
        for step in range(300):  # 4 rows a call: 1200 rows in all
            run.log({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, step=step)
            progress.append(step)

    blocker = sqlite3.connect(store_dir / "workbench.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer cannot commit anything
    producer = threading.Thread(target=produce, daemon=True)
    try:
        producer.start()
        wait_for(lambda: len(progress) >= 250, 30, "the producer to fill the buffer")
        time.sleep(0.5)
        assert producer.is_alive()  # waiting, not buffering without end
        assert len(progress) == 250  # call 251 took the pending rows past 1000
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    producer.join(timeout=30)
    assert not producer.is_alive() and len(progress) == 300
    assert run.flush(timeout=30)
    run.finish()
    assert len(store.scalars(run.id)) == 1200


# ---------------------------------------------------------------- external scripts

_EXTERNAL = """
import sys, time
import workbench

run = workbench.init(name="ext", config={"lr": 0.001, "batch": 32, "note": "x"})
for step in range(20):
    run.log({"train/loss": 1.0 / (step + 1), "train/lr": 0.001}, step=step)
run.event("checkpoint", step=19, path="c")
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
if mode == "raise":
    raise RuntimeError("user bug")
if mode == "hang":
    run.flush()
    print("ready", flush=True)
    time.sleep(60)
"""


def test_external_script_appears_as_a_finished_sdk_run(tmp_path: Path, store: Store) -> None:
    script = _script(tmp_path, "train.py", _EXTERNAL)
    proc = _python(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    (row,) = store.runs()
    assert (row.name, row.launcher, row.status) == ("ext", "sdk", "finished")
    assert row.kind == "custom" and row.pid != os.getpid()
    assert row.config == {"lr": 0.001, "batch": 32, "note": "x"}
    assert row.last_step == 19 and row.ended is not None
    assert _steps(store, row.id, "train/loss") == list(range(20))
    assert store.latest(row.id)["train/loss"] == (19, 1.0 / 20)
    assert store.event_counts(row.id) == {"checkpoint": 1}


def test_external_script_that_raises_is_failed(tmp_path: Path, store: Store) -> None:
    script = _script(tmp_path, "train.py", _EXTERNAL)
    proc = subprocess.run([sys.executable, str(script), "raise"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "RuntimeError: user bug" in proc.stderr
    (row,) = store.runs()
    assert row.status == "failed"
    assert len(store.scalars(row.id)) == 40  # everything logged before the error


def test_external_script_killed_is_lost(tmp_path: Path, store: Store) -> None:
    script = _script(tmp_path, "train.py", _EXTERNAL)
    proc = subprocess.Popen([sys.executable, str(script), "hang"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        (row,) = store.runs()
        assert row.status == "running" and row.pid == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    (row,) = store.runs()
    assert row.status == "lost"
    assert store.get_run(row.id).status == "lost"
    assert [r.id for r in store.runs(status="lost")] == [row.id]
    assert len(store.scalars(row.id)) == 40  # flushed before "ready"


# ---------------------------------------------------------------- many processes, one run

_ATTACHED = """
import sys
import workbench

worker = int(sys.argv[1])
run = workbench.init(config={"shared": 1})
assert not run.owner
for step in range(worker * 1000, worker * 1000 + 500):
    run.log({"loss": float(step), "worker": float(worker)}, step=step)
    if step % 100 == 0:
        run.event("stage", step=step, worker=worker)
run.finish("finished")
print(run.id, run.flushed_rows)
"""


def test_many_processes_log_to_one_run(tmp_path: Path, store: Store) -> None:
    row = store.create_run(kind="custom", name="shared", status="running", launcher="local",
                           pid=os.getpid())
    script = _script(tmp_path, "worker.py", _ATTACHED)
    env = {**os.environ, "WB_RUN_ID": row.id, "WB_STORE": str(store.root)}
    procs = [subprocess.Popen([sys.executable, str(script), str(w)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for w in range(3)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert err == ""
        outs.append(out.split())
    assert all(o == [row.id, "1005"] for o in outs)  # 500 steps x 2 + 5 events each

    scalars = store.scalars(row.id)
    assert len(scalars) == 3 * 500 * 2
    steps = sorted({s for _, s, *_ in scalars})
    assert steps == [w * 1000 + i for w in range(3) for i in range(500)]
    for _, step, key, value, _ in scalars:
        if key == "worker":
            assert value == step // 1000
    assert len(store.events(row.id)) == 15
    ids = [r.id for r in store.records(row.id)]
    assert len(ids) == len(set(ids)) == 3015 and ids == sorted(ids)
    after = store.get_run(row.id)
    assert after.status == "running" and after.ended is None  # not theirs to change
    assert after.launcher == "local" and after.last_step == 2499
    assert dict(after.config) == {"shared": 1}
    assert store.runs() == [after]  # attaching made no new run


# ---------------------------------------------------------------- review fixes


def test_logging_after_finish_is_refused(store: Store) -> None:
    run = init(name="done")
    run.log({"x": 1.0})
    run.finish()
    for call in (lambda: run.log({"x": 2.0}), lambda: run.log_dist("d", [1.0]),
                 lambda: run.log_matrix("m", [[1.0]]), lambda: run.event("stage")):
        with pytest.raises(RuntimeError, match="is finished"):
            call()
    assert len(store.scalars(run.id)) == 1


def test_init_and_finish_do_not_leak_connections(store: Store) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    init(name="warm").finish()
    before = open_fds()
    for i in range(10):
        init(name=f"r{i}").finish()
    assert open_fds() <= before + 1


def test_attached_init_keeps_the_launched_config(store: Store, monkeypatch) -> None:
    row = store.create_run(kind="script", config={"steps": 500})
    monkeypatch.setenv("WB_RUN_ID", row.id)
    with init(config={"steps": 10, "lr": 0.1}) as run:
        assert run.config == {"steps": 500, "lr": 0.1}  # the spec wins over defaults
    assert store.get_run(row.id).status == "queued"  # attached: status untouched

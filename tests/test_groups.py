"""Run groups: `wb launch A B C` as one comparison, queued chaining (`--parallel`),
stopping queued runs, `wb compare`, and the store's v1 -> v2 migration. Real `wb`
subprocesses, real workers, a real SQLite store; the runs are tiny script runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import workbench.store as store_mod
from tests.helpers import wait_for, wb, wb_inproc
from tests.test_launcher import get_run, log_text, processes_of_store, script_spec, wait_status
from workbench.run_record import RunRecord
from workbench.spec import SpecError, builtin_groups, builtin_specs, expand_sources, load_specs
from workbench.store import Store
from workbench.tracking import Run

ENDED = ("finished", "failed", "stopped", "lost")

# Logs a few steps and ends.
QUICK = """\
    for step in range(3):
        run.log({"train/loss": 3.0 - step, "val/loss": 3.5 - step}, step=step)
    time.sleep(0.3)
"""
# Runs until the file `go` appears or SIGTERM arrives.
WAITS = """\
    run.log({"train/loss": 1.0}, step=0)
    stop = False


    def on_term(*_):
        global stop
        stop = True


    signal.signal(signal.SIGTERM, on_term)
    while not stop and not (HERE / "go").exists():
        time.sleep(0.02)
    run.log({"train/loss": 0.5}, step=1)
"""


@pytest.fixture(autouse=True)
def _no_leftover_processes(store_dir: Path) -> Iterator[None]:
    """Teardown: SIGKILL whatever a test left running for its store."""
    yield
    for pid in processes_of_store(store_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    wait_for(lambda: not processes_of_store(store_dir), 10, "leftover processes to die")


def launch_ids(*args: str) -> list[str]:
    proc = wb("launch", *args, "--detach", check=True, timeout=60)
    return proc.stdout.split()


def runs_of(store_dir: Path, group: str | None = None) -> list[RunRecord]:
    with Store(store_dir, create=False) as st:
        return st.runs(group=group)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# -- the store ---------------------------------------------------------------------------


def test_a_v1_store_upgrades_in_place(store_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written by the v1 code path (only the v0 -> v1 step) gains the group
    columns (v2) and the mirrors table (v3) on the next open; its runs stay and read
    as ungrouped."""
    with monkeypatch.context() as mp:
        mp.setattr(store_mod, "SCHEMA_VERSION", 1)
        mp.setattr(store_mod, "MIGRATIONS", {0: store_mod._create_v1})
        with Store(store_dir) as st:
            assert st.schema_version == 1
            assert "grp" not in st.db["runs"].columns_dict
            # The row a v1 create_run wrote: every v1 column, none of v2's.
            old = {"id": "oldrun01", "num": 1, "name": "old", "kind": "custom",
                   "status": "finished", "host": "h", "launcher": "sdk", "config": "{}",
                   "created": 1.0, "dir": str(store_dir / "oldrun01")}
            st.db["runs"].insert(old)
            st.conn.execute("UPDATE meta SET value = '1' WHERE key = 'runs'")
    with Store(store_dir) as st:
        assert st.schema_version == store_mod.SCHEMA_VERSION == 3
        assert "mirrors" in st.db.table_names()
        assert st.mirror(old["id"])["cursor"] == 0
        assert {"grp", "after"} <= st.db["runs"].columns_dict.keys()
        assert "ix_runs_grp" in {ix.name for ix in st.db["runs"].indexes}
        assert st.get_run(old["id"]).group is None and st.get_run(old["id"]).after is None
        new = st.create_run(kind="custom", name="new", group="g-1", after=old["id"])
        assert [r.id for r in st.runs(group="g-1")] == [new.id]
        assert st.get_run(new.id).after == old["id"]
        assert [r.name for r in st.runs()] == ["old", "new"]
        assert st.groups() == ["g-1"] and st.has_group("g-1") and not st.has_group("g")
        assert st.new_group_name("g") == "g-2" and st.new_group_name() == "group-1"


def test_a_queued_run_whose_worker_died_reads_lost(store: Store) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    row = store.create_run(kind="script", name="waiting", status="queued", pid=dead.pid,
                           group="g-1")
    assert store.get_run(row.id).status == "lost"
    assert store.stored_status(row.id) == "queued"
    assert [r.id for r in store.runs(status="lost", group="g-1")] == [row.id]


# -- specs -------------------------------------------------------------------------------


def test_set_applies_to_each_spec_that_has_the_key() -> None:
    charlm, muon, adamw = load_specs(["charlm", "muon-tiny", "adamw-tiny"],
                                     ["config.steps=7", "train.steps=30", "seed=5"])
    assert charlm.spec.config["steps"] == 7 and charlm.spec.seed == 5
    assert not hasattr(charlm.spec, "train")
    assert (muon.spec.train.steps, adamw.spec.train.steps) == (30, 30)
    assert (muon.spec.seed, adamw.spec.seed) == (5, 5)
    assert muon.spec.optim.name == "muon" and adamw.spec.optim.name == "adamw"
    with pytest.raises(SpecError, match=r"did you mean optim.tau\? \(no spec of the group"):
        load_specs(["charlm", "muon-tiny"], ["optim.tua=3"])
    with pytest.raises(SpecError, match="train.steps"):  # a key some spec has, a bad value
        load_specs(["charlm", "muon-tiny"], ["train.steps=-1"])


def test_builtin_groups_name_existing_specs() -> None:
    groups = builtin_groups()
    assert groups["optimizers-tiny"].specs == ("muon-tiny", "muonclip-tiny", "adamw-tiny")
    assert groups["optimizers-tiny"].parallel == 1
    specs = builtin_specs()
    assert "groups" not in specs  # the groups file is not a spec
    for group in groups.values():
        assert group.name not in specs and set(group.specs) <= specs.keys()
    assert expand_sources(["optimizers-tiny"]) == (list(groups["optimizers-tiny"].specs),
                                                   groups["optimizers-tiny"])
    assert expand_sources(["charlm", "optimizers-tiny"])[1] is None
    recipes = wb_inproc("recipes", check=True).stdout
    assert "optimizers-tiny" in recipes and "group" in recipes


# -- launching a group -------------------------------------------------------------------


def test_group_launch_runs_one_after_another(tmp_path: Path, store_dir: Path) -> None:
    specs = [str(script_spec(tmp_path, n, QUICK)) for n in ("a", "b", "c")]
    ids = launch_ids(*specs, "--name", "cmp")
    assert len(ids) == 3
    rows = [wait_status(store_dir, i, ENDED, timeout=60) for i in ids]
    assert [r.status for r in rows] == ["finished"] * 3
    assert [r.name for r in rows] == ["cmp-a", "cmp-b", "cmp-c"]
    assert {r.group for r in rows} == {"group-1"}
    assert [r.after for r in rows] == [None, ids[0], ids[1]]
    for before, after in zip(rows, rows[1:], strict=False):  # never two at once
        assert after.started >= before.ended
    assert "queued after run" in log_text(store_dir, ids[1])

    listed = json.loads(wb_inproc("ls", "--group", "group-1", "--json", check=True).stdout)
    assert [r["id"] for r in listed] == ids and listed[0]["grp"] == "group-1"
    table = wb_inproc("ls", check=True).stdout
    assert table.splitlines()[0].split()[:3] == ["id", "name", "group"]
    compared = json.loads(wb_inproc("compare", "group-1", "--json", check=True).stdout)
    assert [c["id"] for c in compared] == ids
    assert compared[0]["metrics"]["train/loss"] == {"step": 2, "value": 1.0}
    assert compared[0]["metrics"]["attn/max_logit"] is None
    assert compared[0]["group"] == "group-1" and compared[0]["optimizer"] is None
    # A group name is new: reusing one is refused before anything starts.
    line = one_error_line(wb_inproc("launch", specs[0], "--group", "group-1"))
    assert "group 'group-1' already exists" in line
    assert len(runs_of(store_dir)) == 3


def test_parallel_2_chains_the_third_run_after_the_first(tmp_path: Path,
                                                         store_dir: Path) -> None:
    specs = [str(script_spec(tmp_path, n, QUICK)) for n in ("a", "b", "c")]
    ids = launch_ids(*specs, "--parallel", "2", "--group", "pair")
    rows = [wait_status(store_dir, i, ENDED, timeout=60) for i in ids]
    assert [r.status for r in rows] == ["finished"] * 3
    assert [r.after for r in rows] == [None, None, ids[0]]
    assert rows[2].started >= rows[0].ended


def test_stopping_a_queued_run_keeps_its_place_in_the_lane(tmp_path: Path,
                                                           store_dir: Path) -> None:
    """`wb stop` on a queued run ends it as stopped without running it; the run queued
    behind it goes on waiting for the running one, not starting beside it."""
    specs = [str(script_spec(tmp_path, n, WAITS)) for n in ("a", "b", "c")]
    first, second, third = launch_ids(*specs)
    wait_status(store_dir, first, ("running",), timeout=30)
    wait_for(lambda: "queued after" in log_text(store_dir, second), 30, "the second to wait")
    proc = wb("stop", second, "--grace", "20", timeout=60)
    assert proc.stdout.strip() == f"run {second} stopped", proc.stderr
    stopped = get_run(store_dir, second)
    assert stopped.status == "stopped" and stopped.started is None
    assert stopped.exit_code == 0 and stopped.last_step is None
    assert "stopped while queued; it never started" in log_text(store_dir, second)
    wait_for(lambda: "queued after" in log_text(store_dir, third), 30, "the third to wait")
    assert get_run(store_dir, third).status == "queued"
    assert get_run(store_dir, first).status == "running"
    (tmp_path / "go").touch()
    done = [wait_status(store_dir, i, ENDED, timeout=60) for i in (first, third)]
    assert [r.status for r in done] == ["finished", "finished"]
    assert done[1].started >= done[0].ended
    # Resumed, it runs now (nothing to wait for) and stays in the comparison.
    new = wb("resume", second, "--detach", check=True, timeout=60).stdout.strip()
    resumed = wait_status(store_dir, new, ENDED, timeout=60)
    assert resumed.status == "finished" and resumed.group == stopped.group == "group-1"
    assert resumed.after is None and resumed.resumed_from == second


def test_stop_a_group_stops_queued_and_running_runs(tmp_path: Path, store_dir: Path) -> None:
    specs = [str(script_spec(tmp_path, n, WAITS)) for n in ("a", "b")]
    first, second = launch_ids(*specs, "--group", "sweep")
    wait_status(store_dir, first, ("running",), timeout=30)
    proc = wb("stop", "sweep", "--grace", "20", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"run {second} stopped", f"run {first} stopped"]
    assert [r.status for r in runs_of(store_dir, "sweep")] == ["stopped", "stopped"]
    assert get_run(store_dir, second).started is None
    assert "no queued or running run" in wb_inproc("stop", "sweep", check=True).stdout


def test_a_queued_worker_killed_reads_lost(tmp_path: Path, store_dir: Path) -> None:
    specs = [str(script_spec(tmp_path, n, WAITS)) for n in ("a", "b")]
    first, second = launch_ids(*specs)
    wait_for(lambda: "queued after" in log_text(store_dir, second), 30, "the second to wait")
    os.kill(get_run(store_dir, second).pid, signal.SIGKILL)
    wait_for(lambda: get_run(store_dir, second).status == "lost", 10, "lost")
    # A `wb` subprocess took a second to start, long enough for the first to be running.
    wait_status(store_dir, first, ("running",), timeout=30)
    rows = json.loads(wb_inproc("ls", "--json", check=True).stdout)
    assert [r["status"] for r in rows] == ["running", "lost"]
    assert "recorded as lost" in wb("stop", second, check=True).stdout


def test_a_bad_spec_or_key_in_a_group_creates_nothing(tmp_path: Path, store_dir: Path) -> None:
    good = str(script_spec(tmp_path, "good", QUICK))
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "script"\n[script]\ncommand = ["python", "x.py"]\nbogus = 1\n')
    calls = [
        (["launch", good, str(bad)], "unknown key script.bogus"),
        (["launch", good, "nosuch"], "no spec 'nosuch'"),
        (["launch", good, "muon-tiny", "--set", "train.stepz=3"],
         "did you mean train.steps? (no spec of the group has it)"),
        (["launch", good, good, "--group", "no good"], "invalid group name 'no good'"),
        (["launch", good, good, "--parallel", "0"], "Invalid value for '--parallel'"),
    ]
    for args, fragment in calls:
        assert fragment in one_error_line(wb_inproc(*args))
    assert not store_dir.exists()  # no store, so no row and no folder


def test_foreground_group_follows_every_run_and_exits_1_if_one_failed(
        tmp_path: Path, store_dir: Path) -> None:
    fails = str(script_spec(tmp_path, "fails", 'raise ValueError("boom in the group")\n'))
    good = str(script_spec(tmp_path, "good", QUICK))
    proc = wb("launch", fails, good, timeout=120)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    out = proc.stdout
    assert "group group-1: 2 runs" in out
    assert "failed fails-1" in out and "ValueError: boom in the group" in out  # its log tail
    assert "finished good-1" in out  # a failed predecessor does not stop the comparison
    assert "train/loss" in out and "val/loss" in out  # the compare table at the end
    assert [r.status for r in runs_of(store_dir)] == ["failed", "finished"]


def test_ctrl_c_stops_a_foreground_group(tmp_path: Path, store_dir: Path) -> None:
    specs = [str(script_spec(tmp_path, n, WAITS)) for n in ("a", "b")]
    fg = subprocess.Popen([sys.executable, "-m", "workbench.cli", "launch", *specs],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        def first_running() -> bool:
            if not (store_dir / "workbench.db").exists():
                return False
            rows = runs_of(store_dir)
            return len(rows) == 2 and rows[0].last_step == 0
        wait_for(first_running, 30, "the first run to log")
        fg.send_signal(signal.SIGINT)
        stdout, stderr = fg.communicate(timeout=60)
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait(timeout=10)
    assert fg.returncode == 0, (stdout, stderr)
    assert "stopping the group" in stdout
    rows = runs_of(store_dir)
    assert [r.status for r in rows] == ["stopped", "stopped"]
    assert rows[1].started is None  # the queued one never ran


# -- wb compare --------------------------------------------------------------------------


def _logged_run(st: Store, name: str, optim: str, loss: float, group: str) -> RunRecord:
    row = st.create_run(kind="pretrain", name=name, status="finished", group=group,
                        config={"optim": {"name": optim}}, total_steps=10)
    run = Run(st, row, owner=False)
    for step in range(10):
        run.log({"train/loss": loss + 1 - step / 10, "attn/max_logit": 10.0 + step,
                 "perf/tokens_per_s": 1000.0}, step=step)
    run.log({"val/loss": loss + 0.2}, step=9)
    run.finish()
    return row


def test_compare_a_group_and_single_runs(store_dir: Path) -> None:
    with Store(store_dir) as st:
        muon = _logged_run(st, "muon-tiny-1", "muon", 2.0, "opt-1")
        adamw = _logged_run(st, "adamw-tiny-1", "adamw", 2.5, "opt-1")
        other = _logged_run(st, "other", "muonclip", 3.0, "opt-2")
    rows = json.loads(wb_inproc("compare", "opt-1", "--json", check=True).stdout)
    assert [(r["name"], r["optimizer"]) for r in rows] == [("muon-tiny-1", "muon"),
                                                           ("adamw-tiny-1", "adamw")]
    assert rows[0]["metrics"]["train/loss"]["value"] == pytest.approx(2.1)
    assert rows[0]["metrics"]["train/loss"]["step"] == 9
    assert rows[1]["metrics"]["val/loss"]["value"] == pytest.approx(2.7)
    assert rows[0]["metrics"]["attn/max_logit"]["value"] == 19.0
    assert rows[0]["metrics"]["perf/tokens_per_s"]["value"] == 1000.0
    assert rows[0]["last_step"] == 9 and rows[0]["total_steps"] == 10
    # Runs by ref, mixed with a group, without duplicates.
    mixed = json.loads(wb_inproc("compare", other.id, "opt-1", muon.id, "--json",
                                 check=True).stdout)
    assert [r["id"] for r in mixed] == [other.id, muon.id, adamw.id]
    table = wb_inproc("compare", "opt-1", check=True).stdout
    header = table.splitlines()[0].split()
    assert header[:5] == ["name", "id", "optim/kind", "status", "step"]
    assert {"train/loss", "val/loss", "tokens/s"} <= set(header)
    assert "muon-tiny-1" in table and "adamw" in table and "2.1" in table
    line = one_error_line(wb_inproc("compare", "nosuch"))
    assert "no group or run 'nosuch'" in line
    assert "no group 'nosuch'" in one_error_line(wb_inproc("ls", "--group", "nosuch"))


# -- the built-in group end to end ------------------------------------------------------


@pytest.mark.slow
def test_optimizers_tiny_group_trains_three_optimizers(store_dir: Path) -> None:
    small = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
             "train.steps=4", "optim.warmup_steps=1", "train.batch_size=2", "train.eval_every=2",
             "train.eval_batches=1", "train.max_logit_every=2", "train.svd_every=4",
             "train.checkpoint_every=4", "data.max_bytes=200000"]
    args = [a for kv in small for a in ("--set", kv)]
    proc = wb("launch", "optimizers-tiny", *args, timeout=600)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    rows = json.loads(wb("compare", "optimizers-tiny-1", "--json", check=True).stdout)
    assert [r["optimizer"] for r in rows] == ["muon", "muonclip", "adamw"]
    assert [r["status"] for r in rows] == ["finished"] * 3
    for r in rows:
        for key in ("train/loss", "val/loss", "attn/max_logit", "perf/tokens_per_s"):
            assert r["metrics"][key] is not None, (r["name"], key)

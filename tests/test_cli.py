"""The `wb` command line: launches through the real `wb` subprocess, the reading and
refusing commands through the real entry point in this process (tests/helpers.py)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for, wb, wb_inproc
from workbench.run_record import RunRecord
from workbench.store import Store
from workbench.tracking import Run

COMMANDS = ["launch", "stop", "resume", "rm", "ls", "show", "events", "export", "logs",
            "recipes", "bench", "compare", "watch", "import", "export-model", "example-model"]


def wb_json(*args: str) -> Any:
    proc = wb_inproc(*args, "--json", check=True)
    return json.loads(proc.stdout)


def run_status(store_dir: Path, run_id: str) -> str:
    with Store(store_dir, create=False) as st:
        return st.get_run(run_id).status


def kill_runs(store_dir: Path) -> None:
    """Teardown: SIGKILL the process group of every run still alive in a store."""
    if not (store_dir / "workbench.db").exists():
        return
    with Store(store_dir, create=False) as st:
        pids = [r.pid for r in st.runs() if r.pid and r.pid != os.getpid()]
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# -- a finished charlm run, shared by the reading tests ------------------------------------


@pytest.fixture(scope="module")
def charlm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`wb launch charlm --detach`, followed live by `wb export --follow` until it ends."""
    root = tmp_path_factory.mktemp("cli")
    store_dir = root / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("WB_STORE", str(store_dir))
        try:
            proc = wb("launch", "charlm", "--set", "config.steps=60", "--detach", check=True,
                      timeout=60)
            run_id = proc.stdout.strip()
            follow = subprocess.run(
                [sys.executable, "-m", "workbench.cli", "export", run_id, "--follow"],
                capture_output=True, text=True, timeout=120)
            wait_for(lambda: run_status(store_dir, run_id) == "finished", 60,
                     "charlm to finish")
            yield {"id": run_id, "store": store_dir, "launch": proc, "follow": follow}
        finally:
            kill_runs(store_dir)


@pytest.fixture
def in_charlm_store(charlm: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("WB_STORE", str(charlm["store"]))
    return charlm


# -- help --------------------------------------------------------------------------------


def wb_many(*calls: list[str]) -> list[tuple[int, str, str]]:
    """Run several `wb` commands (in this process): (returncode, stdout, stderr) of each."""
    return [(p.returncode, p.stdout, p.stderr) for p in (wb_inproc(*args) for args in calls)]


def test_help_of_wb_and_of_every_command_exits_0_and_shows_an_example() -> None:
    calls = [["--help"], *([c, "--help"] for c in COMMANDS)]
    for args, (code, stdout, stderr) in zip(calls, wb_many(*calls), strict=True):
        assert code == 0, (args, stderr)
        assert "Example" in stdout, args
        assert "Usage: wb" in stdout, args


def test_version() -> None:
    proc = wb_inproc("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("workbench-lab ")


# -- launch, ls, show, events ---------------------------------------------------------------


def test_detached_launch_prints_the_run_id(in_charlm_store: dict) -> None:
    proc = in_charlm_store["launch"]
    assert proc.stdout.strip() == in_charlm_store["id"]
    assert len(in_charlm_store["id"]) == 8 and in_charlm_store["id"].isalnum()
    assert proc.stdout.count("\n") == 1


def test_ls_json_and_status_filter(in_charlm_store: dict) -> None:
    run_id = in_charlm_store["id"]
    rows = wb_json("ls")
    assert [r["id"] for r in rows] == [run_id]
    row = rows[0]
    assert row["status"] == "finished" and row["name"] == "charlm-1" and row["kind"] == "script"
    assert row["key_metric"]["key"] == "train/loss" and row["key_metric"]["value"] > 0
    assert "spec" not in row
    assert [r["id"] for r in wb_json("ls", "--status", "finished")] == [run_id]
    assert wb_json("ls", "--status", "running") == []
    table = wb_inproc("ls", check=True).stdout
    assert run_id in table and "finished" in table


def test_show_json_has_status_step_latest_values_and_event_counts(in_charlm_store: dict) -> None:
    info = wb_json("show", in_charlm_store["id"])
    assert info["status"] == "finished"
    assert info["exit_code"] == 0
    assert info["last_step"] >= 59
    assert info["total_steps"] == 60
    latest = info["latest"]
    assert {"train/loss", "val/loss", "train/lr", "train/grad_norm"} <= latest.keys()
    assert latest["train/loss"]["step"] == 59
    assert latest["val/loss"]["step"] == 59
    assert 0 < latest["train/loss"]["value"] < 10
    assert info["event_counts"]["checkpoint"] == 1
    assert info["event_counts"]["stage"] == 1
    assert info["config"]["steps"] == 60  # an object, not a JSON string
    human = wb_inproc("show", in_charlm_store["id"], check=True).stdout
    assert "finished" in human and "train/loss" in human


def test_events_json(in_charlm_store: dict) -> None:
    events = wb_json("events", in_charlm_store["id"])
    kinds = [e["kind"] for e in events]
    assert "checkpoint" in kinds and kinds[-1] == "stage"
    assert events[-1]["payload"] == {"stage": "finished", "exit_code": 0}
    assert events[-1]["step"] >= 59  # recorded at the run's last step, not 0
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    only = wb_json("events", in_charlm_store["id"], "--kind", "checkpoint")
    assert [e["kind"] for e in only] == ["checkpoint"]


@pytest.mark.parametrize("ref", ["id", "prefix", "name"])
def test_run_is_found_by_id_prefix_or_name(in_charlm_store: dict, ref: str) -> None:
    run_id = in_charlm_store["id"]
    arg = {"id": run_id, "prefix": run_id[:5], "name": "charlm-1"}[ref]
    assert wb_json("show", arg)["id"] == run_id


def test_foreground_launch_shows_output_and_final_line(store_dir: Path) -> None:
    try:
        proc = wb("launch", "charlm", "--set", "config.steps=40", timeout=120)
    finally:
        kill_runs(store_dir)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    out = proc.stdout
    assert "charlm: done at step 40" in out  # the script's own output
    last = out.strip().splitlines()[-1]
    assert last.startswith("finished charlm-1 (") and "at step" in last
    with Store(store_dir, create=False) as st:
        (row,) = st.runs()
    assert row.status == "finished" and row.exit_code == 0


# -- export ------------------------------------------------------------------------------


def test_export_jsonl(in_charlm_store: dict) -> None:
    records = parse_jsonl(wb_inproc("export", in_charlm_store["id"], "--format", "jsonl",
                                    check=True).stdout)
    assert records[0]["type"] == "run" and records[0]["id"] == in_charlm_store["id"]
    assert records[0]["status"] == "finished"
    body = records[1:]
    ids = [r["id"] for r in body]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {r["type"] for r in body} == {"scalar", "event"}
    losses = [r for r in body if r["type"] == "scalar" and r["key"] == "train/loss"]
    assert [r["step"] for r in losses] == list(range(60))


def test_export_csv_has_header_and_scalar_rows(in_charlm_store: dict) -> None:
    text = wb_inproc("export", in_charlm_store["id"], "--format", "csv", check=True).stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["id", "step", "key", "value", "wall"]
    body = rows[1:]
    jsonl = parse_jsonl(wb_inproc("export", in_charlm_store["id"], check=True).stdout)
    scalars = [r for r in jsonl if r["type"] == "scalar"]
    assert [int(r[0]) for r in body] == [r["id"] for r in scalars]
    assert all(float(r[3]) == pytest.approx(s["value"]) for r, s in zip(body, scalars,
                                                                        strict=True))


def test_export_keys_glob(in_charlm_store: dict) -> None:
    records = parse_jsonl(wb_inproc("export", in_charlm_store["id"], "--keys", "train/*",
                                    check=True).stdout)[1:]
    keys = {r["key"] for r in records}
    assert keys == {"train/loss", "train/lr", "train/grad_norm"}
    two = parse_jsonl(wb_inproc("export", in_charlm_store["id"], "-k", "val/*", "-k", "stage",
                                check=True).stdout)[1:]
    assert {r.get("key", r.get("kind")) for r in two} == {"val/loss", "stage"}


def test_export_since_returns_exactly_the_later_records(in_charlm_store: dict) -> None:
    full = parse_jsonl(wb_inproc("export", in_charlm_store["id"], check=True).stdout)[1:]
    cut = full[len(full) // 3]["id"]
    later = parse_jsonl(wb_inproc("export", in_charlm_store["id"], "--since", str(cut),
                                  check=True).stdout)[1:]
    assert later == [r for r in full if r["id"] > cut]
    assert later and later[0]["id"] > cut
    last = full[-1]["id"]
    assert parse_jsonl(wb_inproc("export", in_charlm_store["id"], "--since", str(last),
                                 check=True).stdout)[1:] == []


def test_export_follow_streams_a_running_run_until_it_ends(in_charlm_store: dict) -> None:
    follow = in_charlm_store["follow"]
    assert follow.returncode == 0, follow.stderr
    lines = parse_jsonl(follow.stdout)
    assert lines[0]["type"] == "run"
    assert lines[0]["status"] in ("queued", "running")  # it started on a live run
    run_lines = [r for r in lines if r["type"] == "run"]
    assert run_lines[-1]["status"] == "finished"
    records = [r for r in lines if r["type"] != "run"]
    ids = [r["id"] for r in records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    full = parse_jsonl(wb_inproc("export", in_charlm_store["id"], check=True).stdout)[1:]
    assert ids == [r["id"] for r in full]  # no gap, no duplicate


def test_logs_prints_the_output_from_an_offset(in_charlm_store: dict) -> None:
    run_id = in_charlm_store["id"]
    text = (in_charlm_store["store"] / run_id / "stdout.log").read_bytes()
    assert wb_inproc("logs", run_id, check=True).stdout.encode() == text
    tail = wb_inproc("logs", run_id, "--offset", "10", "--follow", check=True).stdout
    assert tail.encode() == text[10:] and f"run {run_id} finished" in tail


def test_export_bad_format_is_refused(in_charlm_store: dict) -> None:
    line = one_error_line(wb_inproc("export", in_charlm_store["id"], "--format", "xml"))
    assert "unknown format 'xml'" in line


def test_json_output_is_strict_even_with_nan_and_inf(store_dir: Path) -> None:
    """NaN/inf in scalars and in event payloads come out as null: every line parses as
    strict JSON (a NaN loss spike must not break `wb events --json`)."""
    with Store(store_dir) as st:
        row = st.create_run(kind="custom", name="diverged", status="finished")
        run = Run(st, row, owner=False)
        run.log({"loss": float("nan"), "grad": float("inf"), "ok": 1.0}, step=0)
        run.event("loss_spike", step=0, value=float("nan"), baseline=[1.0, float("-inf")])
        run.finish()

    def strict(text: str) -> list[Any]:
        def refuse(token: str) -> None:
            raise AssertionError(f"non-strict JSON token {token}")
        return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]

    codes = wb_many(["events", "diverged", "--json"], ["export", "diverged"],
                    ["show", "diverged", "--json"], ["ls", "--json"])
    assert [c for c, _, _ in codes] == [0, 0, 0, 0], [e for _, _, e in codes]
    (events,) = strict(codes[0][1])
    spike = next(e for e in events if e["kind"] == "loss_spike")
    assert spike["payload"] == {"value": None, "baseline": [1.0, None]}
    records = strict(codes[1][1])[1:]
    scalars = {r["key"]: (r["value"], r["flag"]) for r in records if r["type"] == "scalar"}
    assert scalars == {"loss": (None, 1), "grad": (None, 2), "ok": (1.0, 0)}
    (show,) = strict(codes[2][1])
    assert show["latest"]["loss"]["value"] is None and show["latest"]["ok"]["value"] == 1.0
    strict(codes[3][1])


# -- rm ----------------------------------------------------------------------------------


def _sdk_run(store_dir: Path, name: str, status: str) -> RunRecord:
    with Store(store_dir) as st:
        row = st.create_run(kind="custom", name=name, status=status, launcher="sdk",
                            pid=os.getpid())
        run = Run(st, row, owner=False)
        for step in range(5):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
        run.event("checkpoint", step=4)
        run.finish()
    return row


def _count(store_dir: Path, table: str) -> int:
    with sqlite3.connect(store_dir / "workbench.db") as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_rm_deletes_rows_and_folder(store_dir: Path) -> None:
    keep = _sdk_run(store_dir, "keep", "finished")
    gone = _sdk_run(store_dir, "gone", "finished")
    assert _count(store_dir, "scalars") == 10
    proc = wb_inproc("rm", "gone", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert not (store_dir / gone.id).exists()
    assert (store_dir / keep.id).exists()
    with Store(store_dir, create=False) as st:
        assert [r.id for r in st.runs()] == [keep.id]
    assert _count(store_dir, "scalars") == 5 and _count(store_dir, "events") == 1
    one_error_line(wb_inproc("show", gone.id))


def test_rm_refuses_a_running_run(store_dir: Path) -> None:
    row = _sdk_run(store_dir, "live", "running")  # pid: this (live) test process
    line = one_error_line(wb_inproc("rm", row.id, "--yes"))
    assert "is running; stop it first" in line
    assert (store_dir / row.id).exists()
    assert run_status(store_dir, row.id) == "running"


def test_rm_without_yes_and_without_a_terminal_is_refused(store_dir: Path) -> None:
    row = _sdk_run(store_dir, "old", "finished")
    proc = wb_inproc("rm", row.id)  # stdin is empty and not a terminal
    assert "needs --yes" in one_error_line(proc)
    assert (store_dir / row.id).exists()


# -- exit codes ----------------------------------------------------------------------------


def test_unknown_run_exits_2_with_one_line(store_dir: Path) -> None:
    _sdk_run(store_dir, "present", "finished")
    commands = ("show", "events", "export", "stop", "resume", "rm")
    for code, stdout, stderr in wb_many(*([c, "nosuchrun"] for c in commands)):
        line = one_error_line(subprocess.CompletedProcess([], code, stdout, stderr))
        assert "no run 'nosuchrun'" in line and "wb ls" in line


def test_commands_on_a_missing_store_exit_2(store_dir: Path) -> None:
    line = one_error_line(wb_inproc("show", "abc"))
    assert "no store at" in line
    listed = wb_inproc("ls", "--json")  # listing an empty place is not an error
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert not store_dir.exists()  # reading never creates a store


def test_unknown_status_filter_exits_2(store_dir: Path) -> None:
    line = one_error_line(wb_inproc("ls", "--status", "bogus"))
    assert "unknown status 'bogus'" in line and "finished" in line


def test_usage_errors_are_one_line_with_exit_2() -> None:
    calls = [["ls", "--bogus"], ["stop", "x", "--grace", "-1"], ["lss"], ["show"],
             ["export", "x", "--since", "abc"]]
    expected = ["No such option: --bogus", "Invalid value for '--grace'",
                "No such command 'lss'. Did you mean 'ls'?", "Missing argument 'run'",
                "Invalid value for '--since'"]
    for (code, stdout, stderr), fragment in zip(wb_many(*calls), expected, strict=True):
        line = one_error_line(subprocess.CompletedProcess([], code, stdout, stderr))
        assert fragment in line
        assert stdout == ""


def test_unknown_bench_exits_2() -> None:
    assert "unknown bench" in one_error_line(wb_inproc("bench", "nope"))


# -- bench ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_store_quick_json_prints_one_object_with_figures() -> None:
    proc = wb("bench", "store", "--quick", "--json", timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    for key in ("sdk_points_per_s", "raw_points_per_s", "ratio", "log_call_us_p50",
                "wandb_log_call_us_p50", "wandb_vs_sdk_call"):
        assert isinstance(result[key], int | float) and result[key] > 0, (key, result)


def test_bare_wb_shows_the_overview_and_exits_0() -> None:
    proc = wb_inproc()
    assert proc.returncode == 0, proc.stderr
    assert "Usage: wb" in proc.stdout and "launch" in proc.stdout

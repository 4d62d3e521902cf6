"""The runs table reads only what changed (issue 20 item 6): a poll after no commit
reads no rows, a change to one run re-reads that run's figures, and the table shows it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import until
from workbench.app import WorkbenchApp
from workbench.runs_view import RunsModel
from workbench.store import Batch, Store


def _runs(store: Store, n: int) -> list[str]:
    ids = []
    for i in range(n):
        row = store.create_run(kind="custom", name=f"r{i}", status="finished", launcher="sdk")
        store.write_batch(Batch(row.id, scalars=[(1, "train/loss", 1.0 + i, 1.0, 0)]),
                          last_step=1)
        ids.append(row.id)
    return ids


def test_a_poll_reads_rows_only_after_a_commit(store: Store, store_dir: Path) -> None:
    ids = _runs(store, 3)
    reader = Store(store_dir, create=False)
    model = RunsModel(reader)
    views = model.poll()
    assert model.reads == 1 and views[ids[1]].metric == 2.0
    model.poll()
    assert model.reads == 1  # nothing committed: nothing read
    before = {i: views[i] for i in ids}
    # another connection (a writer process) logs to one run
    store.write_batch(Batch(ids[1], scalars=[(2, "train/loss", 0.5, 2.0, 0)]), last_step=2)
    views = model.poll()
    assert model.reads == 2 and views[ids[1]].metric == 0.5
    assert views[ids[1]].row.last_step == 2
    assert all(views[i] is before[i] for i in ids) and views[ids[0]].metric == 1.0
    # this connection's own writes count too
    reader.update_run(ids[2], status="failed")
    views = model.poll()
    assert model.reads == 3 and views[ids[2]].row.status == "failed"
    store.delete_run(ids[0])
    assert ids[0] not in model.poll() and model.reads == 4
    reader.close()


def test_a_run_whose_process_ends_reads_lost_without_a_commit(store: Store,
                                                              store_dir: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        row = store.create_run(kind="custom", name="live", status="running", pid=proc.pid)
        model = RunsModel(store)
        assert model.poll()[row.id].row.status == "running"
        proc.kill()
        proc.wait()
        assert model.poll()[row.id].row.status == "lost"
        assert model.reads == 1
    finally:
        proc.kill()
        proc.wait()


def test_select_filters_and_sorts_without_textual(store: Store) -> None:
    """workbench/runs_view.py: the runs table's filters and sort keys, on RunRecords."""
    from workbench.runs_view import RunView, select

    ids = _runs(store, 3)
    store.update_run(ids[1], status="failed")
    views = [RunView(r, "train/loss", metric=m) for r, m in
             zip(sorted(store.runs(), key=lambda r: r.num), (2.0, None, float("nan")),
                 strict=True)]
    assert [v.id for v in select(views)] == ids[::-1]  # age: newest first
    assert [v.id for v in select(views, "r1")] == [ids[1]]
    assert [v.id for v in select(views, status="failed")] == [ids[1]]
    assert select(views, "custom r0 nothing") == []  # every word must match
    # Unknown values (no metric, NaN) sort last in both directions.
    assert [v.id for v in select(views, column="metric")][0] == ids[0]
    assert [v.id for v in select(views, column="metric", reverse=True)][-1] == ids[0]
    assert [v.id for v in select(views, column="status")] == [ids[1], ids[2], ids[0]]


def test_the_table_shows_a_change_to_one_run(store: Store, store_dir: Path) -> None:
    ids = _runs(store, 4)

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: app.runs_screen is not None
                        and app.runs_screen.table.row_count == 4, 10, "the table")
            table = app.runs_screen.table

            def metric(run_id: str) -> str:
                return str(table.get_cell(run_id, "metric"))

            assert metric(ids[2]) == "3"
            writer = Store(store_dir, create=False)
            writer.write_batch(Batch(ids[2], scalars=[(2, "train/loss", 0.25, 2.0, 0)]),
                               last_step=2)
            await until(pilot, lambda: metric(ids[2]) == "0.25", 10, "the new metric")
            assert str(table.get_cell(ids[2], "step")) == "2"
            assert [metric(i) for i in (ids[0], ids[1], ids[3])] == ["1", "2", "4"]
            writer.update_run(ids[3], status="failed")
            await until(pilot, lambda: str(table.get_cell(ids[3], "status")) == "failed",
                        10, "the new status")
            writer.close()
            await pilot.press("q")

    asyncio.run(main())


def test_a_big_store_shows_its_first_rows_then_all_in_order(
        store: Store, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first frame adds the rows a screen shows; the rest follow after its paint,
    in the same order, and a run selected before it was added gets the cursor."""
    from workbench.screens import runs as runs_screen

    monkeypatch.setattr(runs_screen, "FIRST_ROWS", 10)
    ids = [store.create_run(kind="custom", name=f"r{i:02d}", status="finished",
                            launcher="sdk").id for i in range(40)]
    counts: list[int] = []
    reconcile = runs_screen.RunsScreen._reconcile

    def counted(self: runs_screen.RunsScreen, views: Any) -> None:
        reconcile(self, views)
        counts.append(self.table.row_count)

    monkeypatch.setattr(runs_screen.RunsScreen, "_reconcile", counted)

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(100, 8)) as pilot:  # first: max(10, 2 x 8) rows
            await until(pilot, lambda: app.runs_screen is not None
                        and app.runs_screen.table.row_count == 40, 10, "every row")
            table = app.runs_screen.table
            assert [r.key.value for r in table.ordered_rows] == ids[::-1]  # newest first
            assert counts[0] == 16
            assert "40 runs" in str(app.runs_screen.query_one("#runs-count").render())
            await pilot.press("q")

    asyncio.run(main())


def test_the_aggregate_reads_seek_indexes_and_match_the_per_run_reads(store: Store) -> None:
    ids = _runs(store, 3)
    store.write_batch(Batch(ids[1], events=[(1, "loss_spike", "warning", "{}", 1.0)] * 2))
    points = store.latest_values((i, "train/loss") for i in ids)
    assert points == {i: store.latest_value(i, "train/loss") for i in ids}
    assert store.latest_values([(ids[0], "no/such")]) == {ids[0]: None}
    assert store.event_kind_counts("loss_spike", ids) == {ids[1]: 2}
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)  # the statements, bound values inline
    try:
        store.latest_values((i, "train/loss") for i in ids)
        store.event_kind_counts("loss_spike", ids)
    finally:
        store.conn.set_trace_callback(None)
    reads = [sql for sql in seen if "json_each" in sql]
    assert len(reads) == 2, seen  # one statement each, for all the runs
    for sql in reads:
        plan = [r[3] for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql)]
        assert not any(line.startswith(("SCAN scalars", "SCAN events", "SCAN e", "SCAN s"))
                       for line in plan), plan

"""A run's scalar log (workbench/scalar_log.py, read by `Store.scalar_history`):
appended as batches commit, derived from the store, disposable, and never served
stale."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workbench import scalar_log
from workbench.feed import RunFeed
from workbench.store import SCALAR_CACHE, Batch, Store

KEYS = ("train/loss", "train/lr")


def _write(store: Store, run_id: str, steps: range, offset: float = 0.0) -> None:
    rows = [(s, key, float(s) + offset + i, 1000.0 + s, 0) for s in steps
            for i, key in enumerate(KEYS)]
    store.write_batch(Batch(run_id, scalars=rows), last_step=steps[-1])


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            assert np.array_equal(x, y, equal_nan=True), key


def _cache(store: Store, run_id: str) -> Path:
    return store.run_dir(run_id) / SCALAR_CACHE


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """(from the start?, rows) of every read of scalars from SQLite for the history."""
    reads: list[tuple[bool, int]] = []
    records = Store._scalar_records

    def counted(self: Store, num: int, since: int, upto: int) -> Any:
        out = records(self, num, since, upto)
        if len(out):
            reads.append((since == 0, len(out)))
        return out

    monkeypatch.setattr(Store, "_scalar_records", counted)
    return reads


def test_history_equals_the_store_read_and_writes_a_cache_only_for_big_runs(
        store: Store) -> None:
    small = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, small, range(10))
    assert store.scalar_history(small, min_rows=100)[1]["train/loss"][0].tolist() == \
        list(range(10))
    assert not _cache(store, small).exists()

    big = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, big, range(100))
    store.write_batch(Batch(big, scalars=[(100, "train/loss", None, 1100.0, 1),
                                          (101, "train/loss", math.inf, 1101.0, 2)]))
    upto, first = store.scalar_history(big, min_rows=100)
    assert _cache(store, big).exists()
    _same(first, store.scalar_columns(big)[1])
    assert upto == store.last_id()
    again_upto, again = store.scalar_history(big, min_rows=100)  # from the cache
    assert again_upto == upto
    _same(again, first)
    assert math.isnan(again["train/loss"][1][-2]) and again["train/loss"][1][-1] == math.inf


def test_batches_after_the_log_exists_are_appended_to_it(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(200))
    store.scalar_history(run, min_rows=100)  # reads the store, writes the log
    size = _cache(store, run).stat().st_size
    _write(store, run, range(200, 210))  # appended as it commits
    assert _cache(store, run).stat().st_size == size + 20 * scalar_log.record_dtype().itemsize
    reads = _count_reads(monkeypatch)
    _, columns = store.scalar_history(run, min_rows=100)
    assert reads == []  # all of it from the log
    assert columns["train/loss"][0].tolist() == list(range(210))
    _same(columns, store.scalar_columns(run)[1])


def test_a_run_starts_its_log_when_it_grows_big_and_opens_from_it(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workbench.store.SCALAR_CACHE_MIN_ROWS", 100)
    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(40))  # 80 points: no log yet
    assert not _cache(store, run).exists()
    _write(store, run, range(40, 60))  # past 100: the log starts, with every point
    assert _cache(store, run).exists()
    _write(store, run, range(60, 90))
    store.write_batch(Batch(run, scalars=[(90, "train/loss", None, 1090.0, 1),
                                          (91, "train/loss", -math.inf, 1091.0, 3)]))
    reads = _count_reads(monkeypatch)
    _, columns = store.scalar_history(run)
    assert reads == []
    _same(columns, store.scalar_columns(run)[1])
    assert math.isnan(columns["train/loss"][1][-2]) and columns["train/loss"][1][-1] == -math.inf


def test_a_log_missing_its_newest_records_is_trusted_up_to_them(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer killed between its commit and its append, half a record, and records
    appended out of order by two processes: the store fills in what the log lacks."""
    monkeypatch.setattr("workbench.store.SCALAR_CACHE_MIN_ROWS", 100)
    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(3000))
    size = scalar_log.record_dtype().itemsize
    path = _cache(store, run)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 7 * size - 3])  # lost appends + half a record
    reads = _count_reads(monkeypatch)
    _same(store.scalar_history(run, write=False)[1], store.scalar_columns(run)[1])
    assert reads == [(False, 8)]  # the lost ones, and the half one, from the store
    records = scalar_log.read(path)
    shuffled = np.concatenate([records[-500:], records[:-500]])  # out of order, twice
    path.write_bytes(np.concatenate([shuffled, records[:10]]).tobytes())
    reads.clear()
    _same(store.scalar_history(run, write=False)[1], store.scalar_columns(run)[1])
    assert reads == [(False, 8)]


def test_a_feed_of_a_live_run_never_shows_a_stale_cache(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workbench.store.SCALAR_CACHE_MIN_ROWS", 50)
    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(100))
    RunFeed(store, run).poll()  # writes the log
    assert _cache(store, run).exists()
    _write(store, run, range(100, 103))
    feed = RunFeed(store, run)
    feed.poll()
    assert feed.series("train/loss").step.tolist() == list(range(103))
    _write(store, run, range(103, 105))
    feed.poll()  # incremental, past the cursor
    assert feed.series("train/lr").step.tolist() == list(range(105))


def test_a_log_is_refused_when_the_rows_it_copies_changed(store: Store) -> None:
    """The run deleted and made again under the same id (as a mirror or a re-import
    would), with the old log put back: it describes rows that are gone."""
    run = store.create_run(kind="custom", status="finished", launcher="sdk").id
    _write(store, run, range(200))
    store.scalar_history(run, min_rows=100)
    saved = _cache(store, run).read_bytes()
    store.delete_run(run)
    assert not store.run_dir(run).exists()  # the log went with the folder
    store.create_run(kind="custom", status="finished", launcher="import", run_id=run)
    _write(store, run, range(200), offset=0.5)  # same ids' count and steps, new values
    _cache(store, run).write_bytes(saved)
    _, columns = store.scalar_history(run, min_rows=100)
    assert columns["train/loss"][1][0] == 0.5
    _same(columns, store.scalar_columns(run)[1])


def test_a_log_of_another_run_or_a_broken_file_is_not_used(store: Store) -> None:
    a = store.create_run(kind="custom", status="finished", launcher="sdk").id
    b = store.create_run(kind="custom", status="finished", launcher="sdk").id
    _write(store, a, range(200))
    _write(store, b, range(200), offset=7.0)
    store.scalar_history(a, min_rows=100)
    shutil.copy(_cache(store, a), _cache(store, b))
    _same(store.scalar_history(b, min_rows=100)[1], store.scalar_columns(b)[1])
    _cache(store, b).write_bytes(b"not records")
    _same(store.scalar_history(b, min_rows=1000)[1], store.scalar_columns(b)[1])
    _cache(store, b).write_bytes(_cache(store, a).read_bytes()[:500])  # truncated
    _same(store.scalar_history(b, min_rows=1000)[1], store.scalar_columns(b)[1])


def test_the_run_screen_has_an_old_big_run_logged_and_reopens_from_the_log(
        store: Store, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big run written before it had a log (thresholds lowered after): the first open
    has a helper process write the log and reads it (nothing from SQLite here); points
    written before the second open were appended to the log, and show too."""
    import asyncio

    from tests.helpers import until
    from workbench.app import WorkbenchApp
    from workbench.screens import run as run_screen

    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(300))  # 600 points, under the threshold: no log
    monkeypatch.setattr(run_screen, "PROGRESSIVE_ROWS", 100)
    monkeypatch.setattr("workbench.store.SCALAR_CACHE_MIN_ROWS", 100)
    reads = _count_reads(monkeypatch)  # in this process

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(100, 32)) as pilot:
            for points in (300, 310):
                screen = await app.open_run_screen(run)
                await until(pilot, lambda s=screen: hasattr(s, "feed") and not s.loading
                            and not s.feed.partial, 10, "the history")
                assert screen.feed.series("train/loss").step.tolist() == list(range(points))
                await until(pilot, lambda: _cache(store, run).exists(), 10, "the log")
                app.pop_screen()
                await pilot.pause(0.1)
                _write(store, run, range(points, points + 10))

    asyncio.run(main())
    assert reads == []  # the first open: the helper's log; the second: appended rows


def test_without_the_helper_the_run_screen_reads_the_store_and_writes_the_log(
        store: Store, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from tests.helpers import until
    from workbench.app import WorkbenchApp
    from workbench.screens import run as run_screen

    monkeypatch.setattr(run_screen, "PROGRESSIVE_ROWS", 100)
    monkeypatch.setattr(run_screen, "CACHE_WRITE_DELAY_S", 0.0)
    monkeypatch.setattr(run_screen, "build_scalar_cache", lambda *a, **k: False)  # failed
    monkeypatch.setattr("workbench.store.SCALAR_CACHE_MIN_ROWS", 10_000)
    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(300))  # no log: written under the threshold
    monkeypatch.setattr("workbench.store.SCALAR_CACHE_MIN_ROWS", 100)

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(100, 32)) as pilot:
            screen = await app.open_run_screen(run)
            await until(pilot, lambda: hasattr(screen, "feed") and not screen.loading
                        and not screen.feed.partial, 10, "the history")
            assert screen.feed.series("train/lr").step.tolist() == list(range(300))
            await until(pilot, lambda: _cache(store, run).exists(), 10, "the log")
            await pilot.press("q")

    asyncio.run(main())

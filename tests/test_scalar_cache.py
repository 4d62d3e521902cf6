"""The columnar cache of a run's scalars (`Store.scalar_history`): derived from the
store, disposable, and never served stale."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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


def test_new_points_after_the_cache_are_read_from_the_store(store: Store) -> None:
    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(200))
    store.scalar_history(run, min_rows=100)
    written = _cache(store, run).stat().st_mtime_ns
    _write(store, run, range(200, 210))  # a few: appended, the cache is kept as it was
    _, columns = store.scalar_history(run, min_rows=100)
    assert columns["train/loss"][0].tolist() == list(range(210))
    _same(columns, store.scalar_columns(run)[1])
    assert _cache(store, run).stat().st_mtime_ns == written
    _write(store, run, range(210, 400))  # many: the cache is extended
    _, columns = store.scalar_history(run, min_rows=100)
    _same(columns, store.scalar_columns(run)[1])
    assert _cache(store, run).stat().st_mtime_ns != written
    _same(store.scalar_history(run, min_rows=100)[1], store.scalar_columns(run)[1])


def test_a_feed_of_a_live_run_never_shows_a_stale_cache(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workbench.store.SCALAR_CACHE_MIN_ROWS", 50)
    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(100))
    RunFeed(store, run).poll()  # writes the cache
    assert _cache(store, run).exists()
    _write(store, run, range(100, 103))
    feed = RunFeed(store, run)
    feed.poll()
    assert feed.series("train/loss").step.tolist() == list(range(103))
    _write(store, run, range(103, 105))
    feed.poll()  # incremental, past the cursor
    assert feed.series("train/lr").step.tolist() == list(range(105))


def test_a_cache_is_refused_when_the_rows_it_copies_changed(store: Store) -> None:
    """The run deleted and made again under the same id (as a mirror or a re-import
    would), with the old cache put back: it describes rows that are gone."""
    run = store.create_run(kind="custom", status="finished", launcher="sdk").id
    _write(store, run, range(200))
    store.scalar_history(run, min_rows=100)
    saved = _cache(store, run).read_bytes()
    store.delete_run(run)
    assert not store.run_dir(run).exists()  # the cache went with the folder
    store.create_run(kind="custom", status="finished", launcher="import", run_id=run)
    _write(store, run, range(200), offset=0.5)  # same ids' count and steps, new values
    _cache(store, run).write_bytes(saved)
    _, columns = store.scalar_history(run, min_rows=100)
    assert columns["train/loss"][1][0] == 0.5
    _same(columns, store.scalar_columns(run)[1])


def test_a_cache_of_another_run_or_a_broken_file_is_not_used(store: Store) -> None:
    a = store.create_run(kind="custom", status="finished", launcher="sdk").id
    b = store.create_run(kind="custom", status="finished", launcher="sdk").id
    _write(store, a, range(200))
    _write(store, b, range(200), offset=7.0)
    store.scalar_history(a, min_rows=100)
    shutil.copy(_cache(store, a), _cache(store, b))
    _same(store.scalar_history(b, min_rows=100)[1], store.scalar_columns(b)[1])
    _cache(store, b).write_bytes(b"not a zip")
    _same(store.scalar_history(b, min_rows=1000)[1], store.scalar_columns(b)[1])
    _cache(store, b).write_bytes(_cache(store, a).read_bytes()[:500])  # truncated
    _same(store.scalar_history(b, min_rows=1000)[1], store.scalar_columns(b)[1])


def test_the_run_screen_writes_the_cache_after_painting_and_reopens_from_it(
        store: Store, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big run (thresholds lowered): the first open has a helper process write the
    cache and reads it (nothing from SQLite here); points written before the second
    open are read from the store and shown too."""
    import asyncio

    from tests.helpers import until
    from workbench.app import WorkbenchApp
    from workbench.screens import run as run_screen

    monkeypatch.setattr(run_screen, "PROGRESSIVE_ROWS", 100)
    monkeypatch.setattr("workbench.store.SCALAR_CACHE_MIN_ROWS", 100)
    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(300))
    reads: list[tuple[bool, int]] = []  # (from the start?, rows) of each read from SQLite
    columns = Store.scalar_columns

    def counted(self: Store, run_id: str, since: int = 0, **kw: Any) -> Any:
        out = columns(self, run_id, since, **kw)
        if out[1]:
            reads.append((since == 0, sum(len(c[0]) for c in out[1].values())))
        return out

    monkeypatch.setattr(Store, "scalar_columns", counted)

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(100, 32)) as pilot:
            for points in (300, 310):
                screen = await app.open_run_screen(run)
                await until(pilot, lambda s=screen: hasattr(s, "feed") and not s.loading
                            and not s.feed.partial, 10, "the history")
                assert screen.feed.series("train/loss").step.tolist() == list(range(points))
                await until(pilot, lambda: _cache(store, run).exists(), 10, "the cache")
                app.pop_screen()
                await pilot.pause(0.1)
                _write(store, run, range(points, points + 10))

    asyncio.run(main())
    assert reads == [(False, 20)]  # the second open: the new rows only


def test_without_the_helper_the_run_screen_reads_the_store_and_writes_the_cache(
        store: Store, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from tests.helpers import until
    from workbench.app import WorkbenchApp
    from workbench.screens import run as run_screen

    monkeypatch.setattr(run_screen, "PROGRESSIVE_ROWS", 100)
    monkeypatch.setattr(run_screen, "CACHE_WRITE_DELAY_S", 0.0)
    monkeypatch.setattr("workbench.store.SCALAR_CACHE_MIN_ROWS", 100)
    monkeypatch.setattr(run_screen, "build_scalar_cache", lambda *a, **k: False)  # failed
    run = store.create_run(kind="custom", status="running", launcher="sdk").id
    _write(store, run, range(300))

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(100, 32)) as pilot:
            screen = await app.open_run_screen(run)
            await until(pilot, lambda: hasattr(screen, "feed") and not screen.loading
                        and not screen.feed.partial, 10, "the history")
            assert screen.feed.series("train/lr").step.tolist() == list(range(300))
            await until(pilot, lambda: _cache(store, run).exists(), 10, "the cache")
            await pilot.press("q")

    asyncio.run(main())

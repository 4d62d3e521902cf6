"""Issue 20: the Metrics grid, live. A poll redraws only the charts whose keys got new
points, at most LIVE_REDRAWS of them at a time (the ones waiting longest first), and the
rest on the following ticks; a poll never waits for a tick. Paging draws the whole page
at once. The real app under
Pilot (App.run_test), on a real store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import TabbedContent

from tests.helpers import until
from workbench.app import WorkbenchApp
from workbench.screens.run import RunScreen
from workbench.screens.runs import RunsScreen
from workbench.screens.tabs import metrics
from workbench.screens.tabs.metrics import MetricsTab
from workbench.screens.widgets import LineChart
from workbench.store import Batch, Store

KEYS = [f"layer{i}/grad" for i in range(20)]  # natural order: layer0 .. layer19


def log(store: Store, run_id: str, keys: list[str], steps: range) -> None:
    now = time.time()
    rows = [(s, k, float(s + i), now, 0) for s in steps for i, k in enumerate(keys)]
    store.write_batch(Batch(run_id, scalars=rows), last_step=steps[-1])


def shown(tab: MetricsTab) -> list[LineChart]:
    return [c for c in tab.query(LineChart) if c.display]


def last_step(chart: LineChart) -> int:
    return int(chart.points("grad")[0][-1])


def drawn_step(chart: LineChart) -> int:
    """The newest step the chart's last build drew (set_series alone draws nothing yet)."""
    return int(chart.drawn["grad"][0].max()) if "grad" in chart.drawn else -1


def test_a_poll_redraws_only_the_charts_with_new_points_a_few_at_a_time(
        store: Store, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    row = store.create_run(kind="custom", name="many", status="running", launcher="sdk")
    log(store, row.id, KEYS, range(40))
    monkeypatch.setattr(metrics, "LIVE_TICK_S", 3600.0)  # the ticks are called by hand

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), 5, "runs screen")
            screen = RunScreen(row.id)
            app.push_screen(screen)
            await until(pilot, lambda: app.screen is screen and hasattr(screen, "feed"), 5,
                        "the run screen")
            await pilot.pause(0.2)
            screen.query_one(TabbedContent).active = "tab-metrics"
            tab = screen.query_one(MetricsTab)
            await until(pilot, lambda: len(shown(tab)) == 16
                        and all(c.build_count for c in shown(tab)), 10, "a page of 16 charts")
            await pilot.pause(0.2)
            charts = shown(tab)
            assert [c.title for c in charts] == KEYS[:16]

            def builds() -> list[int]:
                return [c.build_count for c in charts]

            # New points for one key on the page: that chart alone redraws, at once.
            before = builds()
            log(store, row.id, ["layer3/grad"], range(40, 45))
            assert screen.refresh_data()
            await pilot.pause(0.1)
            after = builds()
            assert [i for i in range(16) if after[i] != before[i]] == [3]
            assert last_step(charts[3]) == 44 and last_step(charts[0]) == 39
            # New points for every key: LIVE_REDRAWS charts now, the ones filled longest
            # ago (not layer3, just redrawn), the others on the next ticks.
            log(store, row.id, KEYS, range(45, 50))
            before = builds()
            assert screen.refresh_data()
            await pilot.pause(0.1)
            redrawn = [i for i, (a, b) in enumerate(zip(before, builds(), strict=True))
                       if a != b]
            assert len(redrawn) == metrics.LIVE_REDRAWS and 3 not in redrawn
            assert all(last_step(charts[i]) == 49 for i in redrawn)
            assert sum(last_step(c) == 49 for c in charts) == metrics.LIVE_REDRAWS
            # Another poll before the next tick: LIVE_REDRAWS more charts at once, the
            # ones waiting longest (not those just drawn), and no more.
            log(store, row.id, KEYS, range(50, 52))
            before = builds()
            assert screen.refresh_data()
            await pilot.pause(0.1)
            again = [i for i, (a, b) in enumerate(zip(before, builds(), strict=True)) if a != b]
            assert len(again) == metrics.LIVE_REDRAWS and not set(again) & set(redrawn + [3])
            assert all(last_step(charts[i]) == 51 for i in again)
            ticks = 0
            while not all(last_step(c) == 51 for c in charts):
                before = builds()
                tab._drain()
                await pilot.pause(0.05)
                moved = sum(a != b for a, b in zip(before, builds(), strict=True))
                assert moved <= metrics.LIVE_REDRAWS
                ticks += 1
                assert ticks <= 16 // metrics.LIVE_REDRAWS + 1
            assert not tab._pending
            # Paging draws the whole next page at once, live or not.
            await pilot.press("right_square_bracket")
            await until(pilot, lambda: [c.title for c in shown(tab)] == KEYS[16:], 5,
                        "page 2")
            await pilot.pause(0.1)
            assert all(last_step(c) == 51 for c in shown(tab))
            await pilot.press("q")

    asyncio.run(main())


def test_the_ticks_bring_every_chart_up_to_date(store: Store, store_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    row = store.create_run(kind="custom", name="many", status="running", launcher="sdk")
    log(store, row.id, KEYS, range(40))
    monkeypatch.setattr(metrics, "LIVE_TICK_S", 0.05)

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), 5, "runs screen")
            screen = RunScreen(row.id)
            app.push_screen(screen)
            await until(pilot, lambda: app.screen is screen and hasattr(screen, "feed"), 5,
                        "the run screen")
            await pilot.pause(0.2)
            screen.query_one(TabbedContent).active = "tab-metrics"
            tab = screen.query_one(MetricsTab)
            await until(pilot, lambda: len(shown(tab)) == 16
                        and all(c.build_count for c in shown(tab)), 10, "a page of 16 charts")
            log(store, row.id, KEYS, range(40, 60))
            await until(pilot, lambda: all(drawn_step(c) == 59 for c in shown(tab)), 10,
                        "every chart drawn with the new points")
            counts: dict[int, Any] = {id(c): c.build_count for c in shown(tab)}
            await pilot.pause(0.5)  # nothing new: nothing redraws
            assert {id(c): c.build_count for c in shown(tab)} == counts
            await pilot.press("q")

    asyncio.run(main())

"""Issue 20 item 4: 80x24 is a first-class size. Every run-screen tab by snapshot at
80x24 and 160x48, and the Rollouts panels keep four plot rows each (in pages) on the
small terminal. Runs are written with fixed wall times, read in UTC."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import TabbedContent

from tests.helpers import until
from tests.test_sysmetrics import system_run
from tests.test_tui_run import ScreenApp, depth_run, pretrain_run, rl_run
from workbench import store as store_module
from workbench.screens.run import RunScreen
from workbench.screens.tabs.rollouts import PANEL_MIN_ROWS, RolloutsTab
from workbench.store import Store

CASES = [("pretrain", "overview"), ("pretrain", "attention"), ("pretrain", "metrics"),
         ("pretrain", "events"), ("pretrain", "logs"), ("pretrain", "config"),
         ("rl", "rollouts"), ("depth", "depth"), ("system", "system")]
SIZES = [(80, 24), (160, 48)]


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ids and wall clocks that do not change between machines or runs."""
    numbers = iter(range(10_000))
    monkeypatch.setattr(store_module, "new_run_id", lambda: f"run{next(numbers):05d}")
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    clock = iter(1_700_000_000.0 + 0.01 * i for i in range(1_000_000))

    def build(store: Store, kind: str) -> str:
        with monkeypatch.context() as m:
            m.setattr(time, "time", lambda: next(clock))
            if kind == "system":
                return system_run(store)
            run = {"pretrain": pretrain_run, "rl": rl_run, "depth": depth_run}[kind](store)
            if kind == "pretrain":
                (store.run_dir(run.id) / "stdout.log").write_text(
                    "pretrain: data 31,000 train / 280 val tokens\n"
                    + "".join(f"step {s}/60 loss {5 / s ** 0.5:.4f}\n" for s in range(1, 61)))
                store.update_run(run.id, spec='kind = "pretrain"\n[optim]\nname = "muon"\n'
                                 'tau = 20.0\n[train]\nsteps = 60\n')
            return run.id

    yield build
    time.tzset()


# Rollouts at 80x24 is checked by the paging test below instead: one of its 2-row
# charts draws its y tick as 0.1 or 0.2 from one run to the next (plotext's rounding).
SNAPSHOTS = [(kind, tab, size) for kind, tab in CASES for size in SIZES
             if (tab, size) != ("rollouts", (80, 24))]


@pytest.mark.parametrize(("kind", "tab", "size"), SNAPSHOTS,
                         ids=[f"{t}-{s[0]}x{s[1]}" for _, t, s in SNAPSHOTS])
def test_snapshot_every_tab(fixed: Any, store: Store, store_dir: Path, snap_compare: Any,
                            kind: str, tab: str, size: tuple[int, int]) -> None:
    run_id = fixed(store, kind)

    async def show(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: isinstance(pilot.app.screen, RunScreen), 5, "run screen")
        tabs = pilot.app.screen.query_one(TabbedContent)
        tabs.active = f"tab-{tab}"
        await until(pilot, lambda: tabs.active == f"tab-{tab}", 5, f"the {tab} tab")
        await pilot.pause(0.5)
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.5)  # a resize may re-page the panels: let them settle

    assert snap_compare(ScreenApp(store_dir, lambda: RunScreen(run_id)), terminal_size=size,
                        run_before=show)


def test_rollouts_panels_keep_four_plot_rows_in_pages_at_80x24(fixed: Any, store: Store,
                                                                store_dir: Path) -> None:
    run_id = fixed(store, "rl")

    async def main() -> None:
        app = ScreenApp(store_dir, lambda: RunScreen(run_id))
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunScreen), 5, "run screen")
            await pilot.press("2")
            await pilot.pause(0.4)
            tab = app.screen.query_one(RolloutsTab)
            assert tab.pages > 1 and app.focused is tab
            seen = []
            for _ in range(tab.pages):
                shown = [p for p in tab.query_one("#rollouts-grid").children if p.display]
                assert shown and all(p.region.height >= PANEL_MIN_ROWS for p in shown)
                seen += [p.id for p in shown]
                await pilot.press("right_square_bracket")
                await pilot.pause(0.2)
            assert len(seen) == len(set(seen)) == 10  # every panel, once

    asyncio.run(main())

    async def big() -> None:
        app = ScreenApp(store_dir, lambda: RunScreen(run_id))
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunScreen), 5, "run screen")
            await pilot.press("2")
            await pilot.pause(0.4)
            tab = app.screen.query_one(RolloutsTab)
            assert tab.pages == 1
            assert all(p.display and p.region.height >= PANEL_MIN_ROWS
                       for p in tab.query_one("#rollouts-grid").children)

    asyncio.run(big())

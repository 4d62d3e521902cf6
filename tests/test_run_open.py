"""Opening a run: the Overview is composed with the screen, the other tabs' contents
after its first paint (issue 20 item 5), each in a `Lazy` when its tab is first shown
(issue 19 item 6); a tab chosen before then still shows the run, and a tab the run
does not show is not composed until it is."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.widgets import TabbedContent

from tests.helpers import until
from workbench.app import WorkbenchApp
from workbench.screens.run import TABS, RunScreen, tab_id
from workbench.store import Batch, Store


def test_a_tab_chosen_at_once_shows_the_run_and_every_shown_tab_gets_its_content(
        store: Store, store_dir: Path) -> None:
    run = store.create_run(kind="custom", name="script", status="finished", launcher="sdk")
    rows = [(s, key, float(s), 1.0, 0) for s in range(20) for key in ("lr", "mfu", "acc")]
    store.write_batch(Batch(run.id, scalars=rows), last_step=19)

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.runs_screen is not None
                        and app.runs_screen.table.row_count == 1, 10, "the table")
            screen = await app.open_run_screen(run.id)
            screen.query_one(TabbedContent).active = "tab-metrics"  # no pause first
            def grid_keys() -> list[str] | None:
                found = screen.query("#tab-metrics-body")
                return getattr(found.first(), "keys", None) if found else None

            await until(pilot, lambda: grid_keys() == ["acc", "lr", "mfu"], 10,
                        "the metrics grid with the run's keys")
            assert screen.visible_tab().id == "tab-metrics-body"
            shown = screen.fitting()
            assert [t.TITLE for t in shown] == ["Overview", "Metrics", "Events", "Logs",
                                                "Config"]
            await until(pilot, lambda: all(screen.query(f"#{tab_id(t)}-body")
                                           for t in shown), 10, "every shown tab's content")
            assert len(screen.query(f"#{tab_id(TABS[0])}-body")) == 1  # mounted once
            # Attention, Rollouts, Depth and System fit neither the kind nor the keys.
            assert not any(screen.query(f"#{tab_id(t)}-body") for t in TABS if t not in shown)
            await pilot.press("q")

    asyncio.run(main())


def test_a_tab_is_composed_when_the_run_starts_to_show_it(store: Store,
                                                          store_dir: Path) -> None:
    """The System tab of a script run appears with its first `sys/` metric: only then
    is its content mounted, once."""
    run = store.create_run(kind="custom", name="script", status="running", launcher="sdk")
    store.write_batch(Batch(run.id, scalars=[(0, "loss", 1.0, 1.0, 0)]), last_step=0)

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.runs_screen is not None
                        and app.runs_screen.table.row_count == 1, 10, "the table")
            screen = await app.open_run_screen(run.id)
            await until(pilot, lambda: isinstance(app.screen, RunScreen)
                        and screen.query("#tab-metrics-body"), 10, "the shown tabs")
            assert not screen.query("#tab-system-body")
            store.write_batch(Batch(run.id, scalars=[(1, "sys/cpu_percent", 50.0, 2.0, 0)]),
                              last_step=1)
            await until(pilot, lambda: screen.query("#tab-system-body"), 10,
                        "the System tab's content")
            assert len(screen.query("#tab-system-body")) == 1
            await pilot.press("q")

    asyncio.run(main())

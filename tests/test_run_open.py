"""Opening a run: the Overview is composed with the screen, the other tabs' contents
after its first paint (issue 20 item 5); a tab chosen before then still shows the run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.widgets import TabbedContent

from tests.helpers import until
from workbench.app import WorkbenchApp
from workbench.screens.run import TABS, tab_id
from workbench.store import Batch, Store


def test_a_tab_chosen_at_once_shows_the_run_and_every_tab_gets_its_content(
        store: Store, store_dir: Path) -> None:
    run = store.create_run(kind="custom", name="script", status="finished", launcher="sdk")
    rows = [(s, key, float(s), 1.0, 0) for s in range(20) for key in ("lr", "mfu", "acc")]
    store.write_batch(Batch(run["id"], scalars=rows), last_step=19)

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.runs_screen is not None
                        and app.runs_screen.table.row_count == 1, 10, "the table")
            screen = await app.open_run_screen(run["id"])
            screen.query_one(TabbedContent).active = "tab-metrics"  # no pause first
            def grid_keys() -> list[str] | None:
                found = screen.query("#tab-metrics-body")
                return getattr(found.first(), "keys", None) if found else None

            await until(pilot, lambda: grid_keys() == ["acc", "lr", "mfu"], 10,
                        "the metrics grid with the run's keys")
            assert screen.visible_tab().id == "tab-metrics-body"
            await until(pilot, lambda: all(screen.query(f"#{tab_id(t)}-body")
                                           for t in TABS), 10, "every tab's content")
            assert len(screen.query(f"#{tab_id(TABS[0])}-body")) == 1  # mounted once
            await pilot.press("q")

    asyncio.run(main())

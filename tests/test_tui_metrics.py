"""Issue 20: the dashboard shows everything a run logs. The Metrics grid (filter, pages,
opening a chart, pinning), the Overview's fallbacks for a script's own names, QK-Clip
panels that say why they are empty, the summary, and `wb show --summary`. The real app
under Pilot, on a real store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, TabbedContent

from tests.helpers import until, wb_inproc
from workbench.app import WorkbenchApp
from workbench.metric_keys import filtered, natural_key, ordered, page_of, run_summary
from workbench.screens.compare import CompareScreen
from workbench.screens.run import RunScreen
from workbench.screens.runs import RunsScreen
from workbench.screens.tabs.metrics import MetricsTab
from workbench.screens.tabs.overview import pins
from workbench.screens.widgets import LineChart
from workbench.store import Store
from workbench.tracking import Run


def script_run(store: Store, extra_keys: int = 0, wandb_summary: bool = False) -> Run:
    """What nanoGPT's train.py logs with one changed import: loss, lr, mfu, iter, and
    a script's accuracy, plus a distribution."""
    row = store.create_run(kind="custom", name="nanogpt", status="running", launcher="sdk")
    run = Run(store, row, owner=True)
    for step in range(1, 41):
        metrics = {"loss": 4.0 / step ** 0.5, "lr": 6e-4 * min(1, step / 10),
                   "mfu": 0.3 + step / 1000, "iter": float(step), "acc": step / 40}
        metrics.update({f"layer{i}/grad": float(i + step) for i in range(extra_keys)})
        run.log(metrics, step=step)
        if step % 10 == 0:
            run.log_dist("act/hist", np.linspace(0, step, 50), step=step)
    if wandb_summary:
        run.update_config({"wandb": {"summary": {"best_acc": 1.0, "note": "ok"}}})
    run.finish()
    return run


def on_run(store_dir: Path, run_id: str, size: tuple[int, int],
           body: Callable[[WorkbenchApp, Pilot[Any], RunScreen], Awaitable[None]]) -> None:
    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), 5, "runs screen")
            screen = RunScreen(run_id)
            app.push_screen(screen)
            await until(pilot, lambda: app.screen is screen, 5, "the run screen")
            await pilot.pause(0.3)
            await body(app, pilot, screen)

    asyncio.run(main())


def grid_titles(tab: MetricsTab) -> list[str]:
    return [c.title for c in tab.query(LineChart) if c.display]


def test_key_order_filter_and_pages() -> None:
    keys = ["train/loss", "layer10/x", "layer2/x", "lr", "val/loss", "sys/cpu", "Acc"]
    assert ordered(keys) == ["Acc", "lr", "layer2/x", "layer10/x", "sys/cpu", "train/loss",
                             "val/loss"]
    assert natural_key("h2") < natural_key("h10")
    assert filtered(keys, "loss") == ["train/loss", "val/loss"]
    assert filtered(keys, "layer*/x") == ["layer2/x", "layer10/x"]
    assert filtered(keys, "LR") == ["lr"]
    assert page_of(list("abcde"), 2, 2) == ["e"] and page_of(list("abcde"), 2, 9) == ["e"]


def test_the_grid_shows_every_key_filters_pages_opens_and_pins(store: Store,
                                                               store_dir: Path) -> None:
    run = script_run(store, extra_keys=12)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        tabs = screen.query_one(TabbedContent)
        await pilot.press("2")  # a custom run: Overview, Metrics, ...
        await until(pilot, lambda: tabs.active == "tab-metrics", 5, "the Metrics tab")
        tab = screen.query_one(MetricsTab)
        await pilot.pause(0.3)
        assert app.focused is tab
        every = ["acc", "iter", "loss", "lr", "mfu", "act/hist"] + \
            [f"layer{i}/grad" for i in range(12)]
        assert tab.keys == ordered(every) and tab.per_page >= 2
        seen: list[str] = []
        for _ in range(-(-len(every) // tab.per_page)):  # every page, in order
            seen += grid_titles(tab)
            await pilot.press("right_square_bracket")
            await pilot.pause(0.1)
        assert seen == ordered(every) and tab.page == 0  # it wrapped round
        # the distribution draws as a quantile band
        tab.pattern = "act/"
        await pilot.pause(0.2)
        (cell,) = [c for c in tab.query(LineChart) if c.display]
        assert cell.series_names == ["p50", "p90", "p99"]
        tab.pattern = ""
        # the filter: `/`, type, enter keeps it
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"layer1*", "enter")
        await pilot.pause(0.2)
        assert tab.keys == ["layer1/grad", "layer10/grad", "layer11/grad"]
        assert app.focused is tab and "filter 'layer1*'" in str(
            screen.query_one("#metrics-status").render())
        # down selects the next chart, enter opens it full size, escape comes back
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), 5, "compare")
        assert app.screen.metric == "layer10/grad"
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen, 5, "back to the run")
        # p pins it to the Overview
        await pilot.press("p")
        await pilot.pause(0.2)
        assert pins(run.id) == ["layer10/grad"]
        await pilot.press("escape")  # clears the filter first
        await pilot.pause(0.1)
        assert tab.pattern == "" and app.screen is screen
        await pilot.press("1")
        await pilot.pause(0.3)
        pin = screen.query_one("#pin-0", LineChart)
        assert pin.display and pin.title == "layer10/grad"
        assert pin.points("grad")[1][-1] == 10 + 40

    on_run(store_dir, run.id, (100, 32), body)


def test_the_overview_uses_a_scripts_own_names_and_the_summary(store: Store,
                                                                store_dir: Path) -> None:
    run = script_run(store)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        main = screen.query_one("#main-chart", LineChart)
        assert main.series_names == ["loss"]
        smalls = [screen.query_one(f"#small-{i}", LineChart) for i in range(3)]
        assert smalls[0].title == "lr" and smalls[0].points("lr")[1][-1] == 6e-4
        # no grad norm logged: the run's most recently updated key instead of "no data"
        assert smalls[1].title in ("acc", "iter") and smalls[1].series_names
        assert smalls[2].title == "mfu"
        table = screen.query_one("#summary", DataTable)
        assert table.display and table.row_count == 5
        assert [str(c) for c in table.get_row("acc")] == ["acc", "1", "0.025", "1"]

    on_run(store_dir, run.id, (120, 36), body)


def test_a_run_that_tokenizes_shows_the_stage_and_its_progress(store: Store,
                                                               store_dir: Path) -> None:
    row = store.create_run(kind="pretrain", name="p", status="running", launcher="sdk",
                           total_steps=100)
    run = Run(store, row, owner=True)
    run.event("stage", step=0, stage="tokenizing", done=3_000_000, total=8_000_000)
    run.flush()

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        label = str(screen.query_one("#progress-label").render())
        assert "tokenizing 38%" in label
        main = screen.query_one("#main-chart", LineChart)
        assert main.empty_text == "tokenizing 38%: training has not started"

    on_run(store_dir, run.id, (100, 32), body)
    run.finish()


def test_a_muon_run_says_qk_clip_is_off(store: Store, store_dir: Path) -> None:
    row = store.create_run(kind="pretrain", name="m", status="finished", launcher="sdk",
                           config={"optim": {"name": "muon", "tau": 100.0}})
    run = Run(store, row, owner=True)
    run.log({"train/loss": 1.0, "attn/max_logit": 3.0}, step=1)
    run.finish()

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        await pilot.press("2")
        await pilot.pause(0.3)
        clipped = screen.query_one("#clipped", LineChart)
        assert clipped.empty_text == "QK-Clip off (optim.name = muon)"
        assert "QK-Clip off" in str(clipped.render())

    on_run(store_dir, run.id, (100, 32), body)


def test_wb_show_summary(store: Store, store_dir: Path) -> None:
    run = script_run(store, wandb_summary=True)
    data = run_summary(store, run.id)
    assert data["metrics"]["loss"] == {"last": 4.0 / 40 ** 0.5, "step": 40, "min":
                                       4.0 / 40 ** 0.5, "max": 4.0, "count": 40}
    out = wb_inproc("show", run.id, "--summary", "--json", check=True)
    assert json.loads(out.stdout)["wandb_summary"] == {"best_acc": 1.0, "note": "ok"}
    text = wb_inproc("show", run.id, "--summary", check=True).stdout
    assert "wandb.summary.best_acc" in text and "mfu" in text

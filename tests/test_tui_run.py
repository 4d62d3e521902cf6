"""The run screen (tabs per kind, live charts, spike marks, heatmap against tau) and the
compare screen, driven through the real app with Pilot over runs written through the
SDK with the metric names of docs/ARCHITECTURE.md (RL and depth runs too)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from textual import events
from textual.containers import VerticalScroll
from textual.pilot import Pilot
from textual.widgets import DataTable, Log, Static, TabbedContent

from tests.helpers import until
from workbench import store as store_module
from workbench.app import WorkbenchApp
from workbench.screens.compare import CompareScreen
from workbench.screens.run import RunScreen
from workbench.screens.runs import RunsScreen
from workbench.screens.widgets import Heatmap, Histogram, LineChart
from workbench.store import Store
from workbench.tracking import Run

SIZE = (100, 32)
TAU = 20.0


def pretrain_run(store: Store, name: str = "muon", steps: int = 60, batch: int = 8,
                 finish: bool = True) -> Run:
    row = store.create_run(kind="pretrain", name=name, status="running", launcher="sdk",
                           config={"optim": {"name": name, "tau": TAU},
                                   "train": {"batch_size": batch}, "model": {"seq_len": 32}},
                           total_steps=steps)
    run = Run(store, row, owner=True)
    for step in range(1, steps + 1):
        loss = 5.0 / step ** 0.5 + (3.0 if step == 30 else 0.0)
        run.log({"train/loss": loss, "train/lr": 1e-3, "train/grad_norm": 1.0,
                 "perf/tokens_per_s": 1000.0, "attn/max_logit": 0.5 * step}, step=step)
    run.log({"val/loss": 2.0}, step=steps)
    run.event("loss_spike", step=30, severity="warning", value=3.9)
    run.event("rollback", step=31, severity="warning", to_step=20)
    heads = np.array([[1.0, 5.0, 30.0], [2.0, 19.0, 3.0]], dtype=np.float32)
    run.log_matrix("attn/max_logit_heads", heads, step=steps)
    if finish:
        run.finish()
    else:
        run.flush()
    return run


def rl_run(store: Store) -> Run:
    row = store.create_run(kind="rl", name="grpo", status="running", launcher="sdk")
    run = Run(store, row, owner=True)
    rng = np.random.default_rng(0)
    for step in range(1, 21):
        lengths = rng.integers(10, 500, size=64)
        run.log_dist("rollout/length", lengths, step=step)
        run.log_dist("staleness", rng.integers(0, 3, size=64), step=step)
        run.log({"rl/reward": step / 20, "rollout/len_p50": float(np.percentile(lengths, 50)),
                 "rollout/len_p99": float(np.percentile(lengths, 99)),
                 "rollout/truncated_frac": 0.1, "staleness/mean": 1.0, "staleness/max": 2.0,
                 "policy/version": step // 4, "perf/trainer_idle_frac": 0.2,
                 "perf/generator_idle_frac": 0.05, "rl/drift_kl/s1": 2e-3,
                 "rl/drift_kl/s2": 5e-3, "rl/drift_kl/s10": 1e-2}, step=step)
        if step % 2:  # steps with no staleness-0 token log no mismatch
            run.log({"rl/mismatch_kl": 1e-5 * step, "rl/drift_kl/s0": 1e-5 * step}, step=step)
        if step % 4 == 0:
            run.event("weight_sync", step=step, version=step // 4, seconds=0.25)
    run.finish()
    return run


def depth_run(store: Store) -> Run:
    row = store.create_run(kind="depth", name="depth", status="running", launcher="sdk")
    run = Run(store, row, owner=True)
    run.log_dist("depth/steps_per_token", [1, 2, 2, 4, 8, 8, 16], step=1)
    run.log({"depth/steps_mean": 5.8}, step=1)
    for r in (1, 2, 4, 8):
        run.log({f"eval/accuracy/r{r}": r / 10}, step=1)
    run.event("depth_sample", step=1, tokens=["The", " answer", " is", " 42"],
              depths=[1, 3, 8, 16])
    run.finish()
    return run


def on_screen(store_dir: Path, screen: Callable[[], Any],
              body: Callable[[WorkbenchApp, Pilot[Any], Any], Awaitable[None]]) -> None:
    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), 5, "runs screen")
            shown = screen()
            app.push_screen(shown)
            await until(pilot, lambda: app.screen is shown, 5, "the screen")
            await pilot.pause(0.3)
            await body(app, pilot, shown)

    asyncio.run(main())


def visible_tabs(screen: RunScreen) -> list[str]:
    tabs = screen.query_one(TabbedContent)
    return [p.id for p in tabs.query("TabPane") if tabs.get_tab(p.id).display]




# -- run screen ---------------------------------------------------------------------------


def test_pretrain_run_overview_marks_spikes_and_rollbacks(store: Store, store_dir: Path) -> None:
    run = pretrain_run(store)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        assert visible_tabs(screen) == ["tab-overview", "tab-attention", "tab-metrics",
                                        "tab-events", "tab-logs", "tab-config"]  # no rl, depth
        chart = screen.query_one("#main-chart", LineChart)
        assert chart.series_names == ["train/loss", "val/loss"]
        x, y = chart.points("train/loss")
        assert x.tolist() == list(range(1, 61)) and y[29] == pytest.approx(5 / 30 ** 0.5 + 3)
        marks = chart.marker_groups
        assert marks["spike"].tolist() == [30.0] and marks["rollback"].tolist() == [31.0]
        latest = str(screen.query_one("#latest-events", Static).render())
        assert "rollback" in latest and "loss_spike" in latest
        assert str(screen.query_one("#progress-label").render()).startswith(" step 60/60")

    on_screen(store_dir, lambda: RunScreen(run.id), body)


def test_attention_heatmap_against_tau_and_the_focused_cell(store: Store,
                                                            store_dir: Path) -> None:
    run = pretrain_run(store)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        await pilot.press("2")
        await pilot.pause(0.2)
        heat = screen.query_one("#heads", Heatmap)
        assert heat.matrix.tolist() == [[1.0, 5.0, 30.0], [2.0, 19.0, 3.0]]
        assert heat.tau == TAU and heat.is_alarm(30.0) and not heat.is_alarm(19.0)
        heat.focus()
        await pilot.press("right", "right")
        await pilot.pause(0.1)
        assert "layer 0 head 2: 30" in str(heat.border_subtitle)
        chart = screen.query_one("#max-logit", LineChart)
        assert chart.series_names == ["max logit"] and chart._hline == (TAU, "tau")
        assert "tau 20" in str(heat.border_title)

    on_screen(store_dir, lambda: RunScreen(run.id), body)


def test_attention_tab_arrows_read_cells_without_a_tab_press(store: Store,
                                                             store_dir: Path) -> None:
    """Pressed on the Attention tab, the arrows used to switch tabs (the tab bar had the
    focus); the heatmap's cursor was reachable only after `tab`."""
    run = pretrain_run(store)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        tabs = screen.query_one(TabbedContent)
        await pilot.press("2")
        await pilot.pause(0.2)
        heat = screen.query_one("#heads", Heatmap)
        assert app.focused is heat
        await pilot.press("right", "right")
        await pilot.pause(0.1)
        assert tabs.active == "tab-attention"
        assert "layer 0 head 2: 30" in str(heat.border_subtitle)
        await pilot.press("down", "m")
        await pilot.pause(0.1)
        assert "layer 0 head 2: 30" in str(heat.border_subtitle)  # m: the hottest cell
        await pilot.press("l")  # letters still switch tabs
        await pilot.pause(0.2)
        assert tabs.active == "tab-metrics"
        await pilot.press("right")  # away from the heatmap, arrows switch tabs again
        await pilot.pause(0.2)
        assert tabs.active == "tab-events"

    on_screen(store_dir, lambda: RunScreen(run.id), body)


def test_rl_run_shows_rollouts_not_attention(store: Store, store_dir: Path) -> None:
    run = rl_run(store)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        tabs = visible_tabs(screen)
        assert "tab-rollouts" in tabs and "tab-attention" not in tabs and "tab-depth" not in tabs
        screen.query_one(TabbedContent).active = "tab-rollouts"
        await pilot.pause(0.3)
        hist = screen.query_one("#len-hist", Histogram)
        assert sum(hist.counts) == 64 and set(hist.quantiles) == {"p50", "p90", "p99"}
        assert sum(screen.query_one("#stale-hist", Histogram).counts) == 64
        tails = screen.query_one("#len-tails", LineChart)
        assert set(tails.series_names) == {"len_p50", "len_p99"}
        syncs = screen.query_one("#syncs", DataTable)
        assert syncs.row_count == 5
        assert [str(c) for c in syncs.get_row_at(0)] == ["4", "1", "0.25"]
        assert screen.query_one("#version", LineChart).marker_groups["sync"].tolist() == \
            [4.0, 8.0, 12.0, 16.0, 20.0]
        idle = screen.query_one("#idle", LineChart)
        assert set(idle.series_names) == {"trainer_idle_frac", "generator_idle_frac"}
        # issue 17 item 2: the mismatch beside staleness, the drift by staleness
        mismatch = screen.query_one("#mismatch", LineChart)
        x, y = mismatch.points("mismatch_kl")
        assert x.tolist() == list(range(1, 21, 2)) and y[-1] == pytest.approx(1.9e-4)
        assert screen.query_one("#drift", LineChart).series_names == ["s0", "s1", "s2", "s10"]

    on_screen(store_dir, lambda: RunScreen(run.id), body)


def test_weight_sync_table_keeps_the_newest_sync_in_view(store: Store,
                                                         store_dir: Path) -> None:
    """Newest last, but the table stayed scrolled at the top: at 80x24 (and here) the
    latest weight syncs, the ones a live run is watched for, were out of view."""
    run = rl_run(store)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        await pilot.press("2")  # the number keys follow the tabs shown: Rollouts
        syncs = screen.query_one("#syncs", DataTable)
        await until(pilot, lambda: syncs.row_count == 5, 5, "the syncs")
        await pilot.pause(0.2)
        assert syncs.max_scroll_y > 0  # more syncs than rows: the test means something
        assert syncs.cursor_row == 4 and syncs.scroll_y == syncs.max_scroll_y

    on_screen(store_dir, lambda: RunScreen(run.id), body)


def test_depth_run_shows_depth_histogram_sample_and_accuracy(store: Store,
                                                             store_dir: Path) -> None:
    run = depth_run(store)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        await pilot.press("2")  # the number keys follow the tabs shown: Depth
        await pilot.pause(0.3)
        assert screen.query_one(TabbedContent).active == "tab-depth"
        assert sum(screen.query_one("#steps-hist", Histogram).counts) == 7
        x, y = screen.query_one("#accuracy", LineChart).points("accuracy")
        assert x.tolist() == [1, 2, 4, 8] and y.tolist() == pytest.approx([0.1, 0.2, 0.4, 0.8])
        sample = screen.query_one("#sample", Static).render()
        assert "The answer is 42" in str(sample)
        styles = {str(span.style) for span in sample.spans}
        assert len(styles) >= 3  # tokens of different depth get different colors

    on_screen(store_dir, lambda: RunScreen(run.id), body)


def test_depth_legend_names_the_depths_each_colour_holds() -> None:
    """The legend used to round band edges ("1+ 2+ 4+ 5+ 7+" for depths 1-8) while a
    token of depth 2 took the first colour and one of depth 5 the third."""
    from workbench.screens.tabs.depth import depth_text

    depths = list(range(1, 9))
    text = depth_text([f"t{d}" for d in depths], depths)
    colour = {text.plain[span.start:span.end]: str(span.style) for span in text.spans}
    legend = text.plain.split("depth:")[1].split()
    assert legend == ["1-2", "3-4", "5", "6-7", "8"]
    for entry in legend:
        first, _, last = entry.partition("-")
        members = range(int(first), int(last or first) + 1)
        assert {colour[f"t{d}"] for d in members} == {colour[f" {entry} "].split()[-1]}


def test_no_pulsing_progress_bar_for_an_ended_run_without_a_total(store: Store,
                                                                  store_dir: Path) -> None:
    """A finished (or failed) run without total steps showed an indeterminate, pulsing
    bar ("--%"), as if it were still going."""
    run = depth_run(store)  # no total_steps, finished

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        await pilot.pause(0.2)
        assert not screen.query_one("#progress").display
        assert "step 1  finished" in str(screen.query_one("#progress-label").render())

    on_screen(store_dir, lambda: RunScreen(run.id), body)


def test_events_logs_and_config_tabs(store: Store, store_dir: Path) -> None:
    run = pretrain_run(store)
    (store.run_dir(run.id) / "stdout.log").write_text("hello from the run\nstep 1\npartial")
    store.update_run(run.id, spec='kind = "pretrain"\n[optim]\nname = "muon"\n')

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        await pilot.press("4")  # Overview, Attention, Metrics, Events, Logs, Config
        await pilot.pause(0.2)
        events = screen.query_one("#events-table", DataTable)
        assert app.focused is events
        kinds = [str(events.get_row_at(i)[1]) for i in range(events.row_count)]
        assert kinds == ["loss_spike", "rollback"]
        await pilot.press("5")
        await pilot.pause(0.2)
        log = screen.query_one("#log", Log)
        assert list(log.lines) == ["hello from the run", "step 1"]  # the partial line waits
        with open(store.run_dir(run.id) / "stdout.log", "a") as fh:
            fh.write(" line\nmore\n")
        await until(pilot, lambda: list(log.lines)[-1:] == ["more"], 3, "the log tail")
        assert list(log.lines)[2] == "partial line"
        assert app.focused is log  # it scrolls with the keyboard, no Tab first
        await pilot.press("6")
        await pilot.pause(0.2)
        assert isinstance(app.focused, VerticalScroll)
        assert 'name = "muon"' in screen.query_one("#config-text", Static).content.code

    on_screen(store_dir, lambda: RunScreen(run.id), body)


def test_live_chart_shows_steps_another_process_logs_within_2s(store: Store,
                                                               store_dir: Path) -> None:
    run = pretrain_run(store, steps=5, finish=False)
    code = textwrap.dedent(f"""
        import time
        from workbench.store import Store
        from workbench.tracking import Run
        st = Store({str(store_dir)!r})
        run = Run(st, st.get_run({run.id!r}), owner=False)
        for step in range(6, 41):
            run.log({{"train/loss": 1.0}}, step=step)
            time.sleep(0.05)
        run.finish()
    """)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: RunScreen) -> None:
        chart = screen.query_one("#main-chart", LineChart)
        assert chart.points("train/loss")[0].tolist()[-1] == 5
        writer = subprocess.Popen([sys.executable, "-c", code])
        try:
            writer.wait(timeout=30)
            done = time.monotonic()
            await until(pilot, lambda: chart.points("train/loss")[0][-1] == 40, 5,
                        "step 40 on the chart")
            assert time.monotonic() - done < 2.0
        finally:
            writer.kill()
        run.finish()

    on_screen(store_dir, lambda: RunScreen(run.id), body)


# -- compare screen -----------------------------------------------------------------------


def test_compare_overlays_runs_with_x_axis_and_smoothing(store: Store, store_dir: Path) -> None:
    muon = pretrain_run(store, name="muon", batch=8)
    adamw = pretrain_run(store, name="adamw", batch=16)

    async def body(app: WorkbenchApp, pilot: Pilot[Any], screen: CompareScreen) -> None:
        chart = screen.query_one("#compare-chart", LineChart)
        assert chart.series_names == ["muon", "adamw"] and chart.title == "train/loss"
        assert chart.points("muon")[0][:2].tolist() == [1, 2]
        await pilot.press("x")  # tokens: steps x batch x seq_len
        await pilot.pause(0.1)
        assert chart.points("muon")[0][:2].tolist() == [256, 512]
        assert chart.points("adamw")[0][:2].tolist() == [512, 1024]
        await pilot.press("x")  # wall minutes since the first point
        await pilot.pause(0.1)
        assert chart.points("muon")[0][0] == 0.0 and chart.x_label == "minutes"
        await pilot.press("s")
        await pilot.pause(0.1)
        assert chart.smooth and "smooth: on" in str(screen.query_one("#compare-axis").render())
        screen.metric = "attn/max_logit"
        screen.redraw()
        assert chart.title == "attn/max_logit"

    on_screen(store_dir, lambda: CompareScreen([muon.id, adamw.id]), body)


# -- snapshots ----------------------------------------------------------------------------


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    numbers = count()
    monkeypatch.setattr(store_module, "new_run_id", lambda: f"run{next(numbers):05d}")


async def settle(pilot: Pilot[Any]) -> None:
    """Let the first refresh and its repaint finish before the snapshot."""
    await pilot.pause(0.5)


class ScreenApp(WorkbenchApp):
    """The dashboard opened straight on one screen (for snapshots)."""

    def __init__(self, store_dir: Path, make: Callable[[], Any], keys: str = "") -> None:
        super().__init__(store_dir)
        self.make = make

    def on_mount(self, event: events.Mount) -> None:
        event.prevent_default()  # not WorkbenchApp's: no runs screen, its "age" column ticks
        self.store_if_exists()
        self.theme = "workbench-dark"
        self.push_screen(self.make())


def test_snapshot_run_overview(fixed_ids: None, store: Store, store_dir: Path,
                               snap_compare: Any) -> None:
    run = pretrain_run(store)
    assert snap_compare(ScreenApp(store_dir, lambda: RunScreen(run.id)), terminal_size=(80, 24),
                        run_before=settle)


def test_snapshot_run_attention(fixed_ids: None, store: Store, store_dir: Path,
                                snap_compare: Any) -> None:
    run = pretrain_run(store)

    async def show_attention(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: isinstance(pilot.app.screen, RunScreen), 5, "run screen")
        pilot.app.screen.action_show_tab(1)
        await until(pilot, lambda: isinstance(pilot.app.screen, RunScreen) and
                    pilot.app.screen.query_one(TabbedContent).active == "tab-attention", 5,
                    "the attention tab")
        await pilot.pause(0.3)

    assert snap_compare(ScreenApp(store_dir, lambda: RunScreen(run.id)),
                        run_before=show_attention, terminal_size=(80, 24))


def test_snapshot_compare(fixed_ids: None, store: Store, store_dir: Path,
                          snap_compare: Any) -> None:
    a, b = pretrain_run(store, name="muon"), pretrain_run(store, name="adamw")
    assert snap_compare(ScreenApp(store_dir, lambda: CompareScreen([a.id, b.id])),
                        terminal_size=(80, 24), run_before=settle)


def test_snapshot_runs_screen(fixed_ids: None, store: Store, store_dir: Path,
                              snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.screens import runs as runs_module

    monkeypatch.setattr(runs_module, "ago", lambda _ts: "5m")  # ages tick; the rest is fixed
    pretrain_run(store, name="muon")
    pretrain_run(store, name="adamw")
    rl_run(store)
    depth_run(store)
    assert snap_compare(ScreenApp(store_dir, runs_module.RunsScreen), terminal_size=(80, 24),
                        run_before=settle)


def test_snapshot_launch_screen(store_dir: Path, snap_compare: Any) -> None:
    from workbench.screens.launch import LaunchScreen

    assert snap_compare(ScreenApp(store_dir, lambda: LaunchScreen("muon-tiny")),
                        terminal_size=(80, 24), run_before=settle)

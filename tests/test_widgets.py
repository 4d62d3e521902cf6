"""Dashboard widgets (LineChart, Heatmap, Histogram) and themes, driven through Pilot.

Small apps with fixed data; the run/compare screens test the widgets again on
real stores. One snapshot (pytest-textual-snapshot) pins the look of all three
at 80x24 in the default theme: regenerate it with `pytest --snapshot-update`
after a deliberate visual change, and look at the SVG before committing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from textual.app import App, ComposeResult
from textual.color import Color
from textual.containers import Horizontal

from workbench.screens.widgets import Heatmap, Histogram, LineChart
from workbench.screens.widgets.heatmap import format_value
from workbench.screens.widgets.histogram import compact, merge_bins
from workbench.screens.widgets.line_chart import log_ticks, nice_ticks, tick_labels
from workbench.themes import (
    DEFAULT_THEME,
    THEMES,
    load_theme_name,
    register_themes,
    save_theme_name,
    settings_path,
)

SIZE = (80, 24)


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async Pilot test under asyncio.run (no pytest-asyncio in this project)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


def loss_curve(n: int = 2_000) -> tuple[np.ndarray, np.ndarray]:
    """A decaying loss with one spike at step 1234 (value 6.5) and one NaN."""
    x = np.arange(n, dtype=np.float64)
    y = 4.0 * np.exp(-x / (n / 3)) + 1.0 + 0.05 * np.sin(x / 7)
    y[1234] = 6.5
    y[77] = np.nan
    return x, y


def max_logits() -> np.ndarray:
    """6 layers x 8 heads, one head (layer 2, head 3) over tau = 100."""
    m = np.arange(48, dtype=np.float64).reshape(6, 8) * 1.5
    m[2, 3] = 130.0
    return m


def length_hist() -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(0, 1024, 33)
    counts = np.round(np.exp(-(((edges[:-1] - 300) / 150) ** 2)) * 100)
    counts[-1] = 2  # a long rollout in the tail
    return edges, counts


class WidgetsApp(App[None]):
    """The three widgets on one screen, fixed data, fixed theme."""

    CSS = "#bottom { height: 11; }"

    def __init__(self, theme: str = "workbench-dark") -> None:
        super().__init__()
        self._theme_name = theme
        self.focused_cells: list[tuple[int, int, float]] = []

    def compose(self) -> ComposeResult:
        yield LineChart("train/loss", id="chart")
        with Horizontal(id="bottom"):
            yield Heatmap(id="heatmap")
            yield Histogram(id="hist")

    def on_mount(self) -> None:
        register_themes(self)
        self.theme = self._theme_name
        chart = self.query_one(LineChart)
        x, y = loss_curve()
        chart.set_series("train", x, y)
        chart.set_series("val", x[::100], y[::100] + 0.2)
        chart.set_markers([1234], label="spike")
        chart.set_hline(5.0, label="tau")
        self.query_one(Heatmap).set_matrix(max_logits(), 100.0)
        edges, counts = length_hist()
        self.query_one(Histogram).set_histogram(
            edges, counts, title="rollout length",
            quantiles={"p50": 300.0, "p90": 500.0, "p99": 900.0})
        self.query_one(Heatmap).focus()

    def on_heatmap_cell_focused(self, message: Heatmap.CellFocused) -> None:
        self.focused_cells.append((message.row, message.col, message.value))


def rgb(color: str) -> tuple[int, int, int]:
    return Color.parse(color).rgb


# -- LineChart ---------------------------------------------------------------------------


@sync
async def test_chart_draws_series_markers_and_threshold() -> None:
    app = WidgetsApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        chart = app.query_one(LineChart)
        assert chart.build_count >= 1
        assert list(chart.drawn) == ["train", "val"]
        xs, ys = chart.drawn["train"]
        # Downsampled to ~2 points per column, and the spike is still drawn at its step.
        assert xs.size <= 2 * 2 * chart.size.width
        assert ys.max() == 6.5 and xs[ys.argmax()] == 1234
        assert not np.isnan(ys).any()
        plain = chart.render().plain
        assert "train/loss" in plain
        assert "spike (1)" in plain and "tau 5" in plain and "val" in plain
        assert any("x" in line[20:] for line in plain.splitlines()), "the spike point is drawn"
        # Round tick labels, not plotext's evenly split "499.8".
        assert "1000" in plain and "499.8" not in plain


@sync
async def test_chart_redraws_only_when_data_changes() -> None:
    app = WidgetsApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        chart = app.query_one(LineChart)
        builds = chart.build_count
        x, y = loss_curve()
        # A screen's poll: clear and set the same data again -> no rebuild.
        for _ in range(3):
            chart.clear_series()
            chart.set_series("train", x.copy(), y.copy())
            chart.set_series("val", x[::100], y[::100] + 0.2)
            chart.set_markers([1234], label="spike")
            chart.set_hline(5.0, label="tau")
            await pilot.pause()
        assert chart.build_count == builds
        # One new point -> exactly one rebuild.
        chart.set_series("train", np.append(x, 2_000.0), np.append(y, 1.0))
        await pilot.pause()
        await pilot.pause()
        assert chart.build_count == builds + 1
        assert chart.drawn["train"][0].max() == 2_000.0


@sync
async def test_chart_colours_follow_the_theme() -> None:
    app = WidgetsApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        chart = app.query_one(LineChart)
        assert chart._rgb("linechart--series-1") == rgb(app.theme_variables["primary"])
        assert chart._rgb("linechart--marker-1") == rgb(app.theme_variables["error"])
        builds = chart.build_count
        app.theme = "workbench-high-contrast"
        await pilot.pause()
        await pilot.pause()
        primary = rgb(app.theme_variables["primary"])
        assert primary == rgb(THEMES["workbench-high-contrast"].primary)
        assert chart._rgb("linechart--series-1") == primary
        assert chart.build_count > builds, "a theme switch redraws with the new colours"
        raw = chart.render()
        colours = {seg.style.color.get_truecolor() for line in raw.lines for seg in line
                   if seg.style is not None and seg.style.color}
        assert primary in {tuple(c) for c in colours}


@sync
async def test_chart_smooth_and_log_toggles() -> None:
    app = WidgetsApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        chart = app.query_one(LineChart)
        chart.smooth = True
        await pilot.pause()
        _, smooth_y = chart.drawn["train"]
        assert smooth_y.max() < 6.0, "the smoothed line averages the spike"
        assert "spike (1)" in chart.render().plain, "but the spike stays marked"
        chart.smooth = False
        chart.log_y = True
        chart.set_series("signed", np.arange(5.0), np.array([-1.0, 0.0, 1.0, 10.0, 100.0]))
        await pilot.pause()
        assert chart.drawn["signed"][1].tolist() == [1.0, 10.0, 100.0]


@sync
async def test_chart_empty_and_markers_only() -> None:
    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield LineChart("nothing yet", id="empty")
            yield LineChart("syncs", id="markers")

    app = One()
    async with app.run_test(size=SIZE) as pilot:
        empty = app.query_one("#empty", LineChart)
        markers = app.query_one("#markers", LineChart)
        markers.set_markers([10, 50], label="sync")
        await pilot.pause()
        assert "no data yet" in empty.render().plain
        assert "sync x2" in markers.render().plain


@sync
async def test_chart_million_points() -> None:
    """A 1M-point series: downsampled before plotext, spike kept; build time printed."""
    class Big(App[None]):
        def compose(self) -> ComposeResult:
            yield LineChart("1M")

    app = Big()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LineChart)
        x = np.arange(1_000_000, dtype=np.float64)
        y = 3.0 * np.exp(-x / 2e5) + 1.0
        y[654_321] = 9.0
        chart.set_series("loss", x, y)
        await pilot.pause()
        chart.set_series("loss", np.append(x, 1e6), np.append(y, 1.0))
        t = time.perf_counter()
        chart.render()
        built = time.perf_counter() - t
        print(f"\nLineChart: 1,000,001 points rebuilt in {built * 1e3:.1f} ms")
        assert chart.drawn["loss"][1].max() == 9.0
        assert chart.drawn["loss"][0].size <= 4 * chart.size.width


def test_tick_and_label_helpers() -> None:
    """Axis labels stay short (they take columns from a ~25-column plot at 80x24)."""
    cases = {(0, 1e6): ["0", "0.25M", "0.5M", "0.75M", "1M"],
             (0, 3e-4): ["0", "1e-4", "2e-4", "3e-4"],
             (0, 2_000): ["0", "500", "1000", "1500", "2000"],
             (-2, 2): ["-2", "-1", "0", "1", "2"]}
    for (lo, hi), want in cases.items():
        assert tick_labels(*nice_ticks(lo, hi, 4)) == want
    assert nice_ticks(1.0, 1.0, 4)[0].size == 0
    assert log_ticks(1e-5, 1e-2, 4)[1] == ["1e-5", "1e-4", "1e-3", "0.01"]
    assert format_value(123.456, 5) == "123.5" and format_value(123.456, 3) == "123"
    assert format_value(12_345.0, 3) == "12k" and format_value(12_345.0, 2) == ""
    assert compact(1234) == "1.23k" and compact(0.5) == "0.5" and compact(0) == "0"
    edges, counts = merge_bins(np.arange(11.0), np.ones(10), 4)
    assert counts.sum() == 10 and edges[0] == 0 and edges[-1] == 10 and counts.size == 4


# -- Heatmap -----------------------------------------------------------------------------


@sync
async def test_heatmap_cursor_subtitle_and_message() -> None:
    app = WidgetsApp()
    async with app.run_test(size=SIZE) as pilot:
        heatmap = app.query_one(Heatmap)
        await pilot.pause()
        assert heatmap.has_focus
        assert heatmap.border_subtitle.startswith("layer 0 head 0: 0")
        await pilot.press("right", "right", "right", "down", "down")
        await pilot.pause()
        assert heatmap.cursor == (2, 3)
        assert heatmap.border_subtitle == "layer 2 head 3: 130 (1.30 tau)"
        assert app.focused_cells[-1] == (2, 3, 130.0)
        assert len(app.focused_cells) == 5
        # The cursor stops at the edges.
        await pilot.press(*["up"] * 5)
        assert heatmap.cursor == (0, 3)
        # m jumps to the hottest head.
        await pilot.press("m")
        assert heatmap.cursor == (2, 3)
        # Values are printed in cells that fit them.
        assert "130" in heatmap.render().plain


@sync
async def test_heatmap_alarm_colour_at_tau() -> None:
    app = WidgetsApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        heatmap = app.query_one(Heatmap)
        error = rgb(app.theme_variables["error"])
        hot = heatmap.cell_style(2, 3)
        assert Color.from_rich_color(hot.bgcolor).rgb == error and hot.bold
        cool = heatmap.cell_style(1, 1)
        assert Color.from_rich_color(cool.bgcolor).rgb != error
        # In the rendered text the hot cell's value carries the alarm colour.
        text = heatmap.render()
        start = text.plain.index("130")
        styles = [s.style for s in text.spans if s.start <= start < s.end]
        assert any(Color.from_rich_color(s.bgcolor).rgb == error for s in styles if s.bgcolor)
        # Colour scales with value / tau: hotter cells are closer to the high colour.
        high = rgb(app.theme_variables["warning"])

        def distance(style) -> float:
            c = Color.from_rich_color(style.bgcolor).rgb
            return sum((a - b) ** 2 for a, b in zip(c, high, strict=True))

        assert distance(heatmap.cell_style(5, 7)) < distance(heatmap.cell_style(0, 1))
        # Without tau nothing alarms, and the scale is the matrix maximum.
        heatmap.set_matrix(max_logits(), None)
        assert heatmap.scale == 130.0
        assert Color.from_rich_color(heatmap.cell_style(2, 3).bgcolor).rgb != error
        assert "tau" not in heatmap.border_subtitle


@sync
async def test_heatmap_narrow_cells_keep_alarm_visible() -> None:
    """32 heads in 40 columns: no room for values, but an alarm cell shows "!"."""
    class Narrow(App[None]):
        CSS = "Heatmap { width: 40; }"

        def compose(self) -> ComposeResult:
            yield Heatmap()

    app = Narrow()
    async with app.run_test(size=SIZE) as pilot:
        heatmap = app.query_one(Heatmap)
        m = np.full((4, 32), 10.0)
        m[1, 30] = 200.0
        heatmap.set_matrix(m, 100.0)
        await pilot.pause()
        rows = heatmap.render().plain.splitlines()
        assert rows[2].count("!") == 1 and "!" not in rows[1]
        await pilot.click(Heatmap, offset=(1 + 1 + 3 + 5, 1 + 3))  # border, padding, label
        assert heatmap.cursor[0] == 2


# -- Histogram ---------------------------------------------------------------------------


@sync
async def test_histogram_bars_and_quantiles() -> None:
    app = WidgetsApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        hist = app.query_one(Histogram)
        plain = hist.render().plain
        assert "rollout length" in plain
        assert "█" in plain and "▕" in plain
        assert "▲p50" in plain and "▲p90" in plain and "p99" in plain
        assert "1.02k" in plain  # the last edge
        hist.orientation = "horizontal"
        await pilot.pause()
        plain = hist.render().plain
        assert "◀p50" in plain and "◀p99" in plain and "928-1.02k" in plain
        # Empty and bad input.
        hist.set_histogram([], [])
        assert "no data" in hist.render().plain
        with pytest.raises(ValueError):
            hist.set_histogram([0, 1], [1, 2, 3])


# -- Themes ------------------------------------------------------------------------------


def test_themes_are_complete() -> None:
    assert {"workbench-dark", "workbench-light", "workbench-high-contrast"} <= set(THEMES)
    assert DEFAULT_THEME in THEMES
    contrast = THEMES["workbench-high-contrast"]
    assert contrast.background == "#000000" and contrast.foreground == "#FFFFFF"
    assert not THEMES["workbench-light"].dark


def test_theme_name_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert settings_path() == tmp_path / "config" / "workbench" / "settings.json"
    assert load_theme_name() == DEFAULT_THEME  # nothing saved yet
    save_theme_name("workbench-high-contrast")
    assert load_theme_name() == "workbench-high-contrast"
    save_theme_name("nord")  # Textual's own themes are valid choices too
    assert load_theme_name() == "nord"
    # Other settings survive, and no temporary file is left behind.
    path = settings_path()
    path.write_text(json.dumps({"theme": "nord", "other": 1}))
    save_theme_name("workbench-light")
    assert json.loads(path.read_text()) == {"theme": "workbench-light", "other": 1}
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"theme": 3}',
                                     '{"theme": "no-such-theme"}', ""])
def test_corrupt_settings_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    content: str) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    settings_path().parent.mkdir(parents=True)
    settings_path().write_text(content)
    assert load_theme_name() == DEFAULT_THEME
    save_theme_name("workbench-light")  # and saving over it repairs the file
    assert load_theme_name() == "workbench-light"


def test_home_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert settings_path() == tmp_path / ".config" / "workbench" / "settings.json"


# -- Snapshot ----------------------------------------------------------------------------


def test_snapshot_widgets(snap_compare) -> None:
    """LineChart (two series, spike marker, tau), Heatmap (cursor on the hot head) and
    Histogram (quantile markers) at 80x24 in workbench-dark."""
    assert snap_compare(WidgetsApp(), press=["right", "right", "right", "down", "down"],
                        terminal_size=SIZE)

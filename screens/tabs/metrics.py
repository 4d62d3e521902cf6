"""Metrics: every key the run logs, one small chart each, in pages.

The custom tabs show what practitioners of each recipe watch; this one shows the rest,
as W&B and TensorBoard do by default. Keys are grouped by prefix in natural order
(workbench/metric_keys.py); distributions draw as a p50 / p90 / p99 band over steps.

Keys: `/` filter (glob or text; enter keeps it, escape clears it), up / down (j / k)
select a chart, `[` / `]` or PageUp / PageDown page, enter opens the selected chart
full size (the compare view: x axis and smoothing), `p` pins it to the Overview.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.events import Resize
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Input, Label

from workbench.feed import RunFeed
from workbench.metric_keys import filtered, page_of, pages
from workbench.screens.tabs.base import RunTab
from workbench.screens.widgets import LineChart

CELL_WIDTH, CELL_HEIGHT = 38, 9  # a chart cell: readable axis labels at 80x24
BAND = ("p50", "p90", "p99")


class MetricsTab(RunTab):
    TITLE = "Metrics"
    FOCUS = ""  # the tab takes the keys: select, page, filter
    can_focus = True

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("right_square_bracket,pagedown", "page(1)", "Next page"),
        Binding("left_square_bracket,pageup", "page(-1)", "Prev page", show=False),
        Binding("down,j", "select(1)", "Next chart", show=False),
        Binding("up,k", "select(-1)", "Prev chart", show=False),
        Binding("enter", "open", "Open"),
        Binding("p", "pin", "Pin"),
        Binding("escape", "clear_or_back", "Back", show=False),
    ]

    pattern: reactive[str] = reactive("")
    page: reactive[int] = reactive(0)
    selected: reactive[int] = reactive(0)
    per_page: reactive[int] = reactive(4)

    class Open(Message):
        """Open `key` full size (the run screen pushes the compare view)."""

        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    class Pin(Message):
        """Pin or unpin `key` on the Overview."""

        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.feed: RunFeed | None = None
        self.keys: list[str] = []  # after the filter, in order
        self.shown: list[str] = []  # this page's

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: glob (train/*) or text; enter keeps, escape clears",
                    id="metrics-filter")
        yield Label("", id="metrics-status")
        yield Grid(id="metrics-grid")

    def on_mount(self) -> None:
        self.query_one("#metrics-filter", Input).display = False

    # -- data ---------------------------------------------------------------------------

    def all_keys(self, feed: RunFeed) -> list[str]:
        return feed.keys() + [k for k in feed.dist_keys() if k not in feed.keys()]

    def update_from(self, feed: RunFeed) -> None:
        self.feed = feed
        self.keys = filtered(self.all_keys(feed), self.pattern)
        self._draw()

    def _draw(self) -> None:
        if self.feed is None or not self.is_mounted:
            return
        n_pages = pages(len(self.keys), self.per_page)
        if self.page >= n_pages:
            self.page = n_pages - 1  # watch_page redraws
            return
        self.shown = page_of(self.keys, self.per_page, self.page)
        if self.selected >= max(1, len(self.shown)):
            self.selected = max(0, len(self.shown) - 1)
            return
        grid = self.query_one("#metrics-grid", Grid)
        cells = list(grid.query(LineChart))
        if len(cells) != self.per_page:
            grid.remove_children()
            cells = [LineChart(classes="metric-cell") for _ in range(self.per_page)]
            grid.mount_all(cells)
        for i, cell in enumerate(cells):
            cell.set_class(i == self.selected and i < len(self.shown), "-selected")
            cell.display = i < len(self.shown)
            if i < len(self.shown):
                self._fill(cell, self.shown[i])
        total = len(self.all_keys(self.feed))
        what = f"{len(self.keys)} of {total} keys" if self.pattern else f"{total} keys"
        where = f"  filter {self.pattern!r}" if self.pattern else ""
        self.query_one("#metrics-status", Label).update(
            f" page {self.page + 1}/{n_pages} · {what}{where}" if self.keys else
            f" no key matches {self.pattern!r}" if self.pattern else " no metrics yet")

    def _fill(self, cell: LineChart, key: str) -> None:
        assert self.feed is not None
        cell.clear_series()
        cell.set_title(key)
        s = self.feed.series(key)
        if len(s):
            cell.set_series(key.rsplit("/", 1)[-1], s.step, s.value)
            return
        history = self.feed.dist_history(key)  # a distribution: its quantile band
        if history:
            steps = [h["step"] for h in history]
            for q in BAND:
                cell.set_series(q, steps, [h[q] for h in history])

    # -- layout -------------------------------------------------------------------------

    def on_resize(self, event: Resize) -> None:
        grid = self.query_one("#metrics-grid", Grid)
        cols = max(1, event.size.width // CELL_WIDTH)
        rows = max(1, (event.size.height - 2) // CELL_HEIGHT)
        grid.styles.grid_size_columns = cols
        grid.styles.grid_size_rows = rows
        self.per_page = cols * rows

    def watch_per_page(self) -> None:
        self._draw()

    def watch_page(self) -> None:
        self._draw()

    def watch_selected(self) -> None:
        for i, cell in enumerate(self.query_one("#metrics-grid", Grid).query(LineChart)):
            cell.set_class(i == self.selected and i < len(self.shown), "-selected")

    def watch_pattern(self) -> None:
        if self.feed is not None:
            self.page = 0
            self.update_from(self.feed)

    # -- actions ------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#metrics-filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#metrics-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.pattern = event.value.strip()

    @on(Input.Submitted, "#metrics-filter")
    def _filter_kept(self) -> None:
        box = self.query_one("#metrics-filter", Input)
        box.display = bool(self.pattern)
        self.focus()

    def action_clear_or_back(self) -> None:
        """Escape clears the filter first; with none, it goes back as everywhere."""
        box = self.query_one("#metrics-filter", Input)
        if box.has_focus or self.pattern:
            box.value = ""
            box.display = False
            self.focus()
        else:
            self.app.pop_screen()

    def action_page(self, delta: int) -> None:
        n = pages(len(self.keys), self.per_page)
        self.page = (self.page + delta) % n
        self.selected = 0

    def action_select(self, delta: int) -> None:
        if self.shown:
            self.selected = (self.selected + delta) % len(self.shown)

    def selected_key(self) -> str | None:
        return self.shown[self.selected] if 0 <= self.selected < len(self.shown) else None

    def action_open(self) -> None:
        if (key := self.selected_key()) is not None:
            self.post_message(self.Open(key))

    def action_pin(self) -> None:
        if (key := self.selected_key()) is not None:
            self.post_message(self.Pin(key))

"""Metrics: every key the run logs, one small chart each, in pages.

The custom tabs show what practitioners of each recipe watch; this one shows the rest,
as W&B and TensorBoard do by default. Keys are grouped by prefix in natural order
(workbench/metric_keys.py); distributions draw as a p50 / p90 / p99 band over steps.

Keys: `/` filter (glob or text; enter keeps it, escape clears it), up / down (j / k)
select a chart, `[` / `]` or PageUp / PageDown page, enter opens the selected chart
full size (the compare view: x axis and smoothing), `p` pins it to the Overview.

Live, the grid redraws only the charts whose keys got new points, and at most
LIVE_REDRAWS of them every LIVE_TICK_S, those waiting longest first: a plotext chart
costs 15-20 ms to rebuild, so redrawing a page of 16 changed charts at once took about
300 ms, and every poll of a run logging 50 keys froze the keys for that long (issue 20).
A poll with news draws the LIVE_REDRAWS cells waiting longest at once and restarts the
tick, so new points show within a frame. A page of 16 changing charts comes round in
about 16 / LIVE_REDRAWS ticks (2 s), a few changing charts at the poll's pace. Paging,
the filter, a resize and showing the tab draw the whole page at once.
"""

from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.events import Resize
from textual.message import Message
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Input, Label

from workbench.feed import RunFeed
from workbench.metric_keys import filtered, page_of, pages
from workbench.screens.tabs.base import RunTab
from workbench.screens.widgets import LineChart

CELL_WIDTH, CELL_HEIGHT = 38, 9  # a chart cell: readable axis labels at 80x24
BAND = ("p50", "p90", "p99")
LIVE_REDRAWS = 2  # charts redrawn for new points per tick (None: all at once)
LIVE_TICK_S = 0.25


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
        # Per cell: the key it shows and the data it was filled with (_signature); the
        # cells whose key got new points since, in the order they were last filled.
        self._filled: dict[int, tuple[str, tuple[int, ...]]] = {}
        self._filled_at: dict[int, float] = {}
        self._pending: set[int] = set()
        self._drain_timer: Timer | None = None

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
        live = feed is self.feed and self.is_on_screen  # new points, not a new view
        self.feed = feed
        self.keys = filtered(self.all_keys(feed), self.pattern)
        self._draw(live=live)

    def _draw(self, live: bool = False) -> None:
        """Lay out and fill the page. `live`: a poll's news, where a cell whose key and
        page stay put waits its turn (_drain) instead of redrawing now."""
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
            self._filled.clear()
        for i, cell in enumerate(cells):
            cell.set_class(i == self.selected and i < len(self.shown), "-selected")
            cell.display = i < len(self.shown)
            if i >= len(self.shown):
                self._filled.pop(i, None)
                self._pending.discard(i)
                continue
            key = self.shown[i]
            filled = self._filled.get(i)
            if filled == (key, self._signature(key)):
                self._pending.discard(i)  # nothing new (or a pending cell caught up)
            elif live and LIVE_REDRAWS is not None and filled is not None and filled[0] == key:
                self._pending.add(i)
            else:
                self._fill(cell, key, i)
        if self._pending and (live or self._drain_timer is None):
            # A poll's news shows at once in the cells waiting longest; the tick restarts,
            # so a poll costs at most LIVE_REDRAWS builds, as a tick does.
            if self._drain_timer is not None:
                self._drain_timer.stop()
            self._drain()
        total = len(self.all_keys(self.feed))
        what = f"{len(self.keys)} of {total} keys" if self.pattern else f"{total} keys"
        where = f"  filter {self.pattern!r}" if self.pattern else ""
        self.query_one("#metrics-status", Label).update(
            f" page {self.page + 1}/{n_pages} · {what}{where}" if self.keys else
            f" no key matches {self.pattern!r}" if self.pattern else " no metrics yet")

    def _signature(self, key: str) -> tuple[int, ...]:
        """What a cell's chart depends on, cheaply: the point count and newest step of
        the key's series, or the length of its distribution history."""
        assert self.feed is not None
        s = self.feed.series(key)
        if len(s):
            return (len(s), int(s.step[-1]))
        return (0, len(self.feed.dist_history(key)))

    def _drain(self) -> None:
        """Redraw the LIVE_REDRAWS pending cells filled longest ago; come back in
        LIVE_TICK_S while any wait."""
        self._drain_timer = None
        if not self._pending or self.feed is None:
            return
        if not self.is_on_screen:  # hidden: showing the tab redraws the page
            self._pending.clear()
            self._filled.clear()
            return
        cells = list(self.query_one("#metrics-grid", Grid).query(LineChart))
        order = sorted(self._pending, key=lambda i: self._filled_at.get(i, 0.0))
        for i in order[:LIVE_REDRAWS]:
            self._pending.discard(i)
            if i < len(cells) and i < len(self.shown):
                self._fill(cells[i], self.shown[i], i)
        if self._pending:
            self._drain_timer = self.set_timer(LIVE_TICK_S, self._drain)

    def _fill(self, cell: LineChart, key: str, index: int | None = None) -> None:
        assert self.feed is not None
        if index is not None:
            self._filled[index] = (key, self._signature(key))
            self._filled_at[index] = time.monotonic()
            self._pending.discard(index)
        cell.clear_series()
        cell.set_title(key)
        s = self.feed.series(key)
        if len(s):
            cell.set_series(key.rsplit("/", 1)[-1], s.step, s.value)
            return
        history = self.feed.dist_history(key)  # a distribution: its quantile band
        if history:
            steps = [h.step for h in history]
            for q in BAND:
                cell.set_series(q, steps, [getattr(h, q) for h in history])

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

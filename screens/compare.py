"""The compare screen: overlay one metric of two or more runs (Muon vs AdamW loss).

Pick runs in the list (space), the metric, and the x-axis: step, tokens (steps x
the run's global batch tokens, so runs with different batches line up) or wall
time since the run's first point. Smoothing is an EMA (debiased, as TensorBoard's).
Every run has its own `RunFeed`, polled live.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, Select, SelectionList

from workbench.feed import RunFeed
from workbench.render import key_metric
from workbench.screens.widgets import LineChart
from workbench.store import Store
from workbench.themes import stylesheet

X_AXES = ("step", "tokens", "wall")
POLL_S = 1.0


class CompareScreen(Screen[None]):
    """Overlay a metric across runs."""

    CSS_PATH = str(stylesheet("run"))

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("x", "cycle_x", "X axis"),
        Binding("s", "toggle_smooth", "Smooth"),
        Binding("m", "focus_metric", "Metric"),
        Binding("p", "focus_runs", "Pick runs"),
    ]

    x_axis: reactive[str] = reactive("step")
    smooth: reactive[bool] = reactive(False)

    def __init__(self, run_ids: list[str], store: Store | None = None,
                 metric: str | None = None) -> None:
        """`store`: defaults to the app's (`WorkbenchApp.store`)."""
        super().__init__()
        self._store = store
        self.initial = list(dict.fromkeys(run_ids))
        self.feeds: dict[str, RunFeed] = {}
        self.metric = metric

    @property
    def store(self) -> Store:
        return self._store if self._store is not None else self.app.store  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="compare-side"):
                yield Label("runs")
                yield SelectionList[str](id="compare-runs")
                yield Label("metric")
                yield Select[str]([], id="compare-metric", allow_blank=True,
                                  prompt="metric")
                yield Label("", id="compare-axis")
            yield LineChart(id="compare-chart")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "compare"
        runs = self.query_one("#compare-runs", SelectionList)
        for row in self.store.runs():
            runs.add_option((f"{row.name} ({row.kind})", row.id, row.id in self.initial))
        self._sync_feeds()
        if self.metric is None and self.feeds:
            first = next(iter(self.feeds.values()))
            self.metric = key_metric(first.row.kind)
        self._fill_metrics()
        self._label()
        self.redraw()
        self.set_interval(POLL_S, self.poll)

    # -- data -------------------------------------------------------------------------

    def selected(self) -> list[str]:
        return list(self.query_one("#compare-runs", SelectionList).selected)

    def _sync_feeds(self) -> None:
        chosen = self.selected()
        self.sub_title = f"{len(chosen)} runs"
        for run_id in chosen:
            if run_id not in self.feeds:
                self.feeds[run_id] = RunFeed(self.store, run_id)
                self.feeds[run_id].poll()
        for run_id in list(self.feeds):
            if run_id not in chosen:
                del self.feeds[run_id]

    def _fill_metrics(self) -> None:
        keys = sorted(set().union(*(f.keys() for f in self.feeds.values()))) \
            if self.feeds else []
        select = self.query_one("#compare-metric", Select)
        if keys != getattr(self, "_keys", None):
            self._keys = keys
            with self.prevent(Select.Changed):
                select.set_options([(k, k) for k in keys])
                if self.metric in keys:
                    select.value = self.metric

    def poll(self) -> None:
        changed = [f.poll() for f in self.feeds.values()]
        if any(changed):
            self._fill_metrics()
            self.redraw()

    def xs(self, feed: RunFeed, steps, walls):  # noqa: ANN001, ANN201 - numpy arrays
        if self.x_axis == "tokens" and feed.tokens_per_step:
            return steps * float(feed.tokens_per_step)
        if self.x_axis == "wall" and len(walls):
            return (walls - walls[0]) / 60.0
        return steps

    def redraw(self) -> None:
        chart = self.query_one("#compare-chart", LineChart)
        chart.clear_series()
        chart.smooth = self.smooth
        chart.x_label = {"step": "step", "tokens": "tokens", "wall": "minutes"}[self.x_axis]
        chart.set_title(self.metric or "pick a metric")
        if not self.metric:
            return
        for feed in self.feeds.values():
            s = feed.series(self.metric)
            if len(s):
                chart.set_series(feed.row.name, self.xs(feed, s.step, s.wall), s.value)

    def _label(self) -> None:
        missing = [f.row.name for f in self.feeds.values() if not f.tokens_per_step]
        note = f" (step for {', '.join(missing)})" if self.x_axis == "tokens" and missing \
            else ""
        self.query_one("#compare-axis", Label).update(
            f"x: {self.x_axis}{note}  smooth: {'on' if self.smooth else 'off'}")

    # -- events and actions -----------------------------------------------------------

    def on_selection_list_selected_changed(self, _: SelectionList.SelectedChanged) -> None:
        self._sync_feeds()
        self._fill_metrics()
        self.redraw()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "compare-metric" and isinstance(event.value, str):
            self.metric = event.value
            self.redraw()

    def action_cycle_x(self) -> None:
        self.x_axis = X_AXES[(X_AXES.index(self.x_axis) + 1) % len(X_AXES)]

    def action_toggle_smooth(self) -> None:
        self.smooth = not self.smooth

    def watch_x_axis(self) -> None:
        if self.is_mounted:
            self._label()
            self.redraw()

    def watch_smooth(self) -> None:
        if self.is_mounted:
            self._label()
            self.redraw()

    def action_focus_metric(self) -> None:
        self.query_one("#compare-metric", Select).focus()

    def action_focus_runs(self) -> None:
        self.query_one("#compare-runs", SelectionList).focus()

"""Overview: the key curve with spikes and rollback/skip marks, lr, grad norm and
throughput (or what a script calls them, else its most recent keys), keys pinned from
the Metrics tab, progress with ETA or the preparatory stage, the run summary beside
the chart (last / min / max of every scalar), and the latest events."""

from __future__ import annotations

import math

import numpy as np
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.events import Resize
from textual.widgets import DataTable, Label, ProgressBar, Static

from workbench.feed import RunFeed
from workbench.kinds import declared
from workbench.metric_keys import MAIN_CHARTS, SMALL_CHARTS, first_present, ordered
from workbench.render import duration, eta, event_line
from workbench.screens.tabs.base import RunTab
from workbench.screens.widgets import LineChart
from workbench.themes import load_setting, save_setting

# The main curve and its companion are the kind's declaration (kinds.py:
# Recipe.overview); the small charts take the first key present.
SMALL = SMALL_CHARTS
MAX_PINS = 4
SUMMARY_MIN_WIDTH = 100  # narrower, the summary pane would squeeze the main chart
# Stages during which a run trains nothing yet: the Overview names them.
PREPARING = {"warm_start", "tokenizing", "training_tokenizer", "evaluating", "loading"}
MARKS = {"loss_spike": "spike", "nan": "nan", "rollback": "rollback", "skip": "skip"}
LATEST_EVENTS = 6


def main_keys(feed: RunFeed) -> tuple[str, str | None]:
    """The main chart's key and companion: the first of the kind's declared pairs whose
    key has points (else its last pair); a kind that declares none gets its key metric,
    or, when the run has not logged it, the likeliest of its own keys."""
    recipe = declared(feed.row.kind)
    if recipe.overview:
        return next((pair for pair in recipe.overview if len(feed.series(pair[0]))),
                    recipe.overview[-1])
    key = recipe.key_metric
    # The run's own metrics only: `sys/...` has the System tab, and would otherwise take
    # the main chart of a custom run whose keys sort after "sys/" (or before any arrive).
    own = [k for k in feed.keys() if not k.startswith("sys/")]
    if key not in feed.keys() and own:
        key = first_present(own, MAIN_CHARTS) or own[0]
    companion = {"train/loss": "val/loss", "loss": "val_loss"}.get(key)
    return key, companion


def recent_keys(feed: RunFeed, skip: set[str]) -> list[str]:
    """The run's own keys, most recently updated first (ties: natural order)."""
    own = [k for k in ordered(feed.keys()) if not k.startswith("sys/") and k not in skip]
    return sorted(own, key=lambda k: -float(feed.series(k).wall[-1])
                  if len(feed.series(k)) else math.inf)


def small_keys(feed: RunFeed, main: set[str]) -> list[tuple[str, str | None]]:
    """(title, key) per small chart: our names, a script's common names, else the
    run's most recently updated keys; None where the run has nothing to show."""
    present = feed.keys()
    picked = []
    for title, names in SMALL:  # a script's own name (e.g. "mfu") titles its chart
        key = first_present(present, names)
        picked.append((title if key in (None, names[0]) else key, key))
    spare = iter(recent_keys(feed, main | {k for _, k in picked if k}))
    out: list[tuple[str, str | None]] = []
    for title, key in picked:
        if key is None and (key := next(spare, None)) is not None:
            title = key
        out.append((title, key))
    return out


def pins(run_id: str) -> list[str]:
    """Keys pinned to this run's Overview (saved with the dashboard settings)."""
    saved = load_setting("pins")
    keys = saved.get(run_id) if isinstance(saved, dict) else None
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


def toggle_pin(run_id: str, key: str) -> list[str]:
    """Pin `key` (the oldest pin drops past MAX_PINS), or unpin it; the new list."""
    saved = load_setting("pins")
    saved = saved if isinstance(saved, dict) else {}
    keys = pins(run_id)
    keys = [k for k in keys if k != key] if key in keys else (keys + [key])[-MAX_PINS:]
    saved[run_id] = keys
    save_setting("pins", saved)
    return keys


def stage_of(feed: RunFeed) -> str | None:
    """The preparatory stage a run is in, from its latest `stage` event, with its
    progress when the event carries one (`done` of `total`); None while it trains."""
    stages = feed.events_of("stage")
    if not stages:
        return None
    payload = stages[-1].payload or {}
    name = str(payload.get("stage", ""))
    if name not in PREPARING:
        return None
    done, total = payload.get("done"), payload.get("total")
    text = name.replace("_", " ")
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
        text += f" {100 * done / total:.0f}%"
    return text


def fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-" if v is None else str(v)
    return f"{v:.4g}"


class OverviewTab(RunTab):
    TITLE = "Overview"

    def compose(self) -> ComposeResult:
        with Horizontal(id="overview-progress"):
            yield ProgressBar(id="progress", show_eta=False)
            yield Label("", id="progress-label")
        with Horizontal(id="overview-main"):
            yield LineChart(id="main-chart")
            yield DataTable(id="summary", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="small-charts"):
            for i in range(len(SMALL)):
                yield LineChart(id=f"small-{i}", classes="small-chart")
        with Horizontal(id="pinned-charts"):
            for i in range(MAX_PINS):
                yield LineChart(id=f"pin-{i}", classes="small-chart")
        yield Static("", id="latest-events")

    def on_mount(self) -> None:
        self.query_one("#summary", DataTable).add_columns("key", "last", "min", "max")
        self.query_one("#pinned-charts").display = False

    def on_resize(self, event: Resize) -> None:
        self.query_one("#summary").display = event.size.width >= SUMMARY_MIN_WIDTH

    def update_from(self, feed: RunFeed) -> None:
        row = feed.row
        bar = self.query_one("#progress", ProgressBar)
        total, step = row.total_steps, row.last_step or 0
        active = row.is_active
        bar.update(total=total or None, progress=step)
        # Without a total the bar pulses (indeterminate): right for a run that is going,
        # misleading for one that finished, failed or was stopped.
        bar.display = bool(total) or active
        left = eta(row) if active else None
        stage = stage_of(feed) if active else None
        self.query_one("#progress-label", Label).update(
            (f" {stage}…  " if stage else "")
            + f" step {step}" + (f"/{total}" if total else "") + f"  {row.status}"
            + (f"  eta {duration(left)}" if left is not None else ""))

        main, companion = main_keys(feed)
        chart = self.query_one("#main-chart", LineChart)
        chart.set_title(main if companion is None else f"{main} / {companion}")
        if stage and not len(feed.series(main)):
            chart.empty_text = f"{stage}: training has not started"
        for key in (main, companion):
            if key and len(s := feed.series(key)):
                chart.set_series(key, s.step, s.value)
        for kind, label in MARKS.items():
            marks = [e.step for e in feed.events_of(kind) if e.step is not None]
            chart.set_markers(marks, label=label)

        for i, (title, key) in enumerate(small_keys(feed, {main, companion or main})):
            self._small(self.query_one(f"#small-{i}", LineChart), title, key, feed)
        pinned = pins(row.id)
        self.query_one("#pinned-charts").display = bool(pinned)
        for i in range(MAX_PINS):
            cell = self.query_one(f"#pin-{i}", LineChart)
            cell.display = i < len(pinned)
            if i < len(pinned):
                self._small(cell, pinned[i], pinned[i], feed)

        self._summary(feed)
        latest = feed.events[-LATEST_EVENTS:]
        text = "\n".join(event_line(e).markup for e in latest) or "no events yet"
        self.query_one("#latest-events", Static).update(text)

    @staticmethod
    def _small(chart: LineChart, title: str, key: str | None, feed: RunFeed) -> None:
        chart.set_title(title)
        if key is None:
            chart.empty_text = "not logged by this run"
            return
        if len(s := feed.series(key)):
            chart.clear_series()
            chart.set_series(key.rsplit("/", 1)[-1], s.step, s.value)

    def _summary(self, feed: RunFeed) -> None:
        """Last, min and max of every scalar (the run's own keys first)."""
        table = self.query_one("#summary", DataTable)
        if not table.display:
            return
        keys = ordered(feed.keys())
        keys = [k for k in keys if not k.startswith("sys/")] + \
            [k for k in keys if k.startswith("sys/")]
        rows = []
        for key in keys:
            y = feed.series(key).value
            finite = y[np.isfinite(y)]
            rows.append((key, fmt(float(y[-1]) if len(y) else None),
                         fmt(float(finite.min())) if len(finite) else "-",
                         fmt(float(finite.max())) if len(finite) else "-"))
        if rows != getattr(self, "_summary_rows", None):
            self._summary_rows = rows
            table.clear()
            for r in rows:
                table.add_row(*r, key=r[0])

"""Overview: the key curve with spikes and rollback/skip marks, lr, grad norm and
throughput, progress with ETA, and the latest events."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar, Static

from workbench.feed import RunFeed
from workbench.render import duration, eta, event_line, key_metric
from workbench.screens.tabs.base import RunTab
from workbench.screens.widgets import LineChart

# Main curve and its companion per kind; the small charts take the first key present.
# A depth run trains first (its evaluation has the Depth tab); one logged through the
# SDK without training shows its depth curve instead.
MAIN = {"pretrain": ("train/loss", "val/loss"), "rl": ("rl/reward", "rl/accuracy"),
        "depth": ("train/loss", "val/loss")}
FALLBACK = {"depth": ("depth/steps_mean", "eval/accuracy")}
SMALL = (
    ("lr", ("train/lr",)),
    ("grad norm", ("train/grad_norm", "rl/grad_norm")),
    ("tokens/s", ("perf/tokens_per_s", "perf/gen_tokens_per_s")),
)
MARKS = {"loss_spike": "spike", "nan": "nan", "rollback": "rollback", "skip": "skip"}
LATEST_EVENTS = 6


def main_keys(feed: RunFeed) -> tuple[str, str | None]:
    kind = feed.row["kind"]
    if kind in MAIN:
        if kind in FALLBACK and not len(feed.series(MAIN[kind][0])):
            return FALLBACK[kind]
        return MAIN[kind]
    key = key_metric(kind)
    # The run's own metrics only: `sys/...` has the System tab, and would otherwise take
    # the main chart of a custom run whose keys sort after "sys/" (or before any arrive).
    own = [k for k in feed.keys() if not k.startswith("sys/")]
    if key not in feed.keys() and own:
        key = own[0]
    return key, ("val/loss" if key == "train/loss" else None)


def first_present(feed: RunFeed, keys: tuple[str, ...]) -> str:
    return next((k for k in keys if len(feed.series(k))), keys[0])


class OverviewTab(RunTab):
    TITLE = "Overview"

    def compose(self) -> ComposeResult:
        with Horizontal(id="overview-progress"):
            yield ProgressBar(id="progress", show_eta=False)
            yield Label("", id="progress-label")
        yield LineChart(id="main-chart")
        with Horizontal(id="small-charts"):
            for i in range(len(SMALL)):
                yield LineChart(id=f"small-{i}", classes="small-chart")
        yield Static("", id="latest-events")

    def update_from(self, feed: RunFeed) -> None:
        row = feed.row
        bar = self.query_one("#progress", ProgressBar)
        total, step = row.get("total_steps"), row.get("last_step") or 0
        active = row["status"] in ("queued", "running")
        bar.update(total=total or None, progress=step)
        # Without a total the bar pulses (indeterminate): right for a run that is going,
        # misleading for one that finished, failed or was stopped.
        bar.display = bool(total) or active
        left = eta(row) if active else None
        self.query_one("#progress-label", Label).update(
            f" step {step}" + (f"/{total}" if total else "") + f"  {row['status']}"
            + (f"  eta {duration(left)}" if left is not None else ""))

        main, companion = main_keys(feed)
        chart = self.query_one("#main-chart", LineChart)
        chart.set_title(main if companion is None else f"{main} / {companion}")
        for key in (main, companion):
            if key and len(s := feed.series(key)):
                chart.set_series(key, s.step, s.value)
        for kind, label in MARKS.items():
            marks = [e["step"] for e in feed.events_of(kind) if e.get("step") is not None]
            chart.set_markers(marks, label=label)

        for i, (title, keys) in enumerate(SMALL):
            key = first_present(feed, keys)
            small = self.query_one(f"#small-{i}", LineChart)
            small.set_title(title)
            if len(s := feed.series(key)):
                small.set_series(key, s.step, s.value)

        latest = feed.events[-LATEST_EVENTS:]
        text = "\n".join(event_line(e).markup for e in latest) or "no events yet"
        self.query_one("#latest-events", Static).update(text)

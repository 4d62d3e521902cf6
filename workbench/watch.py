"""`wb watch RUN`: a compact live text view of one run, without the full dashboard.

For a terminal where the Textual app is unwanted (a quick look over SSH, a tmux
pane, a CI log): a plotext chart of the run's key metric, with loss spikes marked
and the validation curve beside it, a line of key stats, and the latest events.

- On a terminal it redraws in place (Rich Live) until the run ends.
- Piped into a file it prints one stats line per new step (at most one per
  interval) and the chart once at the end, so logs stay readable.

Both read the run through a `RunFeed`, incrementally.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.text import Text

from workbench.feed import RunFeed
from workbench.kinds import declared
from workbench.render import duration, eta, event_line, fmt_value, status_text
from workbench.series import downsample_minmax

# The stats line and the default chart are the kind's declaration (kinds.py:
# Recipe.main_metrics, Recipe.watch_key); a kind without a recipe shows its key metric.
COMPANION = {"train/loss": "val/loss"}  # drawn on the same chart when present
SPIKE_KINDS = ("loss_spike", "nan")


def chart(feed: RunFeed, key: str, width: int, height: int, color: bool) -> str:
    """The plotext chart of `key` (and its companion), spikes as red x marks."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(max(20, width), max(6, height))
    if not color:
        plt.theme("clear")
    plt.title(key)
    plt.xlabel("step")
    drew = False
    for name in (key, COMPANION.get(key)):
        if name is None:
            continue
        s = feed.series(name)
        if not len(s):
            continue
        x, y = downsample_minmax(s.step, s.value, max(10, width))
        if len(x):
            plt.plot(x.tolist(), y.tolist(), label=name, marker="braille")
            drew = True
    spikes = [e.step for e in feed.events_of(*SPIKE_KINDS) if e.step is not None]
    s = feed.series(key)
    if spikes and len(s):
        steps = s.step
        xs, ys = [], []
        for step in spikes:
            i = min(int(steps.searchsorted(step)), len(steps) - 1)
            xs.append(step)
            ys.append(float(s.value[i]))
        plt.scatter(xs, ys, marker="x", color="red", label="spike")
    if not drew:
        return f"(no {key} points yet)"
    return plt.build()


def stats_line(feed: RunFeed) -> Text:
    """Name, status, step, eta, then the newest value of each of the kind's main metrics
    that the run has logged."""
    row = feed.row
    step, total = row.last_step, row.total_steps
    text = Text()
    text.append(f"{row.name} ", style="bold")
    text.append_text(status_text(row.status))
    text.append(f"  step {step if step is not None else '-'}"
                + (f"/{total}" if total else ""))
    if row.is_active:
        text.append(f"  eta {duration(eta(row))}")
    for key in declared(row.kind).main_metrics:
        last = feed.series(key).last()
        if last is not None:
            text.append(f"  {key} ", style="dim")
            text.append(fmt_value(last[1]))
    spikes = len(feed.events_of("loss_spike"))
    if spikes:
        text.append(f"  spikes {spikes}", style="bold yellow")
    return text


def view(feed: RunFeed, width: int, height: int, color: bool, key: str | None = None,
         events: int = 3) -> Group:
    key = key or declared(feed.row.kind).watch_key
    plot = chart(feed, key, width, max(6, height - 3 - events), color)
    parts: list[Any] = [stats_line(feed), Text.from_ansi(plot)]
    parts += [event_line(e) for e in feed.events[-events:]]
    return Group(*parts)


def watch(feed: RunFeed, console: Console, *, key: str | None = None, interval: float = 1.0,
          once: bool = False, timeout: float | None = None) -> str:
    """Show the run until it ends (or once); returns its final status."""
    feed.poll()
    color = console.is_terminal and console.color_system is not None
    width, height = console.size.width, min(console.size.height, 30)
    if once:
        console.print(view(feed, width, height, color, key))
        return feed.row.status
    deadline = None if timeout is None else time.monotonic() + timeout
    if console.is_terminal:
        from rich.live import Live

        with Live(view(feed, width, height, color, key), console=console,
                  refresh_per_second=4, transient=False) as live:
            while feed.row.is_active and not _past(deadline):
                time.sleep(interval)
                width, height = console.size.width, min(console.size.height, 30)
                if feed.poll():
                    live.update(view(feed, width, height, color, key))
        return feed.row.status
    last_step = None
    while True:
        step = feed.row.last_step
        if step != last_step:
            console.print(stats_line(feed))
            last_step = step
        if not feed.row.is_active or _past(deadline):
            break
        time.sleep(interval)
        feed.poll()
    console.print(view(feed, min(width, 100), 20, False, key))
    return feed.row.status


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline

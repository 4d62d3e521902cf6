"""System: the run's CPU, memory and GPUs, as the sampler in workbench/sysmetrics.py
logged them (`sys/...`): the latest values, and charts of them over wall time.

Wall time, not steps, on the x axis: the samples come every few seconds whatever the
step, so a run that sits at step 0 while it loads, or one whose steps slow down, still
draws an honest line. The tab shows once the run has logged system metrics.
"""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from workbench.feed import RunFeed, Series
from workbench.screens.tabs.base import RunTab
from workbench.screens.widgets import LineChart
from workbench.sysmetrics import CPU, MEM, PREFIX, RSS, gpu_key
from workbench.themes import stylesheet

EMPTY = "no system metrics (this run logged none)"
_GPU_RE = re.compile(r"sys/gpu(\d+)/")
GPU_CELL = 26  # columns one GPU takes in the summary: "gpu0 100% 79.2 GiB 85°C"


def gpu_indices(keys: list[str]) -> list[int]:
    """The GPU indices that have `sys/gpu{i}/...` metrics, in order."""
    return sorted({int(m.group(1)) for k in keys if (m := _GPU_RE.match(k))})


def mib(value: float) -> str:
    """812 MiB, 1.21 GiB: short enough for a summary cell."""
    return f"{value:.0f} MiB" if value < 1024 else f"{value / 1024:.3g} GiB"


def summary_text(latest: dict[str, float], step: int | None, width: int) -> Text:
    """The latest sample in a few lines: the process tree, then the GPUs, several a
    line (`width` columns), so eight GPUs still take two or three lines at 80x24."""
    if not latest:
        return Text(EMPTY)
    text = Text(no_wrap=True, overflow="ellipsis")

    def part(label: str, value: str) -> None:
        text.append(f"{label} ")
        text.append(value, style="bold")
        text.append("   ")

    if CPU in latest:
        part("cpu", f"{latest[CPU]:.0f}% ({latest[CPU] / 100:.1f} cores)")
    if RSS in latest:
        part("rss", mib(latest[RSS]))
    if MEM in latest:
        part("machine mem", f"{latest[MEM]:.0f}%")
    if step is not None:
        part("step", str(step))
    text.rstrip()
    gpus = gpu_indices(list(latest))
    per_line = max(1, width // GPU_CELL)
    for n, i in enumerate(gpus):
        if n % per_line == 0 and text.plain:  # a new line (none before the first line)
            text.append("\n")
        cell = Text(f"gpu{i} ")
        for field, fmt in (("util", "{:.0f}%"), ("mem_mib", None), ("temp_c", "{:.0f}°C")):
            value = latest.get(gpu_key(i, field))
            shown = "-" if value is None else (mib(value) if fmt is None else fmt.format(value))
            cell.append(shown, style="bold")
            cell.append(" ")
        cell.truncate(GPU_CELL, pad=True)
        text.append_text(cell)
    return text


class SystemTab(RunTab):
    """Latest values on top; cpu and rss charts; GPU util and memory charts when the run
    has GPUs."""

    TITLE = "System"
    ALWAYS = False
    PREFIXES = (PREFIX,)
    DEFAULT_CSS = stylesheet("system").read_text(encoding="utf-8")

    def compose(self) -> ComposeResult:
        yield Static(EMPTY, id="sys-summary")
        with Horizontal(id="sys-charts", classes="sys-row"):
            yield LineChart(id="sys-cpu")
            yield LineChart(id="sys-rss")
        with Horizontal(id="sys-gpu-charts", classes="sys-row"):
            yield LineChart(id="sys-gpu-util")
            yield LineChart(id="sys-gpu-mem")

    def update_from(self, feed: RunFeed) -> None:
        keys = [k for k in feed.keys() if k.startswith(PREFIX)]
        latest = {k: last[1] for k in keys if (last := feed.series(k).last()) is not None}
        newest = max(keys, key=lambda k: feed.series(k).wall[-1], default=None)
        step = feed.series(newest).last()[0] if newest else None  # type: ignore[index]
        width = self.query_one("#sys-summary", Static).size.width or 80
        self.query_one("#sys-summary", Static).update(summary_text(latest, step, width))
        gpus = gpu_indices(keys)
        self.query_one("#sys-charts").display = bool(keys)
        self.query_one("#sys-gpu-charts").display = bool(gpus)
        if not keys:
            return
        series = {k: feed.series(k) for k in keys}
        t0 = min(float(s.wall[0]) for s in series.values())
        span = max(float(s.wall[-1]) for s in series.values()) - t0
        scale, unit = (1.0, "seconds") if span < 180 else \
            (60.0, "minutes") if span < 3 * 3600 else (3600.0, "hours")

        def draw(chart_id: str, title: str, lines: dict[str, Series], div: float = 1.0) -> None:
            chart = self.query_one(chart_id, LineChart)
            chart.x_label = unit
            # The unit in the title too: at 80x24 a chart is too short for its x label.
            chart.set_title(f"{title} (x: {unit})")
            for name, s in lines.items():
                if len(s):
                    chart.set_series(name, (s.wall - t0) / scale, s.value / div)

        draw("#sys-cpu", "cpu %", {"cpu %": feed.series(CPU)})
        draw("#sys-rss", "rss MiB", {"rss MiB": feed.series(RSS)})
        if gpus:  # GiB: "40" reads at a glance where "40960.0" takes the chart's width
            draw("#sys-gpu-util", "gpu util %",
                 {f"gpu{i}": feed.series(gpu_key(i, "util")) for i in gpus})
            draw("#sys-gpu-mem", "gpu mem GiB",
                 {f"gpu{i}": feed.series(gpu_key(i, "mem_mib")) for i in gpus}, div=1024.0)


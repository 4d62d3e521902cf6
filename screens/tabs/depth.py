"""Depth (recurrent-depth inference): recurrence steps per token, a generated sample
colored by the depth each token took, and accuracy against the recurrence count.

Records it reads (docs/ARCHITECTURE.md names, plus two the depth recipe writes):
- distribution `depth/steps_per_token`; scalar `depth/steps_mean`;
- event `depth_sample` with payload {"tokens": [str, ...], "depths": [int, ...]} and
  optionally "prompt" (text, shown dim: it was prefilled, not decoded);
- scalars `eval/accuracy/r<N>`: accuracy with the recurrence fixed at N steps;
- the depth recipe's evaluation figures, one line above the sample (`FIGURES`):
  adaptive-exit accuracy against the fixed baselines, steps and compute ratios, and
  decoding speed (`depth/decode_tokens_per_s`: `perf/tokens_per_s` is the training
  throughput, on the Overview tab).
"""

from __future__ import annotations

import re

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from workbench.feed import RunFeed
from workbench.screens.tabs.base import RunTab
from workbench.screens.widgets import Histogram, LineChart

ACCURACY_AT = re.compile(r"^eval/accuracy/r(\d+)$")
# (label, key, format) of the figures line; absent keys are left out.
FIGURES = (
    ("accuracy adaptive", "eval/accuracy", "{:.3f}"),
    ("fixed shared", "eval/accuracy_fixed_shared", "{:.3f}"),
    ("fixed full", "eval/accuracy_fixed", "{:.3f}"),
    ("steps ratio", "depth/steps_ratio", "{:.3f}"),
    ("compute ratio", "depth/compute_ratio", "{:.3f}"),
    ("decode tok/s", "depth/decode_tokens_per_s", "{:.0f}"),
    ("fixed", "depth/decode_tokens_per_s_fixed", "{:.0f}"),
)
# Shallow to deep, colorblind-safe (blue -> yellow -> vermillion), 5 bands.
DEPTH_STYLES = ("#0072b2", "#56b4e9", "#009e73", "#e69f00", "#d55e00")


def depth_band(d: int, lo: int, hi: int) -> int:
    """Which of the 5 color bands depth `d` falls in: the hi - lo + 1 possible depths
    split as evenly as integers allow (shallowest band 0)."""
    return (d - lo) * len(DEPTH_STYLES) // (hi - lo + 1)


def depth_text(tokens: list[str], depths: list[int], prompt: str = "") -> Text:
    """The sample with each token colored by its recurrence depth (5 bands), after the
    prompt (dim), and a legend naming the exact depths each band holds ("1-2", "3")."""
    text = Text(prompt, style="dim")
    if not depths:
        return text
    lo, hi = min(depths), max(depths)
    for tok, d in zip(tokens, depths, strict=False):
        text.append(tok, style=DEPTH_STYLES[depth_band(d, lo, hi)])
    text.append("\n\n")
    text.append("depth: ")
    members: dict[int, list[int]] = {}
    for d in range(lo, hi + 1):
        members.setdefault(depth_band(d, lo, hi), []).append(d)
    for band, ds in members.items():
        label = str(ds[0]) if len(ds) == 1 else f"{ds[0]}-{ds[-1]}"
        text.append(f" {label} ", style=f"reverse {DEPTH_STYLES[band]}")
        text.append(" ")
    return text


def accuracy_by_steps(feed: RunFeed) -> tuple[np.ndarray, np.ndarray]:
    """(recurrence counts, latest accuracy at each) from the eval/accuracy/rN keys."""
    points = []
    for key in feed.keys():
        if (m := ACCURACY_AT.match(key)) and (last := feed.series(key).last()):
            points.append((int(m.group(1)), last[1]))
    points.sort()
    return (np.array([p[0] for p in points], dtype=np.float64),
            np.array([p[1] for p in points], dtype=np.float64))


def depth_figures(feed: RunFeed) -> str:
    """The evaluation's headline figures, latest values, on one line ("" before any)."""
    parts = []
    for label, key, fmt in FIGURES:
        if last := feed.series(key).last():
            parts.append(f"{label} {fmt.format(last[1])}")
    return " · ".join(parts)


class DepthTab(RunTab):
    TITLE = "Depth"
    ALWAYS = False  # depth declares it (kinds.py)
    PREFIXES = ("depth/",)

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Histogram(id="steps-hist")
            yield LineChart(id="accuracy")
        with Vertical(id="sample-box"):
            yield Static("", id="depth-figures")
            yield Static("no sample yet", id="sample")

    def update_from(self, feed: RunFeed) -> None:
        if (d := feed.dist("depth/steps_per_token")) is not None:
            self.query_one("#steps-hist", Histogram).set_histogram(
                d.edges, d.counts, title=f"recurrence steps per token, step {d.step}",
                quantiles={"p50": d.p50, "p90": d.p90, "p99": d.p99})
        chart = self.query_one("#accuracy", LineChart)
        chart.set_title("accuracy vs recurrence steps")
        chart.x_label = "recurrence steps"
        x, y = accuracy_by_steps(feed)
        if len(x):
            chart.set_series("accuracy", x, y)
        self.query_one("#depth-figures", Static).update(depth_figures(feed))
        samples = feed.events_of("depth_sample")
        if samples:
            p = samples[-1].payload
            self.query_one("#sample", Static).update(
                depth_text([str(t) for t in p.get("tokens", [])],
                           [int(d) for d in p.get("depths", [])], str(p.get("prompt", ""))))

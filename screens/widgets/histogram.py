"""Histogram: bars from (edges, counts), drawn with Rich, with optional quantile markers.

The store keeps distributions (rollout lengths, staleness, recurrence steps) as
fixed bins plus p50/p90/p99, so this widget takes exactly that. It draws with
Unicode eighth blocks rather than plotext because a histogram pane at 80x24 is
often 30x8 cells: eighth blocks give 8 levels per row, bins are merged to the
width, and the quantiles are marked under the bars where plotext would spend
rows on a frame and a legend. The bins at and beyond p99 take the tail
colour, because the tail is what a rollout histogram is read for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.widget import Widget

from workbench.themes import stylesheet

V_BLOCKS = " ▁▂▃▄▅▆▇█"
H_BLOCKS = " ▏▎▍▌▋▊▉█"


def compact(value: float) -> str:
    """A short number: 1234 -> 1.2k, 0.5 -> 0.5, 12 -> 12 (axis labels in 4-5 cells)."""
    magnitude = abs(value)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if magnitude >= size:
            return f"{value / size:.3g}{unit}"
    if magnitude == 0 or magnitude >= 1:
        return f"{value:.3g}"
    return f"{value:.2g}"


def merge_bins(edges: np.ndarray, counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins into at most `n` (sums of counts; outer edges kept)."""
    if counts.size <= n:
        return edges, counts
    bounds = np.linspace(0, counts.size, n + 1).round().astype(np.int64)
    merged = np.add.reduceat(counts, bounds[:-1])
    return edges[bounds], merged


class Histogram(Widget):
    """Vertical (default) or horizontal bars of a binned distribution."""

    COMPONENT_CLASSES = {
        "histogram--bar",
        "histogram--tail",
        "histogram--marker",
        "histogram--axis",
        "histogram--title",
    }
    DEFAULT_CSS = stylesheet("histogram").read_text(encoding="utf-8")

    orientation: reactive[str] = reactive("vertical")
    """"vertical" (bins along x) or "horizontal" (one row per bin, labelled)."""

    def __init__(
        self,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        disabled: bool = False,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._edges = np.zeros(0)
        self._counts = np.zeros(0)
        self._title = ""
        self._quantiles: dict[str, float] = {}

    @property
    def edges(self) -> np.ndarray:
        return self._edges

    @property
    def counts(self) -> np.ndarray:
        return self._counts

    @property
    def quantiles(self) -> dict[str, float]:
        return dict(self._quantiles)

    def set_histogram(self, edges: Sequence[float] | np.ndarray,
                      counts: Sequence[float] | np.ndarray, title: str = "",
                      quantiles: Mapping[str, float | None] | None = None) -> None:
        """Show bins [edges[i], edges[i+1]) holding counts[i].

        `quantiles` (e.g. {"p50": 12, "p90": 40, "p99": 95}) are marked under
        the bars; None values are skipped. Unchanged data draws nothing.
        """
        e = np.asarray(edges, dtype=np.float64).reshape(-1)
        c = np.asarray(counts, dtype=np.float64).reshape(-1)
        if c.size and e.size != c.size + 1:
            raise ValueError(f"{c.size} counts need {c.size + 1} edges, got {e.size}")
        q = {k: float(v) for k, v in (quantiles or {}).items()
             if v is not None and np.isfinite(v)}
        if (e.shape == self._edges.shape and np.array_equal(e, self._edges)
                and c.shape == self._counts.shape and np.array_equal(c, self._counts)
                and title == self._title and q == self._quantiles):
            return
        self._edges, self._counts, self._title, self._quantiles = e, c, title, q
        self.refresh()

    # -- drawing -------------------------------------------------------------------------

    def _tail_start(self) -> float | None:
        """Where the tail colour starts: p99 if given, else the largest quantile."""
        if "p99" in self._quantiles:
            return self._quantiles["p99"]
        return max(self._quantiles.values()) if self._quantiles else None

    def render(self) -> RenderResult:
        width, height = self.size.width, self.size.height
        text = Text(no_wrap=True, end="")
        if width <= 0 or height <= 0:
            return text
        show_title = bool(self._title) and height >= 4
        if show_title:
            text.append(self._title[:width].center(width).rstrip(),
                        self.get_component_rich_style("histogram--title"))
            height -= 1
        counts = self._counts
        if counts.size == 0 or not np.isfinite(counts).any() or np.nansum(counts) <= 0:
            if show_title:
                text.append("\n")
            text.append("no data", self.get_component_rich_style("histogram--axis"))
            return text
        body = (self._vertical(width, height) if self.orientation == "vertical"
                else self._horizontal(width, height))
        if show_title:
            text.append("\n")
        text.append_text(body)
        return text

    def _bin_style_names(self, lo: np.ndarray, hi: np.ndarray) -> list[str]:
        """Per shown bin: marker (holds a quantile), tail (beyond p99) or bar."""
        tail = self._tail_start()
        names = []
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            if any(a <= q < b or (q == b == hi[-1]) for q in self._quantiles.values()):
                names.append("histogram--marker")
            elif tail is not None and a >= tail:
                names.append("histogram--tail")
            else:
                names.append("histogram--bar")
        return names

    def _vertical(self, width: int, height: int) -> Text:
        """Columns of eighth blocks; y labels left; x range and quantiles below."""
        peak = float(np.nanmax(self._counts))
        y_label_w = max(len(compact(peak)), 1) + 1
        marker_row = bool(self._quantiles) and height >= 4
        bar_rows = max(1, height - 1 - int(marker_row))
        plot_w = max(1, width - y_label_w)
        edges, counts = merge_bins(self._edges, np.nan_to_num(self._counts), plot_w)
        bar_w = max(1, plot_w // counts.size)
        names = self._bin_style_names(edges[:-1], edges[1:])
        styles = {n: self.get_component_rich_style(n) for n in set(names)}
        axis = self.get_component_rich_style("histogram--axis")
        eighths = np.round(counts / peak * bar_rows * 8).astype(np.int64) if peak > 0 else \
            np.zeros(counts.size, dtype=np.int64)
        # A non-empty bin shows at least a sliver: one rollout of length 4096
        # is exactly what the tail view must not hide.
        eighths[(counts > 0) & (eighths == 0)] = 1
        text = Text(no_wrap=True, end="")
        for r in range(bar_rows):
            level = (bar_rows - 1 - r) * 8  # eighths below this row
            label = compact(peak) if r == 0 else ("0" if r == bar_rows - 1 else "")
            text.append(label.rjust(y_label_w - 1) + "▕", axis)
            for i, e8 in enumerate(eighths.tolist()):
                fill = min(max(e8 - level, 0), 8)
                text.append(V_BLOCKS[fill] * bar_w, styles[names[i]])
            text.append("\n")
        # x axis: first and last edge (and the middle one when there is room).
        span = bar_w * counts.size
        lo, hi = compact(edges[0]), compact(edges[-1])
        axis_line = [" "] * span
        axis_line[: len(lo)] = lo[:span]
        if span > len(lo) + len(hi) + 1:
            axis_line[span - len(hi):] = hi
        mid = compact(edges[len(edges) // 2])
        centre = span // 2 - len(mid) // 2
        if span >= len(lo) + len(mid) + len(hi) + 4 and centre > len(lo) + 1:
            axis_line[centre:centre + len(mid)] = mid
        text.append(" " * y_label_w + "".join(axis_line).rstrip(), axis)
        if marker_row:
            text.append("\n")
            text.append(" " * y_label_w)
            text.append_text(self._marker_line(edges, bar_w, width - y_label_w))
        return text

    def _column_of(self, value: float, edges: np.ndarray, bar_w: int) -> int:
        """The text column (from the plot's left) of the bin holding `value`."""
        i = int(np.searchsorted(edges, value, side="right")) - 1
        i = min(max(i, 0), edges.size - 2)
        return i * bar_w + bar_w // 2

    def _marker_line(self, edges: np.ndarray, bar_w: int, width: int) -> Text:
        """"▲p50" under each quantile's bin ("p99▲" when it would run off the right).

        Labels never overlap: one that would collide with its left neighbour
        is reduced to its "▲", so every quantile keeps its position marked.
        """
        style = self.get_component_rich_style("histogram--marker")
        placed = sorted((self._column_of(v, edges, bar_w), k) for k, v in self._quantiles.items())
        line = [" "] * max(width, 1)
        free = 0  # first column not yet written
        for col, key in placed:
            if col >= len(line):
                continue
            label, start = "▲" + key, col
            if start + len(label) > len(line):
                label, start = key + "▲", col - len(key)
            if start < free:
                label, start = "▲", col
            if start < free:
                continue
            for k, ch in enumerate(label):
                line[start + k] = ch
            free = start + len(label) + 1
        return Text("".join(line).rstrip(), style)

    def _horizontal(self, width: int, height: int) -> Text:
        """One row per (merged) bin: "[lo, hi) ████▌ count ◀p90"."""
        edges, counts = merge_bins(self._edges, np.nan_to_num(self._counts), max(1, height))
        names = self._bin_style_names(edges[:-1], edges[1:])
        axis = self.get_component_rich_style("histogram--axis")
        marker = self.get_component_rich_style("histogram--marker")
        labels = [f"{compact(a)}-{compact(b)}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
        label_w = max(len(s) for s in labels) + 1
        count_w = max(len(compact(c)) for c in counts) + 1
        q_w = max((len(k) + 2 for k in self._quantiles), default=0)
        bar_w = max(1, width - label_w - count_w - q_w)
        peak = float(counts.max()) or 1.0
        text = Text(no_wrap=True, end="")
        for i, c in enumerate(counts.tolist()):
            if i:
                text.append("\n")
            text.append(labels[i].rjust(label_w - 1) + "▕", axis)
            e8 = int(round(c / peak * bar_w * 8))
            if c > 0 and e8 == 0:
                e8 = 1
            full, part = divmod(e8, 8)
            bar = "█" * full + (H_BLOCKS[part] if part else "")
            text.append(bar.ljust(bar_w), self.get_component_rich_style(names[i]))
            text.append(compact(c).rjust(count_w), axis)
            keys = [k for k, v in self._quantiles.items()
                    if edges[i] <= v < edges[i + 1] or (i == counts.size - 1 and v == edges[-1])]
            if keys:
                text.append(" ◀" + keys[-1], marker)
        return text

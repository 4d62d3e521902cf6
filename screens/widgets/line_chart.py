"""LineChart: named series on a textual-plotext plot, with event markers and a threshold.

Why a wrapper over PlotextPlot rather than plotext calls in each screen:

- Long series are reduced with `downsample_minmax` to about two points per
  braille dot column before plotext sees them, so a 1,000,000-step run draws
  in milliseconds and a one-step loss spike still reaches the line.
- The plotext figure is rebuilt only when something it shows changed (data,
  size, theme, toggles). A screen polling twice a second can call
  `set_series` with the same arrays every time at the cost of one array
  comparison, not a redraw.
- Colours come from the active Textual theme through component classes
  styled in `workbench.themes/line_chart.tcss`, so a theme switch re-colours
  the chart like every other widget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from rich.text import Text
from textual.app import RenderResult
from textual.color import Color
from textual.reactive import reactive
from textual_plotext import PlotextPlot

from workbench.screens.widgets.ansi import AnsiLines
from workbench.series import downsample_minmax, ema
from workbench.themes import stylesheet

RGB = tuple[int, int, int]

SERIES_CLASSES = tuple(f"linechart--series-{i}" for i in range(1, 7))
MARKER_CLASSES = tuple(f"linechart--marker-{i}" for i in range(1, 4))
# Marker glyphs per marker group: plain ASCII, so they read in any terminal
# font and stay distinct without colour (colour-blind users, 16-colour SSH).
MARKER_GLYPHS = ("x", "+", "o")
# The fraction of a series' points that one smoothing "window" spans. A fixed
# per-point alpha would smooth a 100-step run into a flat line and leave a
# 1,000,000-step run untouched; tying it to the length makes the toggle look
# the same on both.
SMOOTH_FRACTION = 0.02
# Below this height the x label row is dropped: at 80x24 a chart pane has
# ~8-10 rows and the plot itself needs them more than a label the ticks imply.
XLABEL_MIN_HEIGHT = 14


def nice_ticks(lo: float, hi: float, count: int) -> tuple[np.ndarray, float]:
    """About `count` ticks on 1-2-2.5-5 x 10^k steps inside [lo, hi], and the step.

    plotext spaces ticks evenly between the data's min and max, which labels a
    step axis "499.8, 999.5"; round steps read at a glance.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.zeros(0), 0.0
    raw = (hi - lo) / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = np.arange(first, hi + step * 1e-9, step)
    ticks[np.abs(ticks) < step * 1e-9] = 0.0  # no "-0"
    return ticks, step


def tick_labels(ticks: np.ndarray, step: float) -> list[str]:
    """Short labels with just the decimals the step needs: 250k, 1.5M, 0.25, 2e-4.

    Tick labels take columns from the plot, which at 80x24 is ~25 columns wide.
    """
    biggest = float(np.abs(ticks).max()) if ticks.size else 0.0
    unit, div = next(((u, d) for u, d, at in (("G", 1e9, 1e9), ("M", 1e6, 1e6), ("k", 1e3, 1e4))
                      if biggest >= at), ("", 1.0))
    if 0 < biggest < 0.01:  # learning rates: 2e-4, not 0.0002
        exponent = math.floor(math.log10(biggest))
        unit, div = f"e{exponent}", 10.0**exponent
    scaled = step / div
    decimals = 0
    while decimals < 6 and abs(round(scaled, decimals) - scaled) > scaled * 1e-6:
        decimals += 1
    labels = []
    for t in ticks.tolist():
        number = f"{t / div:.{decimals}f}"
        if "." in number:
            number = number.rstrip("0").rstrip(".")
        labels.append(f"{number}{unit}" if t else "0")
    return labels


def log_ticks(lo: float, hi: float, count: int) -> tuple[np.ndarray, list[str]]:
    """Decade ticks (1e-3, 0.01, 0.1, 1, 10 ...) in [lo, hi] on a log axis, thinned to ~count."""
    if not (lo > 0 and math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.zeros(0), []
    first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    if last < first:  # less than a decade: linear ticks read fine on it
        ticks, step = nice_ticks(lo, hi, count)
        return ticks, tick_labels(ticks, step)
    stride = max(1, math.ceil((last - first + 1) / max(count, 1)))
    exponents = list(range(first, last + 1, stride))
    labels = [f"{10.0**k:g}" if -2 <= k <= 3 else f"1e{k}" for k in exponents]
    return np.array([10.0**k for k in exponents]), labels


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of two float64 arrays: NaN-safe and 20x faster than equal_nan."""
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def smoothed(x: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """The EMA curve of (x, y), SMOOTH_FRACTION of the points wide, for drawing.

    An EMA this wide is a low-pass filter far coarser than a bucket of
    n / (8 * buckets) points, so long series are first averaged into
    8 * buckets bins and the EMA runs on those, with alpha compounded over a
    bin. The drawn curve is the same; a 1,000,000-point series costs a few
    milliseconds instead of ~50.
    """
    n = y.size
    alpha = min(1.0, 2.0 / (max(1.0, SMOOTH_FRACTION * n) + 1.0))
    bins = 8 * buckets
    if n <= 2 * bins:
        return x, ema(y, alpha)
    starts = (np.arange(bins, dtype=np.int64) * n) // bins
    sizes = np.diff(np.append(starts, n)).astype(np.float64)
    mx = np.add.reduceat(x, starts) / sizes
    my = np.add.reduceat(y, starts) / sizes
    return mx, ema(my, 1.0 - (1.0 - alpha) ** (n / bins))


def _as_float(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return _bits_equal(a, b)


class LineChart(PlotextPlot):
    """A live line chart of any number of named series.

    - `set_series(name, x, y)` adds or replaces one series (NaN points are
      skipped; each is downsampled with min/max buckets to ~2x the width).
    - `set_markers(xs, label="spike")` marks events; each label is its own
      group (spike, rollback, skip...), drawn as labelled points on the first
      series (or as vertical lines when there is none). Empty xs removes the group.
    - `set_hline(y, label="tau")` draws a labelled threshold; None removes it.
    - `smooth` (debiased EMA; the raw line stays, dimmed, so spikes remain
      visible) and `log_y` are reactives; `x_label` names the x axis.
    """

    COMPONENT_CLASSES = {*SERIES_CLASSES, *MARKER_CLASSES, "linechart--hline", "linechart--axes"}
    DEFAULT_CSS = stylesheet("line_chart").read_text(encoding="utf-8")

    smooth: reactive[bool] = reactive(False)
    """Draw a debiased EMA of each series over its dimmed raw line."""
    log_y: reactive[bool] = reactive(False)
    """Logarithmic y axis (points <= 0 are not drawn)."""
    x_label: reactive[str] = reactive("step")
    """Label of the x axis (shown when the chart is tall enough)."""

    def __init__(
        self,
        title: str = "",
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        disabled: bool = False,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._title = title
        self.empty_text = "no data yet"
        self._legend: list[tuple[str, str, RGB]] = []  # (glyph, name, colour) per entry
        """What an empty chart says (a panel of a feature the run does not use says so)."""
        self._series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._markers: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._hline: tuple[float, str] | None = None
        # What the cached figure shows; compared against the above to decide
        # whether a rebuild is needed.
        self._drawn_series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._drawn_markers: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._drawn_key: tuple[Any, ...] | None = None
        self._cache: Text | AnsiLines | None = None
        self._y_range = [math.inf, -math.inf]
        self._check_pending = False
        self.build_count = 0
        """How many times the plotext figure was rebuilt (for tests and benches)."""
        self.drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        """The points the last build handed plotext, per series (after cleaning,
        smoothing and downsampling)."""

    # -- data ----------------------------------------------------------------------------

    def set_series(self, name: str, x: Sequence[float] | np.ndarray,
                   y: Sequence[float] | np.ndarray) -> None:
        """Add or replace the series `name` (x and y of one length; NaN/inf skipped)."""
        xs, ys = _as_float(x), _as_float(y)
        if xs.shape != ys.shape:
            raise ValueError(f"series {name!r}: x has {xs.size} points, y has {ys.size}")
        self._series[name] = (xs, ys)
        self._request_check()

    def clear_series(self) -> None:
        """Remove every series (markers and the hline stay: they are set separately)."""
        self._series.clear()
        self._request_check()

    def set_markers(self, xs: Iterable[float] | np.ndarray, label: str = "spike",
                    ys: Iterable[float] | np.ndarray | None = None) -> None:
        """Mark events at x positions; one group per `label`, replaced on each call.

        `ys`, when given, places the points; otherwise they sit on the first
        series (its value at each x), which is where a loss spike is.
        An empty `xs` removes the group.
        """
        mx = _as_float(list(xs) if not isinstance(xs, np.ndarray) else xs)
        if mx.size == 0:
            self._markers.pop(label, None)
        else:
            my = None
            if ys is not None:
                my = _as_float(list(ys) if not isinstance(ys, np.ndarray) else ys)
                if my.shape != mx.shape:
                    raise ValueError(f"markers {label!r}: {mx.size} xs but {my.size} ys")
            self._markers[label] = (mx, my)
        self._request_check()

    def clear_markers(self) -> None:
        """Remove every marker group."""
        self._markers.clear()
        self._request_check()

    def set_hline(self, y: float | None, label: str = "tau") -> None:
        """Draw a horizontal threshold line at `y` (None removes it)."""
        self._hline = None if y is None else (float(y), label)
        self._request_check()

    def set_title(self, title: str) -> None:
        """Title shown above the plot."""
        self._title = title
        self._request_check()

    @property
    def title(self) -> str:
        return self._title

    @property
    def series_names(self) -> list[str]:
        return list(self._series)

    def points(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of a series as set (before downsampling); KeyError if absent."""
        return self._series[name]

    @property
    def marker_groups(self) -> dict[str, np.ndarray]:
        """Marker xs per label."""
        return {label: xs for label, (xs, _) in self._markers.items()}

    # -- change detection ----------------------------------------------------------------

    def _request_check(self) -> None:
        """Refresh once after the caller's batch of setters, and only if something changed.

        Screens typically clear and re-set every series on each poll; deferring
        the comparison to one callback makes that batch cost one comparison.
        """
        if not self.is_mounted or self._check_pending:
            return
        self._check_pending = True
        self.call_later(self._check)

    def _check(self) -> None:
        self._check_pending = False
        if self._stale():
            self.refresh()

    def _key(self) -> tuple[Any, ...]:
        """Everything besides the arrays that changes the figure.

        The resolved colours are part of it (not the theme name): a theme
        switch, or a screen's tcss restyling the chart, changes them, while
        hover or focus changes do not and cost no rebuild.
        """
        palette = tuple(self._rgb(c) for c in sorted(self.COMPONENT_CLASSES))
        return (self.size.width, self.size.height, palette, self.background_colors[1].rgb,
                self.smooth, self.log_y, self.x_label, self._title, self._hline)

    def _stale(self) -> bool:
        if self._cache is None or self._drawn_key != self._key():
            return True
        if list(self._series) != list(self._drawn_series):
            return True
        if list(self._markers) != list(self._drawn_markers):
            return True
        for name, (x, y) in self._series.items():
            dx, dy = self._drawn_series[name]
            if not (_same(x, dx) and _same(y, dy)):
                return True
        for label, (mx, my) in self._markers.items():
            dx, dy = self._drawn_markers[label]
            if not (_same(mx, dx) and _same(my, dy)):
                return True
        return False

    # -- drawing -------------------------------------------------------------------------

    def render(self) -> RenderResult:
        """The cached figure, rebuilt first if its data, size or theme changed."""
        if self.size.width <= 0 or self.size.height <= 0:
            return Text()
        if self._stale():
            self._cache = self._build()
            self._drawn_key = self._key()
            self._drawn_series = {n: (x.copy(), y.copy()) for n, (x, y) in self._series.items()}
            self._drawn_markers = {k: (x.copy(), None if y is None else y.copy())
                                   for k, (x, y) in self._markers.items()}
        assert self._cache is not None
        return self._cache

    def _rgb(self, component: str) -> RGB:
        color = self.get_component_rich_style(component).color
        if color is None:
            return self._fg()
        triplet = color.get_truecolor()
        return (triplet.red, triplet.green, triplet.blue)

    def _fg(self) -> RGB:
        return self.styles.color.rgb

    def _dim(self, rgb: RGB) -> RGB:
        """The colour of a raw line under its smoothed one: blended towards the background."""
        background = self.background_colors[1]
        return Color(*rgb).blend(background, 0.6).rgb

    def _clean(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points plotext can draw: finite, and positive on a log axis."""
        keep = np.isfinite(x) & np.isfinite(y)
        if self.log_y:
            keep &= y > 0
        if keep.all():
            return x, y
        return x[keep], y[keep]

    def _empty(self, width: int, height: int) -> Text:
        """Title and "no data yet", centred: an empty plotext frame reads as a broken chart."""
        muted = self.get_component_rich_style("linechart--axes")
        text = Text(no_wrap=True, end="")
        top = max(0, height // 2 - 1)
        text.append("\n" * top)
        if self._title:
            text.append(self._title[:width].center(width).rstrip() + "\n")
        text.append(self.empty_text[:width].center(width).rstrip(), muted)
        return text

    def _build(self) -> Text | AnsiLines:
        width, height = self.size.width, self.size.height
        has_data = any(np.isfinite(y).any() for _, y in self._series.values())
        if not has_data and not self._markers:
            self.drawn = {}
            self.build_count += 1
            return self._empty(width, height)
        plt = self.plt
        plt.clear_figure()
        # The legend goes on its own row under the plot: drawn inside it (plotext's
        # way) it covered the first points of every curve at 80x24.
        self._legend = []
        labelled = len(self._series) > 1 or self._hline is not None or bool(self._markers)
        legend_row = labelled and height >= 6
        plot_height = height - 1 if legend_row else height
        plt.plotsize(width, plot_height)
        plt._set_size(width, plot_height)  # see PlotextPlot.render: resizes must stick
        plt.canvas_color("default")  # the widget's own (tcss) background shows through
        plt.axes_color("default")
        plt.ticks_color(self._rgb("linechart--axes"))
        buckets = max(8, 2 * width)
        drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        base: tuple[np.ndarray, np.ndarray] | None = None
        x_lo, x_hi = math.inf, -math.inf
        self._y_range = [math.inf, -math.inf]
        for i, (name, (x, y)) in enumerate(self._series.items()):
            x, y = self._clean(x, y)
            if x.size == 0:
                continue
            if base is None:
                base = (x, y)
            x_lo, x_hi = min(x_lo, float(x.min())), max(x_hi, float(x.max()))
            color = self._rgb(SERIES_CLASSES[i % len(SERIES_CLASSES)])
            if self.smooth and x.size > 2:
                rx, ry = downsample_minmax(x, y, buckets)
                plt.plot(rx.tolist(), ry.tolist(), marker="braille", color=self._dim(color))
                x, y = downsample_minmax(*smoothed(x, y, buckets), buckets)
            else:
                x, y = downsample_minmax(x, y, buckets)
            plt.plot(x.tolist(), y.tolist(), marker="braille", color=color)
            if labelled:
                self._legend.append(("⣿", name, color))
            self._extend_y(y)
            drawn[name] = (x, y)
        self._draw_hline(x_lo, x_hi)
        self._draw_markers(base)
        title = self._title
        if base is None and self._markers:
            # Markers drawn as bare vertical lines have no legend: name them in
            # the title, and pad the x range so no line sits on the frame.
            groups = ", ".join(f"{k} x{v[0].size}" for k, v in self._markers.items())
            title = f"{title} ({groups})" if title else groups
            xs = np.concatenate([v[0] for v in self._markers.values()])
            xs = xs[np.isfinite(xs)]
            if xs.size:
                pad = max(1.0, 0.05 * float(xs.max() - xs.min()))
                x_lo, x_hi = float(xs.min()) - pad, float(xs.max()) + pad
                plt.xlim(x_lo, x_hi)
        ticks, step = nice_ticks(x_lo, x_hi, max(2, (width - 8) // 14))
        if ticks.size:
            plt.xticks(ticks.tolist(), tick_labels(ticks, step))
        y_count = max(2, (height - 4) // 2)
        if self.log_y:
            plt.yscale("log")
            yt, labels = log_ticks(*self._y_range, y_count)
        else:
            yt, step = nice_ticks(*self._y_range, y_count)
            labels = tick_labels(yt, step)
        if yt.size:
            plt.yticks(yt.tolist(), labels)
        if title:
            plt.title(title)
        if self.x_label and height >= XLABEL_MIN_HEIGHT:
            plt.xlabel(self.x_label)
        self.drawn = drawn
        self.build_count += 1
        out = plt.build()
        if legend_row:
            out = out.rstrip("\n") + "\n" + self._legend_line(width)
        return AnsiLines(out)  # 10x faster than Text.from_ansi (see ansi.py)

    def _legend_line(self, width: int) -> str:
        """One row of coloured `glyph name` entries, cut to the width."""
        parts, used = [], 1
        for glyph, name, (r, g, b) in self._legend:
            entry = f"{glyph} {name}"
            if used + len(entry) > width:
                break
            parts.append(f"\x1b[38;2;{r};{g};{b}m{entry}\x1b[0m")
            used += len(entry) + 2
        return " " + "  ".join(parts)

    def _extend_y(self, y: np.ndarray) -> None:
        """Track the y range plotext will use, for the tick positions."""
        if y.size:
            self._y_range = [min(self._y_range[0], float(y.min())),
                             max(self._y_range[1], float(y.max()))]

    def _draw_hline(self, x_lo: float, x_hi: float) -> None:
        if self._hline is None:
            return
        y, label = self._hline
        if self.log_y and y <= 0:
            return
        color = self._rgb("linechart--hline")
        if x_lo < x_hi:
            # A two-point line rather than plotext's horizontal_line, which
            # takes no label: the legend then says what the line is.
            self.plt.plot([x_lo, x_hi], [y, y], marker="─", color=color)
            self._legend.append(("─", f"{label} {y:g}", color))
            self._extend_y(np.array([y]))
        else:
            self.plt.horizontal_line(y, color=color)

    def _draw_markers(self, base: tuple[np.ndarray, np.ndarray] | None) -> None:
        monotonic = base is not None and bool(np.all(np.diff(base[0]) >= 0))
        for k, (label, (mx, my)) in enumerate(self._markers.items()):
            color = self._rgb(MARKER_CLASSES[k % len(MARKER_CLASSES)])
            xs = mx[np.isfinite(mx)]
            if my is not None:
                ys = my[np.isfinite(mx)]
            elif base is not None and monotonic:
                ys = np.interp(xs, base[0], base[1])
            else:
                # Nowhere to put the points: full-height lines at each x.
                for x in xs[:64].tolist():
                    self.plt.vertical_line(x, color=color)
                continue
            keep = np.isfinite(ys) & (ys > 0 if self.log_y else True)
            if keep.any():
                self._extend_y(ys[keep])
                self.plt.scatter(
                    xs[keep].tolist(), ys[keep].tolist(),
                    marker=MARKER_GLYPHS[k % len(MARKER_GLYPHS)], color=color,
                )
                self._legend.append((MARKER_GLYPHS[k % len(MARKER_GLYPHS)],
                                     f"{label} ({int(xs.size)})", color))

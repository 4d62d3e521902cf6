"""Heatmap: a matrix (layers x heads) coloured against a threshold, with a keyboard cursor.

Built for QK-Clip: the max attention logit of every head, where what matters is
how close each head is to tau. So colours scale with value / tau (not with the
matrix's own min and max, which would make a calm matrix look alarming), and
every cell at or over tau takes the theme's error colour plus bold text, or a
"!" when the value does not fit: the alarm never rests on colour alone.
Without tau the scale runs from 0 to the matrix maximum and nothing alarms.

The cursor (arrow keys, or a click) names the focused cell in the border
subtitle as "layer L head H: value", because at 80 columns a 32-head row
leaves two characters per cell, too few to print values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import RenderResult
from textual.binding import Binding, BindingType
from textual.color import Color
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from workbench.themes import stylesheet

MAX_CELL_WIDTH = 7
"""Widest a cell gets: enough for " 123.4 " and a gap; wider cells only spread the map."""


def format_value(value: float, width: int) -> str:
    """The value in at most `width` characters ("" if it cannot fit).

    Tries one decimal, then none, then a k/M suffix, so a cell shows the most
    precise form its width allows.
    """
    if width <= 0:
        return ""
    if math.isnan(value):
        return "nan"[:width] if width >= 3 else ""
    candidates = [f"{value:.1f}", f"{value:.0f}"]
    magnitude = abs(value)
    if magnitude >= 1e6:
        candidates.append(f"{value / 1e6:.0f}M")
    elif magnitude >= 1e3:
        candidates.append(f"{value / 1e3:.0f}k")
    for text in candidates:
        if len(text) <= width:
            return text
    return ""


class Heatmap(Widget, can_focus=True):
    """A matrix of coloured cells with a cursor; see the module docstring for why so."""

    BINDINGS: list[BindingType] = [
        Binding("up", "move(-1, 0)", "Up", show=False),
        Binding("down", "move(1, 0)", "Down", show=False),
        Binding("left", "move(0, -1)", "Left", show=False),
        Binding("right", "move(0, 1)", "Right", show=False),
        Binding("home", "jump('first')", "First head", show=False),
        Binding("end", "jump('last')", "Last head", show=False),
        Binding("m", "jump('max')", "Max cell", show=False),
    ]

    COMPONENT_CLASSES = {
        "heatmap--low",
        "heatmap--mid",
        "heatmap--high",
        "heatmap--alarm",
        "heatmap--nan",
        "heatmap--cursor",
        "heatmap--label",
    }
    DEFAULT_CSS = stylesheet("heatmap").read_text(encoding="utf-8")

    cursor: reactive[tuple[int, int]] = reactive((0, 0))
    """The focused cell (row, col)."""

    class CellFocused(Message):
        """The cursor moved to a cell (keys or mouse)."""

        def __init__(self, heatmap: Heatmap, row: int, col: int, value: float) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.row = row
            self.col = col
            self.value = value

        @property
        def control(self) -> Heatmap:
            return self.heatmap

    def __init__(
        self,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        disabled: bool = False,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._matrix = np.zeros((0, 0))
        self._tau: float | None = None
        self._scale: float | None = None
        self.row_label = "layer"
        self.col_label = "head"
        self._top = 0  # first row shown, when the matrix is taller than the widget
        self._left = 0  # first column shown, when wider

    # -- data ----------------------------------------------------------------------------

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix

    @property
    def tau(self) -> float | None:
        return self._tau

    def set_matrix(self, m: np.ndarray, tau: float | None, row_label: str = "layer",
                   col_label: str = "head") -> None:
        """Show matrix `m` (2-D; a vector is one row), coloured against `tau`.

        Nothing is redrawn when the matrix, tau and labels are unchanged, so a
        screen may call this on every poll.
        """
        matrix = np.asarray(m, dtype=np.float64)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2:
            raise ValueError(f"a heatmap needs a 2-D matrix, got shape {matrix.shape}")
        tau = None if tau is None else float(tau)
        if (matrix.shape == self._matrix.shape
                and np.array_equal(matrix, self._matrix, equal_nan=True)
                and tau == self._tau and (row_label, col_label) == (self.row_label,
                                                                    self.col_label)):
            return
        self._matrix = matrix.copy()
        self._tau = tau
        self._scale = self._compute_scale()  # once per matrix, not once per cell
        self.row_label, self.col_label = row_label, col_label
        rows, cols = matrix.shape
        row, col = self.cursor
        self.cursor = (min(row, max(rows - 1, 0)), min(col, max(cols - 1, 0)))
        self._update_subtitle()
        self.refresh(layout=True)

    def value_at(self, row: int, col: int) -> float:
        """The value of a cell (NaN outside the matrix)."""
        rows, cols = self._matrix.shape
        if 0 <= row < rows and 0 <= col < cols:
            return float(self._matrix[row, col])
        return math.nan

    @property
    def scale(self) -> float | None:
        """What a ratio of 1 means: tau, else the finite maximum (None when nothing is positive)."""
        return self._scale

    def _compute_scale(self) -> float | None:
        if self._tau is not None and self._tau > 0:
            return self._tau
        finite = self._matrix[np.isfinite(self._matrix)]
        if finite.size == 0 or finite.max() <= 0:
            return None
        return float(finite.max())

    def is_alarm(self, value: float) -> bool:
        """A value at or over tau (never without tau)."""
        return self._tau is not None and not math.isnan(value) and value >= self._tau

    # -- cursor --------------------------------------------------------------------------

    def action_move(self, d_row: int, d_col: int) -> None:
        rows, cols = self._matrix.shape
        if rows == 0 or cols == 0:
            return
        row, col = self.cursor
        self.cursor = (min(max(row + d_row, 0), rows - 1), min(max(col + d_col, 0), cols - 1))

    def action_jump(self, where: str) -> None:
        """first / last column of the row, or the cell holding the maximum."""
        rows, cols = self._matrix.shape
        if rows == 0 or cols == 0:
            return
        row, _ = self.cursor
        if where == "first":
            self.cursor = (row, 0)
        elif where == "last":
            self.cursor = (row, cols - 1)
        elif where == "max" and np.isfinite(self._matrix).any():
            flat = int(np.nanargmax(np.where(np.isfinite(self._matrix), self._matrix, -np.inf)))
            self.cursor = divmod(flat, cols)

    def watch_cursor(self, old: tuple[int, int], new: tuple[int, int]) -> None:
        self._update_subtitle()
        if old != new and self._matrix.size:
            self.post_message(self.CellFocused(self, new[0], new[1], self.value_at(*new)))

    def _update_subtitle(self) -> None:
        if self._matrix.size == 0:
            self.border_subtitle = ""
            return
        row, col = self.cursor
        value = self.value_at(row, col)
        text = f"{self.row_label} {row} {self.col_label} {col}: {value:.4g}"
        if self._tau is not None and self._tau > 0 and not math.isnan(value):
            text += f" ({value / self._tau:.2f} tau)"
        self.border_subtitle = text

    def on_click(self, event: events.Click) -> None:
        layout = self._layout()
        if layout is None:
            return
        offset = event.get_content_offset(self)
        if offset is None:
            return
        label_w, cell_w, _, _ = layout
        row = offset.y - 1 + self._top
        col = (offset.x - label_w) // cell_w + self._left if offset.x >= label_w else -1
        rows, cols = self._matrix.shape
        if 0 <= row < rows and 0 <= col < cols:
            self.focus()
            self.cursor = (row, col)

    # -- drawing -------------------------------------------------------------------------

    def _layout(self) -> tuple[int, int, int, int] | None:
        """(label width, cell width, rows shown, cols shown) for the current size."""
        rows, cols = self._matrix.shape
        width, height = self.size.width, self.size.height
        if rows == 0 or cols == 0 or width <= 0:
            return None
        label_w = len(f"{self.row_label[:1].upper()}{rows - 1}") + 1
        cell_w = max(1, min(MAX_CELL_WIDTH, (width - label_w) // cols))
        shown_cols = max(1, min(cols, (width - label_w) // cell_w))
        shown_rows = max(1, min(rows, height - 1)) if height > 1 else rows
        return label_w, cell_w, shown_rows, shown_cols

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        """One line per matrix row plus the column header (for `height: auto`)."""
        return self._matrix.shape[0] + 1 if self._matrix.size else 1

    def _scroll_to_cursor(self, shown_rows: int, shown_cols: int) -> None:
        row, col = self.cursor
        rows, cols = self._matrix.shape
        self._top = min(max(self._top, row - shown_rows + 1), row, max(rows - shown_rows, 0))
        self._left = min(max(self._left, col - shown_cols + 1), col, max(cols - shown_cols, 0))

    def cell_style(self, row: int, col: int) -> Style:
        """The Rich style of one cell (colour from value / scale; alarm at >= tau)."""
        value = self.value_at(row, col)
        if math.isnan(value) or math.isinf(value) and value < 0:
            return self.get_component_rich_style("heatmap--nan")
        if self.is_alarm(value):
            alarm = self.get_component_rich_style("heatmap--alarm")
            background = Color.from_rich_color(alarm.bgcolor) if alarm.bgcolor else None
            if background is not None and alarm.color is None:
                alarm += Style(color=background.get_contrast_text(1.0).rich_color)
            return alarm
        scale = self.scale
        ratio = 0.0 if scale is None else min(max(value / scale, 0.0), 1.0)
        background = self._ramp(ratio)
        return Style(bgcolor=background.rich_color,
                     color=background.get_contrast_text(1.0).rich_color)

    def _ramp(self, ratio: float) -> Color:
        """Three-stop colour ramp low -> mid -> high (the tcss component backgrounds)."""
        stops = [self._background_of(n) for n in ("heatmap--low", "heatmap--mid", "heatmap--high")]
        if ratio <= 0.5:
            return stops[0].blend(stops[1], ratio * 2)
        return stops[1].blend(stops[2], (ratio - 0.5) * 2)

    def _background_of(self, component: str) -> Color:
        style = self.get_component_rich_style(component)
        if style.bgcolor is None:
            return self.background_colors[1]
        return Color.from_rich_color(style.bgcolor)

    def _header(self, cell_w: int, shown_cols: int) -> str:
        """Column indices over every cell when they fit, else every 2nd/4th/8th... column."""
        widest = len(str(self._left + shown_cols - 1))
        stride = 1
        while stride * cell_w < widest + 1 and stride < shown_cols:
            stride *= 2
        line = [" "] * (cell_w * shown_cols + widest)
        for i, col in enumerate(range(self._left, self._left + shown_cols)):
            if col % stride:
                continue
            label = str(col)
            start = i * cell_w + (max(0, cell_w - 1 - len(label)) if stride == 1 else 0)
            line[start:start + len(label)] = label
        return "".join(line[: cell_w * shown_cols]).rstrip()

    def render(self) -> RenderResult:
        layout = self._layout()
        if layout is None:
            return Text("no data", style=self.get_component_rich_style("heatmap--label"))
        label_w, cell_w, shown_rows, shown_cols = layout
        self._scroll_to_cursor(shown_rows, shown_cols)
        label_style = self.get_component_rich_style("heatmap--label")
        cursor_style = self.get_component_rich_style("heatmap--cursor", partial=True)
        prefix = self.row_label[:1].upper()
        text = Text(no_wrap=True, end="")
        text.append(" " * label_w)
        text.append(self._header(cell_w, shown_cols), label_style)
        window = self._matrix[self._top:self._top + shown_rows,
                              self._left:self._left + shown_cols]
        # Values are printed only if every finite one fits: a map where some
        # cells show "5" and their neighbours nothing reads as missing data.
        with_values = all(format_value(v, cell_w - 1)
                          for v in window[np.isfinite(window)].tolist())
        for row in range(self._top, self._top + shown_rows):
            text.append("\n")
            text.append(f"{prefix}{row}".ljust(label_w), label_style)
            for col in range(self._left, self._left + shown_cols):
                value = self.value_at(row, col)
                style = self.cell_style(row, col)
                if (row, col) == self.cursor:
                    style += cursor_style
                shown = format_value(value, cell_w - 1) if with_values else ""
                if self.is_alarm(value) and not shown:
                    shown = "!"
                if math.isnan(value) and not shown:
                    shown = "·"
                cell = shown.rjust(cell_w - 1) + " " if cell_w > 1 else shown[:1] or " "
                text.append(cell, style)
        return text

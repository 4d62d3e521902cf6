"""RunTable: the table of runs that the runs screen and the hosts screen both show.

One widget, so the two screens cannot drift apart: the same cells (status colours,
step as `step/total`, the dim id), the same keys (enter opens the run under the
cursor: the screens handle `DataTable.RowSelected`) and the same in-place update.
A screen picks its columns from `RUN_COLUMNS` and hands `show()` the runs to list, in
order; it never touches rows itself.

`show()` reconciles rather than rebuilds (rows added, removed, cells changed, re-sorted
only when the order changed), so the cursor, the scroll position and the marks survive
a refresh, and a refresh costs only what changed. The cursor stays on its run; a run
selected before it is listed (just launched) gets the cursor when it appears.

Status colours are component classes styled in runs.tcss with theme variables, so they
follow the theme; they are baked into the cells as Rich styles, so a theme switch
calls `show(..., restyle=True)`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from workbench.render import ago, duration, eta, fmt_value
from workbench.runs_view import RunView
from workbench.store import RUN_STATUSES

# Every column a run table can show: (column key, header label).
RUN_COLUMNS: dict[str, str] = {
    "mark": " ", "name": "name", "status": "status", "kind": "kind", "step": "step",
    "metric": "metric", "spikes": "spikes", "age": "age", "eta": "eta", "group": "group",
    "host": "host", "id": "id",
}
MARK = "●"


def step_text(view: RunView) -> str:
    """`7/100` when the run knows its total, `7` when not, `-` before its first step."""
    row = view.row
    if row.last_step is None:
        return "-"
    return f"{row.last_step}/{row.total_steps}" if row.total_steps else str(row.last_step)


class RunTable(DataTable[Any]):
    """A table of runs, one row per run keyed by its id (see the module docstring)."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        *(f"runs-table--{s}" for s in RUN_STATUSES), "runs-table--mark", "runs-table--dim",
        "runs-table--spikes",
    }
    # Enter opens the run (DataTable posts RowSelected); named so for the footer and `?`.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open"),
    ]

    def __init__(self, columns: Sequence[str], *, sortable: bool = False,
                 age_text: Callable[[float | None], str] = ago, **kwargs: Any) -> None:
        """`columns`: keys of `RUN_COLUMNS`, in order; "id" is required (rows are put in
        order through it). `sortable`: the labels leave room for, and show, the sort
        arrow of `show_sort`. `age_text`: how a creation time reads (`render.ago`)."""
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        if "id" not in columns:
            raise ValueError("a RunTable needs the id column")
        self.run_columns = tuple(columns)
        self.sortable = sortable
        self.age_text = age_text
        self.pending_select: str | None = None  # a run to select once it is listed
        self._sort: tuple[str | None, bool] = (None, False)
        self._rendered: dict[str, dict[str, Any]] = {}  # cells as last drawn, to diff
        self._order: list[str] = []  # the run ids in table order, as last shown

    def on_mount(self) -> None:
        for key in self.run_columns:
            self.add_column(Text(self._label(key)), key=key)

    def _label(self, key: str) -> str:
        label = RUN_COLUMNS[key]
        if not self.sortable or key == "mark":
            return label
        column, reverse = self._sort
        # Two spare cells when unsorted, so the arrow never crops the label.
        arrow = ("▲" if reverse else "▼") if key == column else " "
        return f"{label} {arrow}"

    def show_sort(self, column: str, reverse: bool) -> None:
        """Put the sort arrow on `column`'s header (the rows are ordered by the caller)."""
        self._sort = (column, reverse)
        if not self.is_mounted:
            return
        for key in self.run_columns:
            self.columns[ColumnKey(key)].label = Text(self._label(key))
        self.refresh()

    # -- rows ----------------------------------------------------------------------------

    def styles_now(self) -> dict[str, Any]:
        """The component styles (status colours, mark, dim, spikes), looked up once per
        `show`, not once per cell: with a thousand runs the lookups were most of the
        first frame."""
        styles: dict[str, Any] = {
            name: self.get_component_rich_style(f"runs-table--{name}", partial=True)
            for name in ("spikes", "dim", "mark")}
        for status in RUN_STATUSES:
            styles[status] = self.get_component_rich_style(
                f"runs-table--{status}", partial=True, default=None)
        return styles

    def cells(self, view: RunView, styles: dict[str, Any], marked: bool = False,
              ) -> dict[str, Any]:
        """The rendered cells of one run in this table's columns (Text where a style
        applies)."""
        row = view.row
        out: dict[str, Any] = {}
        for key in self.run_columns:
            value: Any
            if key == "mark":
                value = Text(MARK if marked else " ", style=styles["mark"])
            elif key == "name":
                value = row.name
            elif key == "status":
                value = Text(row.status, style=styles.get(row.status) or "")
            elif key == "kind":
                value = row.kind
            elif key == "step":
                value = Text(step_text(view), justify="right")
            elif key == "metric":
                value = Text(fmt_value(view.metric), justify="right")
            elif key == "spikes":
                value = Text(str(view.spikes) if view.spikes else "", style=styles["spikes"],
                             justify="right")
            elif key == "age":
                value = self.age_text(row.created)
            elif key == "eta":
                value = duration(eta(row))
            elif key == "group":
                value = row.group or ""
            elif key == "host":
                value = row.host or ""
            else:  # id
                value = Text(row.id, style=styles["dim"])
            out[key] = value
        return out

    def show(self, views: Sequence[RunView], *, marked: Collection[str] = (),
             restyle: bool = False) -> None:
        """Make the rows these runs, in this order: rows of other runs go, new runs are
        added, changed cells (only those, unless `restyle`) are redrawn, and the rows
        re-sorted if the order changed. The cursor stays on its run."""
        keep = self.pending_select or self.selected_run_id
        wanted = {v.id for v in views}
        for row_key in list(self.rows):
            if row_key.value not in wanted:
                self.remove_row(row_key)
                self._rendered.pop(str(row_key.value), None)
        styles = self.styles_now()
        for view in views:
            cells = self.cells(view, styles, view.id in marked)
            old = self._rendered.get(view.id)
            if view.id not in self.rows:
                self.add_row(*cells.values(), key=view.id)
            else:
                for key, value in cells.items():
                    if restyle or old is None or old.get(key) != value:
                        self.update_cell(view.id, key, value, update_width=True)
            self._rendered[view.id] = cells
        order = [v.id for v in views]
        if order != self._order:  # (ordered_rows costs ~20 ms at 1,000 rows)
            if [r.key.value for r in self.ordered_rows] != order:
                position = {run_id: i for i, run_id in enumerate(order)}
                self.sort("id", key=lambda cell: position[str(cell)])
            self._order = order
        if (keep is not None and keep in wanted and self.select_run(keep)
                and keep == self.pending_select):
            self.pending_select = None

    # -- selection -----------------------------------------------------------------------

    @property
    def selected_run_id(self) -> str | None:
        """The run under the cursor, if any."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # cursor past the last row while rows are being removed
            return None

    def select_run(self, run_id: str) -> bool:
        """Move the cursor to a run; if it is not listed yet, as soon as it is."""
        if run_id not in self.rows:
            self.pending_select = run_id
            return False
        index = self.get_row_index(RowKey(run_id))
        if self.cursor_coordinate.row != index:
            self.move_cursor(row=index, column=0)
        return True

    def listed_ids(self) -> list[str]:
        """The run ids of the rows, in table order."""
        return [str(r.key.value) for r in self.ordered_rows]

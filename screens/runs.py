"""The runs screen: a live table of every run in the store, the dashboard's home.

The table is reconciled in place on every poll (rows added, removed, cells changed,
re-sorted only when the order changed) rather than rebuilt, so the cursor, the
scroll position and the marks survive a refresh, and a poll costs only what changed.

Reading is cheap by construction: a poll after which nothing was committed to the
store (`Store.change_mark`) reads no rows at all and only judges the active runs'
processes again. Otherwise one `Store.runs()` query, plus, for the runs that can have
new records (active, new, or whose step moved, and only when the store's record
sequence moved at all), their key metrics and loss-spike counts in two statements for
all of them. Finished runs cost nothing after their first read. Component styles are
looked up once per reconcile, and the table is re-sorted only when the order changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.widgets.data_table import ColumnKey, RowKey

from workbench.render import ago, duration, eta, fmt_value, key_metric
from workbench.store import ACTIVE_STATUSES, RUN_STATUSES, Store, StoreError
from workbench.themes import stylesheet

if TYPE_CHECKING:
    from workbench.screens.services import AppServices

POLL_S = 0.5
FIRST_ROWS = 60  # rows a big store's first frame adds (at least 2x the screen's height)

# (column key, header label). Name first: at 80 columns it is what must stay visible.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("mark", " "), ("name", "name"), ("status", "status"), ("kind", "kind"),
    ("step", "step"), ("metric", "metric"), ("spikes", "spikes"), ("age", "age"),
    ("eta", "eta"), ("group", "group"), ("host", "host"), ("id", "id"),
)
NUMERIC = ("step", "metric", "spikes")
# What `o` cycles through; `age` ascending is newest first, the default.
SORTS: tuple[str, ...] = ("age", "name", "status", "kind", "step", "metric", "spikes", "eta",
                          "group", "host", "id")
STATUS_ORDER = {s: i for i, s in enumerate(("running", "queued", "lost", "failed", "stopped",
                                             "finished"))}
MARK = "●"


def _preload_run_screen() -> None:
    """After the first frame, import the run screen (its tabs, charts, numpy: about
    0.25 s) in a background thread, so that opening the first run does not pay it.
    An open that comes first simply waits for the import to finish."""
    import threading

    def load() -> None:
        try:
            import workbench.screens.run  # noqa: F401
        except Exception:  # noqa: BLE001 - opening a run reports it, with its message
            pass

    threading.Thread(target=load, name="wb-preload-run-screen", daemon=True).start()


@dataclass
class RunView:
    """One run as the table shows it: the runs row plus the two per-run reads."""

    row: dict[str, Any]
    metric_key: str
    metric: float | None = None
    spikes: int = 0
    cells: dict[str, Any] = field(default_factory=dict)  # last rendered, to diff

    @property
    def id(self) -> str:
        return self.row["id"]

    def matches(self, text: str, status: str | None) -> bool:
        """Every word of `text` in the name, kind, id or group; and the status."""
        if status is not None and self.row["status"] != status:
            return False
        hay = " ".join(str(self.row.get(k) or "") for k in ("name", "kind", "id", "grp")).lower()
        return all(word in hay for word in text.lower().split())

    def sort_key(self, column: str) -> Any:
        """A key that sorts this run by `column`; unknown values (None) sort last."""
        row = self.row
        missing = (1, 0)
        if column == "age":
            return (0, -row["num"])  # newest first
        if column == "status":
            return (0, STATUS_ORDER.get(row["status"], 99), -row["num"])
        if column == "step":
            return missing if row["last_step"] is None else (0, row["last_step"])
        if column == "metric":
            value = self.metric
            return missing if value is None or value != value else (0, value)
        if column == "spikes":
            return (0, self.spikes)
        if column == "eta":
            left = eta(row)
            return missing if left is None else (0, left)
        value = {"group": row.get("grp"), "name": row["name"], "kind": row["kind"],
                 "host": row["host"], "id": row["id"]}.get(column)
        return missing if not value else (0, str(value).lower())


class RunsModel:
    """Incremental reader of the store's runs for the table (no Textual here)."""

    def __init__(self, store: Store):
        self.store = store
        self.views: dict[str, RunView] = {}
        self._seq = -1
        self._mark: tuple[int, int] | None = None
        self.reads = 0  # polls that read the runs rows (tests)

    def poll(self) -> dict[str, RunView]:
        """Re-read the runs rows when anything was committed since the last poll (else
        only judge the active runs' processes again); re-read metrics only where
        records can have changed."""
        st = self.store
        mark = st.change_mark()
        if mark == self._mark:
            for view in self.views.values():
                if view.row["status"] in ACTIVE_STATUSES:
                    row = st.judged(view.row)
                    if row["status"] != view.row["status"]:  # lost: no records to read
                        view.row = row
            return self.views
        self._mark = mark
        self.reads += 1
        seq = st.last_id()
        moved = seq != self._seq
        views: dict[str, RunView] = {}
        stale: list[RunView] = []
        metric_of: dict[str, str] = {}  # kind -> key metric
        for row in st.runs():
            old = self.views.get(row["id"])
            if old is None:
                kind = row["kind"]
                if kind not in metric_of:
                    metric_of[kind] = key_metric(kind)
                view = RunView(row, metric_of[kind])
            else:
                view = old
            if (old is None or old.row["status"] != row["status"]
                    or old.row["last_step"] != row["last_step"]
                    or (moved and row["status"] in (*ACTIVE_STATUSES, "lost"))):
                stale.append(view)
            view.row = row
            views[row["id"]] = view
        if stale:
            # Two statements for all of them (index seeks inside SQLite); a run deleted
            # meanwhile just reads as having no points and no spikes.
            points = st.latest_values((v.id, v.metric_key) for v in stale)
            spikes = st.event_kind_counts("loss_spike", [v.id for v in stale])
            for view in stale:
                point = points.get(view.id)
                view.metric = None if point is None else point[1]
                view.spikes = spikes.get(view.id, 0)
        self._seq = seq
        self.views = views
        return views


class RunsTable(DataTable[Any]):
    """The runs table. Status colors are component classes styled in runs.tcss with
    theme variables, so they follow the theme."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        *(f"runs-table--{s}" for s in RUN_STATUSES), "runs-table--mark", "runs-table--dim",
        "runs-table--spikes",
    }
    # Enter opens the run (DataTable posts RowSelected); named so for the footer and `?`.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open"),
    ]


class RunsScreen(Screen[None]):
    """The home screen: every run, live; open, stop, resume, delete, launch, compare."""

    CSS_PATH = str(stylesheet("runs"))
    AUTO_FOCUS = "#runs-table"
    BINDINGS: ClassVar[list[BindingType]] = [
        # The footer shows the everyday keys; `?` and ctrl+p list every one.
        Binding("enter", "open_run", "Open", show=False),
        Binding("n", "launch", "Launch"),
        Binding("x", "stop_run", "Stop"),
        Binding("r", "resume_run", "Resume", show=False),
        Binding("d", "delete_run", "Delete", show=False),
        Binding("space", "toggle_mark", "Mark", show=False),
        Binding("c", "compare", "Compare", show=False),
        Binding("slash", "focus_filter", "Filter"),
        Binding("s", "cycle_status", "Status", show=False),
        Binding("o", "cycle_sort", "Sort"),
        Binding("O", "reverse_sort", "Reverse sort", show=False),
        Binding("u", "clear_marks", "Unmark all", show=False),
        Binding("escape", "clear_filters", "Clear filters", show=False),
        Binding("ctrl+r", "refresh_now", "Refresh now", show=False),
        Binding("h", "hosts", "Hosts", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.model: RunsModel | None = None
        self.filter_text = ""
        self.status_filter: str | None = None
        self.sort_column = "age"
        self.sort_reverse = False
        self.marked: set[str] = set()
        self.last_refresh_ms = 0.0  # duration of the newest refresh (bench, tests)
        self.refreshes = 0
        self._pending_select: str | None = None
        self._restyle = False
        self._order: list[str] = []  # the run ids in table order, as last reconciled
        self._staged: int | None = None  # rows the first frame shows, until painted

    @property
    def wb(self) -> AppServices:
        return self.app  # type: ignore[return-value]

    # -- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="runs-bar"):
            yield Input(placeholder="/ filter: name, kind, id, group", id="runs-filter",
                        compact=True)
            yield Static("", id="runs-status-filter")
            yield Static("", id="runs-count")
        table = RunsTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("", id="runs-empty")
        yield Footer()

    def on_mount(self) -> None:
        table = self.table
        for key, label in COLUMNS:
            # Two spare cells so the sort arrow never crops the label.
            table.add_column(Text(self._label(key, label)), key=key)
        self.app.theme_changed_signal.subscribe(self, self._on_theme_changed)
        self._update_bar()
        self.refresh_table()
        self.set_interval(POLL_S, self._tick)
        self.call_after_refresh(_preload_run_screen)


    @property
    def table(self) -> RunsTable:
        return self.query_one("#runs-table", RunsTable)

    def _label(self, key: str, label: str) -> str:
        if key == "mark":
            return label
        arrow = ("▲" if self.sort_reverse else "▼") if key == self.sort_column else " "
        return f"{label} {arrow}"

    # -- live refresh --------------------------------------------------------------------

    def _tick(self) -> None:
        screen = self.app.screen
        if screen is self or (screen.is_modal and self in self.app.screen_stack):
            self.refresh_table()

    def on_screen_resume(self) -> None:
        if self.model is not None or self.wb.store is not None:
            self.refresh_table()

    def _on_theme_changed(self, _theme: object) -> None:
        """Status colors are baked into cells as Rich styles: re-render every cell."""
        self._restyle = True
        self.refresh_table(reread=False)

    def refresh_table(self, reread: bool = True) -> None:
        """Poll the store (unless `reread` is False: a filter or sort change) and
        reconcile the table with what the filters and sort say it should show."""
        started = time.perf_counter()
        if self.model is None:
            store = self.wb.store_if_exists()
            if store is None:
                self._show_empty(f"No run store at {self.wb.store_root} yet — press n to "
                                 "launch a run.")
                return
            self.model = RunsModel(store)
        views = self.model.poll() if reread else self.model.views
        self._reconcile(views)
        self.last_refresh_ms = (time.perf_counter() - started) * 1e3
        self.refreshes += 1

    def _reconcile(self, views: dict[str, RunView]) -> None:
        table = self.table
        keep_cursor = self._pending_select or self.selected_run_id
        wanted = [v for v in views.values() if v.matches(self.filter_text, self.status_filter)]
        wanted.sort(key=lambda v: v.sort_key(self.sort_column), reverse=self.sort_reverse)
        wanted_ids = {v.id for v in wanted}
        for row_key in list(table.rows):
            if row_key.value not in wanted_ids:
                table.remove_row(row_key)
        self.marked &= set(views)  # deleted runs drop their mark
        restyle, self._restyle = self._restyle, False
        styles = self._styles()
        first = max(FIRST_ROWS, 2 * self.app.size.height)
        if self._staged is None and not table.row_count and len(wanted) > first:
            # A big store: the rows a first screen shows now, the rest (which the table
            # measures cell by cell) once that has been painted.
            self._staged = first
            self.call_after_refresh(self._unstage)
        shown = wanted[:self._staged] if self._staged else wanted
        for view in shown:
            cells = self._cells(view, styles)
            if view.id not in table.rows:
                table.add_row(*(cells[k] for k, _ in COLUMNS), key=view.id)
            else:
                for key, value in cells.items():
                    if restyle or view.cells.get(key) != value:
                        table.update_cell(view.id, key, value, update_width=True)
            view.cells = cells
        order = [v.id for v in shown]
        if order != self._order:  # (table.ordered_rows costs ~20 ms at 1,000 rows)
            if [r.key.value for r in table.ordered_rows] != order:
                position = {run_id: i for i, run_id in enumerate(order)}
                table.sort("id", key=lambda cell: position[str(cell)])
            self._order = order
        if keep_cursor and keep_cursor in wanted_ids:
            # not added yet (a big store's first frame): selected when it is
            if self.select_run(keep_cursor) and keep_cursor == self._pending_select:
                self._pending_select = None
        self._update_bar(len(wanted), len(views))
        if views and not wanted:
            self._show_empty("No run matches the filters — escape clears them.")
        elif not views:
            self._show_empty(f"No runs in {self.wb.store_root} — press n to launch one.")
        else:
            self._show_empty(None)

    def _styles(self) -> dict[str, Any]:
        """The table's component styles (status colors, mark, dim, spikes), looked up
        once per reconcile, not once per cell: with a thousand runs the lookups were
        most of the first frame."""
        table = self.table
        styles: dict[str, Any] = {
            name: table.get_component_rich_style(f"runs-table--{name}", partial=True)
            for name in ("spikes", "dim", "mark")}
        for status in RUN_STATUSES:
            styles[status] = table.get_component_rich_style(
                f"runs-table--{status}", partial=True, default=None)
        return styles

    def _unstage(self) -> None:
        """After the first paint: add the rows the first frame left out."""
        self._staged = 0
        self.refresh_table(reread=False)

    def _cells(self, view: RunView, styles: dict[str, Any] | None = None) -> dict[str, Any]:
        """The rendered cells of one run (Text where a style applies)."""
        row = view.row
        styles = styles or self._styles()
        status = row["status"]
        step = row["last_step"]
        steps = "-" if step is None else (f"{step}/{row['total_steps']}" if row["total_steps"]
                                          else str(step))
        style = styles.get(status)
        spikes_style, dim, mark_style = styles["spikes"], styles["dim"], styles["mark"]
        return {
            "mark": Text(MARK if view.id in self.marked else " ", style=mark_style),
            "name": row["name"],
            "status": Text(status, style=style or ""),
            "kind": row["kind"],
            "step": Text(steps, justify="right"),
            "metric": Text(fmt_value(view.metric), justify="right"),
            "spikes": Text(str(view.spikes) if view.spikes else "", style=spikes_style,
                           justify="right"),
            "age": ago(row["created"]),
            "eta": duration(eta(row)),
            "group": row.get("grp") or "",
            "host": row["host"] or "",
            "id": Text(row["id"], style=dim),
        }

    def _show_empty(self, message: str | None) -> None:
        empty = self.query_one("#runs-empty", Static)
        empty.display = message is not None
        if message is not None:
            empty.update(message)

    def _update_bar(self, shown: int = 0, total: int = 0) -> None:
        status = self.status_filter or "all"
        self.query_one("#runs-status-filter", Static).update(f"status: {status} (s)")
        marked = f" · {len(self.marked)} marked" if self.marked else ""
        self.query_one("#runs-count", Static).update(
            f"{shown}/{total} runs{marked}" if shown != total else f"{total} runs{marked}")

    # -- selection -----------------------------------------------------------------------

    @property
    def selected_run_id(self) -> str | None:
        """The run under the cursor, if any."""
        table = self.table
        if not table.row_count:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # cursor past the last row while rows are being removed
            return None

    def select_run(self, run_id: str) -> bool:
        """Move the cursor to a run; if it is not shown yet, as soon as it is."""
        table = self.table
        if run_id not in table.rows:
            self._pending_select = run_id
            return False
        index = table.get_row_index(RowKey(run_id))
        if table.cursor_coordinate.row != index:
            table.move_cursor(row=index, column=0)
        return True

    def selected_view(self) -> RunView | None:
        run_id = self.selected_run_id
        if run_id is None or self.model is None:
            return None
        return self.model.views.get(run_id)

    # -- filters and sort -----------------------------------------------------------------

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.refresh_table(reread=False)

    @on(Input.Submitted, "#runs-filter")
    def _filter_submitted(self) -> None:
        self.table.focus()

    def action_focus_filter(self) -> None:
        self.query_one("#runs-filter", Input).focus()

    def action_clear_filters(self) -> None:
        """escape: clear the text and status filters (and leave the filter box)."""
        self.query_one("#runs-filter", Input).value = ""
        self.filter_text = ""
        self.status_filter = None
        self.table.focus()
        self.refresh_table(reread=False)

    def set_status_filter(self, status: str | None) -> None:
        self.status_filter = status
        self.refresh_table(reread=False)

    def action_cycle_status(self) -> None:
        """all -> queued -> running -> ... -> lost -> all."""
        cycle: list[str | None] = [None, *RUN_STATUSES]
        self.set_status_filter(cycle[(cycle.index(self.status_filter) + 1) % len(cycle)])
        self.notify(f"status filter: {self.status_filter or 'all'}", timeout=1.5)

    def set_sort(self, column: str, reverse: bool | None = None) -> None:
        """Sort by a column; the same column again (reverse None) flips the order."""
        if reverse is None:
            reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort_column, self.sort_reverse = column, reverse
        table = self.table
        for key, label in COLUMNS:
            table.columns[ColumnKey(key)].label = Text(self._label(key, label))
        table.refresh()
        self.refresh_table(reread=False)

    def action_cycle_sort(self) -> None:
        self.set_sort(SORTS[(SORTS.index(self.sort_column) + 1) % len(SORTS)], reverse=False)
        self.notify(f"sorted by {self.sort_column}", timeout=1.5)

    def action_reverse_sort(self) -> None:
        self.set_sort(self.sort_column, reverse=not self.sort_reverse)

    @on(DataTable.HeaderSelected, "#runs-table")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        column = event.column_key.value
        if column in SORTS:
            self.set_sort(column)

    def action_refresh_now(self) -> None:
        self.refresh_table()

    # -- marks ---------------------------------------------------------------------------

    def action_toggle_mark(self) -> None:
        """space: mark or unmark the run under the cursor (for compare), then move down."""
        run_id = self.selected_run_id
        if run_id is None:
            return
        self.marked ^= {run_id}
        self.refresh_table(reread=False)
        table = self.table
        if table.cursor_coordinate.row < table.row_count - 1:
            table.move_cursor(row=table.cursor_coordinate.row + 1)

    def action_clear_marks(self) -> None:
        self.marked.clear()
        self.refresh_table(reread=False)

    # -- actions on runs -----------------------------------------------------------------

    @on(DataTable.RowSelected, "#runs-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.open_run(event.row_key.value)

    def action_open_run(self) -> None:
        run_id = self.selected_run_id
        if run_id is not None:
            self.open_run(run_id)

    def open_run(self, run_id: str | None) -> None:
        """Push the run screen (written separately; guarded until it exists)."""
        if run_id is None:
            return
        try:
            from workbench.screens.run import RunScreen
        except ImportError as exc:
            self.notify(f"the run screen is not available: {exc}", severity="warning")
            return
        self.app.push_screen(RunScreen(run_id))

    def action_compare(self) -> None:
        ids = [r.key.value for r in self.table.ordered_rows if r.key.value in self.marked]
        ids += sorted(self.marked - set(ids))  # marked runs hidden by a filter count too
        if len(ids) < 2:
            self.notify("mark two or more runs with space, then press c", severity="warning")
            return
        try:
            from workbench.screens.compare import CompareScreen
        except ImportError as exc:
            self.notify(f"the compare screen is not available: {exc}", severity="warning")
            return
        self.app.push_screen(CompareScreen([i for i in ids if i is not None]))

    def action_hosts(self) -> None:
        """h: the hosts screen (reachability, GPUs and runs of every host)."""
        self.wb.open_hosts_screen()

    def action_launch(self) -> None:
        from workbench.screens.launch import LaunchScreen

        self.app.push_screen(LaunchScreen(), self._launched)

    def _launched(self, run_id: str | None) -> None:
        if run_id:
            self.filter_text = ""
            self.status_filter = None
            self.query_one("#runs-filter", Input).value = ""
            self._pending_select = run_id
            self.refresh_table()

    def _require_view(self, verb: str) -> RunView | None:
        view = self.selected_view()
        if view is None:
            self.notify(f"no run selected to {verb}", severity="warning")
        return view

    def action_stop_run(self) -> None:
        """x: stop the run under the cursor, after a confirmation."""
        from workbench.screens.dialogs import ConfirmScreen

        view = self._require_view("stop")
        if view is None:
            return
        row = view.row
        if row["status"] not in ACTIVE_STATUSES:
            self.notify(f"{row['name']} is {row['status']}: nothing to stop",
                        severity="warning")
            return
        question = (f"Stop {row['name']} ({row['id']})?\n\nIt gets SIGTERM (a recipe "
                    "checkpoints and exits), then SIGKILL after 10 s.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop_worker(row["id"])

        self.app.push_screen(ConfirmScreen(question, confirm_label="Stop"), answered)

    @work(thread=True, group="run-actions")
    def _stop_worker(self, run_id: str) -> None:
        """Stopping waits for the process (up to the grace period): off the UI thread,
        on a connection of its own."""
        from workbench.hosts import HostError
        from workbench.launch import control

        try:
            with Store(self.wb.store_root, create=False) as st:
                message = control.stop(st, st.get_run(run_id))
        except (StoreError, HostError) as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error")
            return
        self.app.call_from_thread(self.notify, message)
        self.app.call_from_thread(self.refresh_table)

    def action_resume_run(self) -> None:
        """r: continue a stopped, failed or lost run from its checkpoint as a new run."""
        from workbench.hosts import HostError
        from workbench.launch import control
        from workbench.spec import SpecError

        view = self._require_view("resume")
        if view is None or self.model is None:
            return
        try:
            row = control.resume(self.model.store, self.model.store.get_run(view.id))
        except (SpecError, StoreError, HostError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"resumed {view.row['name']} as run {row['id']}")
        self._launched(row["id"])

    def action_delete_run(self) -> None:
        """d: delete the run under the cursor (rows and folder), after a confirmation."""
        from workbench.screens.dialogs import ConfirmScreen

        view = self._require_view("delete")
        if view is None:
            return
        row = view.row
        if row["status"] in ACTIVE_STATUSES:
            self.notify(f"{row['name']} is {row['status']}; stop it first (x)",
                        severity="warning")
            return
        question = (f"Delete {row['name']} ({row['id']})?\n\nIts records and its folder "
                    "(checkpoints included) are removed for good.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete_worker(row["id"], row["name"])

        self.app.push_screen(ConfirmScreen(question, confirm_label="Delete"), answered)

    @work(thread=True, group="run-actions")
    def _delete_worker(self, run_id: str, name: str) -> None:
        """Removing a folder of checkpoints can take a while: off the UI thread."""
        try:
            with Store(self.wb.store_root, create=False) as st:
                if st.get_run(run_id)["status"] in ACTIVE_STATUSES:  # resumed meanwhile
                    raise StoreError(f"{name} is active again; stop it first (x)")
                st.delete_run(run_id)
        except StoreError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error")
            return
        self.app.call_from_thread(self.notify, f"deleted {name} ({run_id})")
        self.app.call_from_thread(self.refresh_table)

    # -- command palette -----------------------------------------------------------------

    def palette_commands(self) -> Iterable[tuple[str, str, Callable[[], Any]]]:
        """Commands beyond the key bindings: open a run by name, sort by any column,
        show one status. The app's palette provider collects these."""
        for column in SORTS:
            yield (f"Sort by {column}", "order the runs table by this column",
                   lambda c=column: self.set_sort(c, reverse=False))
        for status in (None, *RUN_STATUSES):
            yield (f"Show {status or 'all'} runs", "status filter",
                   lambda s=status: self.set_status_filter(s))
        if self.model is not None:
            for view in self.model.views.values():
                row = view.row
                yield (f"Open run {row['name']}", f"{row['id']} · {row['kind']} · "
                       f"{row['status']}", lambda i=view.id: self.open_run(i))

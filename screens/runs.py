"""The runs screen: a live table of every run in the store, the dashboard's home.

What is shown is `workbench/runs_view.py`'s: `RunsModel.poll` reads the store
incrementally (nothing at all when nothing was committed) and `select` filters and
sorts. The table is `screens/widgets/run_table.py:RunTable`, which reconciles its rows
in place, so the cursor, the scroll position and the marks survive a refresh.

The screen's state (the text and status filters, the sort, the marks) are Textual
reactives: changing one redraws the table through its watcher, without re-reading the
store; a timer re-reads the store every POLL_S while the screen (or a dialog over it)
is shown. Stopping, resuming and deleting run in thread workers on a store connection
of their own: an ssh stop or resume can block for up to a minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from workbench.render import ago
from workbench.runs_view import SORTS, RunsModel, RunView, select
from workbench.screens.widgets.run_table import RunTable
from workbench.store import RUN_STATUSES, Store, StoreError
from workbench.themes import stylesheet

if TYPE_CHECKING:
    from workbench.screens.services import AppServices

__all__ = ["COLUMNS", "SORTS", "RunsModel", "RunsScreen", "RunView"]

POLL_S = 0.5
FIRST_ROWS = 60  # rows a big store's first frame adds (at least 2x the screen's height)

# The table's columns (keys of run_table.RUN_COLUMNS). Name first: at 80 columns it is
# what must stay visible.
COLUMNS: tuple[str, ...] = ("mark", "name", "status", "kind", "step", "metric", "spikes",
                            "age", "eta", "group", "host", "id")


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

    # What the table shows; each watcher redraws it from the runs already read. `var`:
    # the table repaints itself, the screen need not. init=False: nothing to redraw
    # before the first read (on_mount).
    filter_text: var[str] = var("", init=False)  # words in name, kind, id or group
    status_filter: var[str | None] = var(None, init=False)  # None: every status
    sort: var[tuple[str, bool]] = var(("age", False), init=False)  # (column, reverse)
    marked: var[frozenset[str]] = var(frozenset(), init=False)  # run ids, for compare

    def __init__(self) -> None:
        super().__init__()
        self.model: RunsModel | None = None
        self.last_refresh_ms = 0.0  # duration of the newest refresh (bench, tests)
        self.refreshes = 0
        self._restyle = False
        self._staged: int | None = None  # rows the first frame shows, until painted

    @property
    def wb(self) -> AppServices:
        return self.app  # type: ignore[return-value]

    @property
    def sort_column(self) -> str:
        return self.sort[0]

    @property
    def sort_reverse(self) -> bool:
        return self.sort[1]

    # -- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="runs-bar"):
            yield Input(placeholder="/ filter: name, kind, id, group", id="runs-filter",
                        compact=True)
            yield Static("", id="runs-status-filter")
            yield Static("", id="runs-count")
        # Ages through this module's `ago`, so a snapshot test can fix them.
        table = RunTable(COLUMNS, sortable=True, age_text=lambda ts: ago(ts),
                         id="runs-table")
        table.show_sort(*self.sort)
        yield table
        yield Static("", id="runs-empty")
        yield Footer()

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, self._on_theme_changed)
        self._update_bar()
        self.refresh_table()
        self.set_interval(POLL_S, self._tick)
        self.call_after_refresh(_preload_run_screen)

    @property
    def table(self) -> RunTable:
        return self.query_one("#runs-table", RunTable)

    # -- reading the store ---------------------------------------------------------------

    def _tick(self) -> None:
        screen = self.app.screen
        if screen is self or (screen.is_modal and self in self.app.screen_stack):
            self.refresh_table()

    def on_screen_resume(self) -> None:
        if self.model is not None or self.wb.store is not None:
            self.refresh_table()

    def refresh_table(self) -> None:
        """Poll the store and show what changed: the timer's work, also run at once
        after this screen changed the store (a launch, a stop, a delete)."""
        started = time.perf_counter()
        if self.model is None:
            store = self.wb.store_if_exists()
            if store is None:
                self._show_empty(f"No run store at {self.wb.store_root} yet — press n to "
                                 "launch a run.")
                return
            self.model = RunsModel(store)
        self._reconcile(self.model.poll())
        self.last_refresh_ms = (time.perf_counter() - started) * 1e3
        self.refreshes += 1

    def _redraw(self) -> None:
        """Show the runs already read under the current filters, sort and marks."""
        if self.model is not None and self.is_mounted:
            self._reconcile(self.model.views)

    def _reconcile(self, views: dict[str, RunView]) -> None:
        """Hand the table the runs to show, in order; say why when there are none."""
        table = self.table
        wanted = select(views.values(), self.filter_text, self.status_filter, *self.sort)
        kept = self.marked.intersection(views)
        if kept != self.marked:  # deleted runs drop their mark (no redraw: this is one)
            self.set_reactive(RunsScreen.marked, kept)
        restyle, self._restyle = self._restyle, False
        first = max(FIRST_ROWS, 2 * self.app.size.height)
        if self._staged is None and not table.row_count and len(wanted) > first:
            # A big store: the rows a first screen shows now, the rest (which the table
            # measures cell by cell) once that has been painted.
            self._staged = first
            self.call_after_refresh(self._unstage)
        table.show(wanted[:self._staged] if self._staged else wanted, marked=self.marked,
                   restyle=restyle)
        self._update_bar(len(wanted), len(views))
        if views and not wanted:
            self._show_empty("No run matches the filters — escape clears them.")
        elif not views:
            self._show_empty(f"No runs in {self.wb.store_root} — press n to launch one.")
        else:
            self._show_empty(None)

    def _unstage(self) -> None:
        """After the first paint: add the rows the first frame left out."""
        self._staged = 0
        self._redraw()

    def _on_theme_changed(self, _theme: object) -> None:
        """Status colors are baked into cells as Rich styles: re-render every cell."""
        self._restyle = True
        self._redraw()

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
        return self.table.selected_run_id

    def select_run(self, run_id: str) -> bool:
        """Move the cursor to a run; if it is not shown yet, as soon as it is."""
        return self.table.select_run(run_id)

    def selected_view(self) -> RunView | None:
        run_id = self.selected_run_id
        if run_id is None or self.model is None:
            return None
        return self.model.views.get(run_id)

    # -- filters and sort -----------------------------------------------------------------

    def watch_filter_text(self) -> None:
        self._redraw()

    def watch_status_filter(self) -> None:
        self._redraw()

    def watch_sort(self, sort: tuple[str, bool]) -> None:
        if self.is_mounted:
            self.table.show_sort(*sort)
            self._redraw()

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value

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

    def set_status_filter(self, status: str | None) -> None:
        self.status_filter = status

    def action_cycle_status(self) -> None:
        """all -> queued -> running -> ... -> lost -> all."""
        cycle: list[str | None] = [None, *RUN_STATUSES]
        self.status_filter = cycle[(cycle.index(self.status_filter) + 1) % len(cycle)]
        self.notify(f"status filter: {self.status_filter or 'all'}", timeout=1.5)

    def set_sort(self, column: str, reverse: bool | None = None) -> None:
        """Sort by a column; the same column again (reverse None) flips the order."""
        if reverse is None:
            reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort = (column, reverse)

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

    def watch_marked(self) -> None:
        self._redraw()

    def action_toggle_mark(self) -> None:
        """space: mark or unmark the run under the cursor (for compare), then move down."""
        run_id = self.selected_run_id
        if run_id is None:
            return
        self.marked ^= {run_id}
        table = self.table
        if table.cursor_coordinate.row < table.row_count - 1:
            table.move_cursor(row=table.cursor_coordinate.row + 1)

    def action_clear_marks(self) -> None:
        self.marked = frozenset()

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
        ids = [i for i in self.table.listed_ids() if i in self.marked]
        ids += sorted(self.marked - set(ids))  # marked runs hidden by a filter count too
        if len(ids) < 2:
            self.notify("mark two or more runs with space, then press c", severity="warning")
            return
        try:
            from workbench.screens.compare import CompareScreen
        except ImportError as exc:
            self.notify(f"the compare screen is not available: {exc}", severity="warning")
            return
        self.app.push_screen(CompareScreen(ids))

    def action_hosts(self) -> None:
        """h: the hosts screen (reachability, GPUs and runs of every host)."""
        self.wb.open_hosts_screen()

    def action_launch(self) -> None:
        from workbench.screens.launch import LaunchScreen

        self.app.push_screen(LaunchScreen(), self._launched)

    def _launched(self, run_id: str | None) -> None:
        """A run was launched or resumed: clear the filters so it is shown, give it the
        cursor (once listed) and read it now rather than at the next tick."""
        if run_id:
            self.query_one("#runs-filter", Input).value = ""
            self.filter_text = ""
            self.status_filter = None
            self.select_run(run_id)
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
        if not row.is_active:
            self.notify(f"{row.name} is {row.status}: nothing to stop", severity="warning")
            return
        question = (f"Stop {row.name} ({row.id})?\n\nIt gets SIGTERM (a recipe "
                    "checkpoints and exits), then SIGKILL after 10 s.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop_worker(row.id)

        self.app.push_screen(ConfirmScreen(question, confirm_label="Stop"), answered)

    @work(thread=True, group="run-actions")
    def _stop_worker(self, run_id: str) -> None:
        """Stopping waits for the process (up to the grace period): off the UI thread,
        on a connection of its own."""
        from workbench.hosts import HostError
        from workbench.launch.backends import backend_for

        try:
            with Store(self.wb.store_root, create=False) as st:
                record = st.get_run(run_id)
                message = backend_for(record).stop(st, record)
        except (StoreError, HostError) as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error")
            return
        self.app.call_from_thread(self.notify, message)
        self.app.call_from_thread(self.refresh_table)

    def action_resume_run(self) -> None:
        """r: continue a stopped, failed or lost run from its checkpoint as a new run."""
        view = self._require_view("resume")
        if view is not None:
            self._resume_worker(view.id, view.row.name)

    @work(thread=True, group="run-actions")
    def _resume_worker(self, run_id: str, name: str) -> None:
        """Resuming starts a worker here, or runs `wb launch` over ssh on the run's host
        (up to a minute when it hangs): off the UI thread, on a connection of its own."""
        from workbench.hosts import HostError
        from workbench.launch.backends import backend_for
        from workbench.spec import SpecError

        try:
            with Store(self.wb.store_root, create=False) as st:
                record = st.get_run(run_id)
                resumed = backend_for(record).resume(st, record).record
        except (SpecError, StoreError, HostError) as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error")
            return
        self.app.call_from_thread(self.notify, f"resumed {name} as run {resumed.id}")
        self.app.call_from_thread(self._launched, resumed.id)

    def action_delete_run(self) -> None:
        """d: delete the run under the cursor (rows and folder), after a confirmation."""
        from workbench.screens.dialogs import ConfirmScreen

        view = self._require_view("delete")
        if view is None:
            return
        row = view.row
        if row.is_active:
            self.notify(f"{row.name} is {row.status}; stop it first (x)", severity="warning")
            return
        question = (f"Delete {row.name} ({row.id})?\n\nIts records and its folder "
                    "(checkpoints included) are removed for good.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete_worker(row.id, row.name)

        self.app.push_screen(ConfirmScreen(question, confirm_label="Delete"), answered)

    @work(thread=True, group="run-actions")
    def _delete_worker(self, run_id: str, name: str) -> None:
        """Removing a folder of checkpoints can take a while: off the UI thread."""
        try:
            with Store(self.wb.store_root, create=False) as st:
                if st.get_run(run_id).is_active:  # resumed meanwhile
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
                yield (f"Open run {row.name}", f"{row.id} · {row.kind} · {row.status}",
                       lambda i=view.id: self.open_run(i))

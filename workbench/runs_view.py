"""The runs table's model: which runs the dashboard's home screen shows, in what order,
with their key metric and loss-spike count, read incrementally from the store.

It lives in the core, not in `screens/`, because none of it needs Textual: the
filtering, the sort keys and the incremental poll are plain Python over `RunRecord`s,
tested without an app, and `screens/runs.py` only renders what `RunsModel.poll` and
`select` return.

Reading is cheap by construction: a poll after which nothing was committed to the
store (`Store.change_mark`) reads no rows at all and only judges the active runs'
processes again. Otherwise one `Store.runs()` query, plus, for the runs that can have
new records (active, new, or whose step moved, and only when the store's record
sequence moved at all), their key metrics and loss-spike counts in two statements for
all of them. Finished runs cost nothing after their first read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from workbench.render import eta, key_metric
from workbench.run_record import ACTIVE_STATUSES, RunRecord
from workbench.store import Store

# What the runs screen's `o` cycles through; `age` ascending is newest first, the default.
SORTS: tuple[str, ...] = ("age", "name", "status", "kind", "step", "metric", "spikes", "eta",
                          "group", "host", "id")
# Sorting by status puts what needs attention first: live runs, then the ones that ended
# badly, the finished ones last.
STATUS_ORDER: dict[str, int] = {
    s: i for i, s in enumerate(("running", "queued", "lost", "failed", "stopped", "finished"))}
_MISSING = (1, 0)  # the sort key of an unknown value: after every known one


@dataclass
class RunView:
    """One run as the runs table shows it: its record plus the two per-run reads (the
    kind's key metric and the number of loss spikes), which the record does not hold."""

    row: RunRecord
    metric_key: str = ""  # the key metric of the run's kind ("" where none is shown)
    metric: float | None = None
    spikes: int = 0

    @property
    def id(self) -> str:
        return self.row.id

    def matches(self, text: str, status: str | None) -> bool:
        """Every word of `text` in the name, kind, id or group; and the status, unless
        `status` is None (all)."""
        row = self.row
        if status is not None and row.status != status:
            return False
        hay = " ".join(v or "" for v in (row.name, row.kind, row.id, row.group)).lower()
        return all(word in hay for word in text.lower().split())

    def sort_key(self, column: str) -> Any:
        """A key that sorts this run by `column` (one of `SORTS`); unknown values (no
        step, no metric, a NaN) sort last in either direction of the column's own
        values."""
        row = self.row
        if column == "age":
            return (0, -row.num)  # newest first
        if column == "status":
            return (0, STATUS_ORDER.get(row.status, 99), -row.num)
        if column == "step":
            return _MISSING if row.last_step is None else (0, row.last_step)
        if column == "metric":
            value = self.metric
            return _MISSING if value is None or value != value else (0, value)
        if column == "spikes":
            return (0, self.spikes)
        if column == "eta":
            left = eta(row)
            return _MISSING if left is None else (0, left)
        value = {"group": row.group, "name": row.name, "kind": row.kind, "host": row.host,
                 "id": row.id}.get(column)
        return _MISSING if not value else (0, str(value).lower())


def select(views: Iterable[RunView], text: str = "", status: str | None = None,
           column: str = "age", reverse: bool = False) -> list[RunView]:
    """The runs that pass the text and status filters, sorted by `column`: what the
    table shows, in its order."""
    wanted = [v for v in views if v.matches(text, status)]
    wanted.sort(key=lambda v: v.sort_key(column), reverse=reverse)
    return wanted


class RunsModel:
    """Incremental reader of the store's runs for the runs table.

    `views` keeps one `RunView` per run across polls (a run's view is the same object
    from poll to poll), so its metric and spike count are read again only when the run
    can have new records.
    """

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
                if view.row.status in ACTIVE_STATUSES:
                    row = st.judged(view.row)
                    if row.status != view.row.status:  # lost: no records to read
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
            old = self.views.get(row.id)
            if old is None:
                if row.kind not in metric_of:
                    metric_of[row.kind] = key_metric(row.kind)
                view = RunView(row, metric_of[row.kind])
            else:
                view = old
            if (old is None or old.row.status != row.status
                    or old.row.last_step != row.last_step
                    or (moved and row.status in (*ACTIVE_STATUSES, "lost"))):
                stale.append(view)
            view.row = row
            views[row.id] = view
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

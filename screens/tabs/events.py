"""Events: every event of the run, newest last, followed live."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable

from workbench.feed import RunFeed
from workbench.render import payload_text
from workbench.screens.tabs.base import RunTab


class EventsTab(RunTab):
    TITLE = "Events"
    FOCUS = "#events-table"  # scrolls with the keyboard at once, no Tab first

    def compose(self) -> ComposeResult:
        yield DataTable(id="events-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("step", "kind", "severity", "details")
        self._shown = 0

    def update_from(self, feed: RunFeed) -> None:
        table = self.query_one(DataTable)
        follow = table.cursor_row >= table.row_count - 1
        for e in feed.events[self._shown:]:
            sev = e.severity or ""
            table.add_row(str(e.step), e.kind,
                          Text(sev, style="" if sev == "info" else sev_style(sev)),
                          payload_text(e.payload), key=str(e.id))
        self._shown = len(feed.events)
        if follow and table.row_count:
            table.move_cursor(row=table.row_count - 1)


def sev_style(severity: str) -> str:
    """Severity colors; Rich styles here because DataTable cells are Rich renderables."""
    return {"warning": "yellow", "error": "bold red", "debug": "dim"}.get(severity, "")

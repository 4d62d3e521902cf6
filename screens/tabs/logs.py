"""Logs: the run's stdout.log, tailed (read from the last offset, like `tail -f`)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Log

from workbench.feed import RunFeed
from workbench.screens.tabs.base import RunTab

FIRST_READ = 256 * 1024  # a long log opens at its last 256 KiB
MAX_LINES = 5000


class LogsTab(RunTab):
    TITLE = "Logs"
    FOCUS = "#log"  # scrolls with the keyboard at once, no Tab first
    FOLLOWS_FILES = True  # the log grows without any store record

    def compose(self) -> ComposeResult:
        yield Log(id="log", max_lines=MAX_LINES, auto_scroll=True)

    def on_mount(self) -> None:
        self._offset: int | None = None
        self._partial = ""

    def update_from(self, feed: RunFeed) -> None:
        path = feed.log_path
        try:
            size = path.stat().st_size
        except OSError:
            return
        if self._offset is None or size < self._offset:  # first read, or truncated
            self._offset = max(0, size - FIRST_READ)
        if size == self._offset:
            return
        with open(path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(size - self._offset)
        self._offset = size
        text = self._partial + chunk.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for its end
        if lines:
            self.query_one(Log).write_lines(lines)

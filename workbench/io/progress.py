"""A progress bar on stderr for long imports: on a terminal only, and only after a moment.

Why lazy: most imports take well under a second, and a bar that flashes for those is
noise; piped or scripted, stderr must carry nothing but errors (one line, exit 2).
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

DELAY_S = 0.5


class ByteProgress:
    """Call with the bytes done so far; shows a transient bar once DELAY_S have passed."""

    def __init__(self, console: Console, total: int | None, what: str) -> None:
        self.console, self.total, self.what = console, total, what
        self.start = time.monotonic()
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, done: int) -> None:
        if not self.console.is_terminal:
            return
        if self.progress is None:
            if time.monotonic() - self.start < DELAY_S:
                return
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=self.console,
                transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.what, total=self.total)
        self.progress.update(self.task, completed=done)  # type: ignore[arg-type]

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.stop()

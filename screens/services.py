"""What the screens use of the app, as a Protocol.

`workbench/app.py` composes the screens, so the screens must not import it back
(tests/test_layout.py refuses the cycle, TYPE_CHECKING imports included). A screen
reaches the app's store and navigation through `self.wb`, typed as `AppServices`;
`WorkbenchApp` provides it structurally, without naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from workbench.store import Store


class AppServices(Protocol):
    """The store and the navigation of `workbench.app.WorkbenchApp` that screens call."""

    store_root: Path
    store: Store | None

    def store_if_exists(self) -> Store | None:
        """The store, opened on first use; None while there is none at the root."""
        ...

    def ensure_store(self) -> Store:
        """The store, created if needed."""
        ...

    def open_hosts_screen(self) -> None:
        """Show the hosts screen (one instance)."""
        ...

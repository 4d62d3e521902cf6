"""The Textual dashboard: `wb` (on a terminal) or `wb tui`.

This is the one module of the core package that imports Textual: it composes the
screens of `workbench.screens` (tests/test_layout.py allows exactly this file).
`workbench.cli` imports it lazily, so `wb ls` and friends never pay for Textual.

The app owns what every screen shares: the store (opened lazily, so a bare `wb` in a
folder without runs does not create one), the themes (registered from
`workbench.themes`, the saved one restored, a change saved), the key help (`?`) and
the command palette (ctrl+p), which lists every action of the current screen and of
the app by name, so nothing needs a mouse or a memorised key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider

from workbench.store import DB_NAME, Store, StoreError, resolve_root
from workbench.themes import (
    DEFAULT_THEME,
    THEMES,
    load_theme_name,
    save_theme_name,
    stylesheet,
)

if TYPE_CHECKING:
    from workbench.screens.run import RunScreen
    from workbench.screens.runs import RunsScreen

Command = tuple[str, str, Callable[[], Any]]


class WorkbenchCommands(Provider):
    """Every action by name: the bindings of the screen the palette was opened on and
    of the app (so a new key is in the palette without extra work), plus what screens
    and the app offer beyond keys (`palette_commands()`: open a run by name, sort by a
    column, switch to a theme)."""

    def commands(self) -> Iterator[Command]:
        app, screen = self.app, self.screen
        seen: set[str] = set()
        for active in screen.active_bindings.values():
            node, binding = active.node, active.binding
            # Widget-level keys (cursor moves) are navigation, not actions.
            if node is not screen and node is not app:
                continue
            if not binding.description or binding.description in seen:
                continue
            seen.add(binding.description)
            key = app.get_key_display(binding)
            yield (binding.description, f"key {key}",
                   partial(app.run_action, binding.action, node))
        for source in (screen, app):
            extra = getattr(source, "palette_commands", None)
            if extra is not None:
                yield from extra()

    async def discover(self) -> Hits:
        for name, help_text, callback in self.commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self.commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


class WorkbenchApp(App[None]):
    """The dashboard over one run store."""

    TITLE = "workbench"
    CSS_PATH = [str(stylesheet("workbench"))]
    COMMANDS = App.COMMANDS | {WorkbenchCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "keys", "Keys"),
        Binding("t", "next_theme", "Theme", show=False),
    ]

    def __init__(self, store: str | os.PathLike[str] | None = None) -> None:
        """`store`: the run store folder (default: $WB_STORE, then ./runs)."""
        super().__init__()
        self.store_root: Path = resolve_root(store).expanduser().absolute()
        self.store: Store | None = None
        self.runs_screen: RunsScreen | None = None  # the home screen, once mounted
        for theme in THEMES.values():
            self.register_theme(theme)

    # -- store ---------------------------------------------------------------------------

    def store_if_exists(self) -> Store | None:
        """The store, opened on first use; None while there is none at the root (the
        dashboard waits for one instead of creating a folder where `wb` was typed)."""
        if self.store is None and (self.store_root / DB_NAME).exists():
            try:
                self.store = Store(self.store_root, create=False)
            except StoreError as exc:
                self.notify(str(exc), severity="error")
                return None
        return self.store

    def ensure_store(self) -> Store:
        """The store, created if needed (a launch from the dashboard)."""
        if self.store is None:
            self.store = Store(self.store_root, create=True)
        return self.store

    # -- lifecycle -----------------------------------------------------------------------

    def on_mount(self) -> None:
        from workbench.screens.runs import RunsScreen

        saved = load_theme_name()
        self._saved_theme = saved if saved in self.available_themes else DEFAULT_THEME
        self.theme = self._saved_theme
        self.sub_title = str(self.store_root)
        self.runs_screen = RunsScreen()
        self.push_screen(self.runs_screen)

    def watch_theme(self, name: str) -> None:
        """Remember a theme the user switched to (however: `t`, the palette, the
        built-in theme picker)."""
        if name == getattr(self, "_saved_theme", name):
            return
        self._saved_theme = name
        try:
            save_theme_name(name)
        except OSError as exc:
            self.notify(f"could not save the theme: {exc}", severity="warning")

    def on_unmount(self) -> None:
        if self.store is not None:
            self.store.close()

    async def open_run_screen(self, run_id: str) -> RunScreen:
        """Push the run screen of `run_id` and return it once mounted (the TUI bench
        uses this: the core reaches the screens only through the app)."""
        from workbench.screens.run import RunScreen

        screen = RunScreen(run_id)
        await self.push_screen(screen)
        return screen

    # -- actions -------------------------------------------------------------------------

    def action_keys(self) -> None:
        """?: the keys of the current screen and of the app."""
        from workbench.screens.keys import KeysScreen

        if not isinstance(self.screen, KeysScreen):
            self.push_screen(KeysScreen(self.screen))

    def action_next_theme(self) -> None:
        """t: the next workbench theme (dark, light, high contrast, ...)."""
        names = list(THEMES)
        current = names.index(self.theme) if self.theme in names else -1
        self.set_theme(names[(current + 1) % len(names)])

    def set_theme(self, name: str) -> None:
        self.theme = name
        self.notify(f"theme: {name}", timeout=1.5)

    def open_hosts_screen(self) -> None:
        """The hosts screen (reachability, GPUs and runs per host), unless shown already."""
        from workbench.screens.hosts import HostsScreen

        if not isinstance(self.screen, HostsScreen):
            self.push_screen(HostsScreen())

    def palette_commands(self) -> Iterable[Command]:
        """App-wide commands: the hosts screen from any screen, and the themes."""
        yield ("Show hosts", "reachability, GPUs and runs of every host (h on the runs)",
               self.open_hosts_screen)
        for name in THEMES:
            yield (f"Switch theme to {name}", "remembered for next time",
                   partial(self.set_theme, name))


def run_app(store: str | os.PathLike[str] | None = None) -> None:
    """Run the dashboard in this terminal until the user quits. An unhandled error
    (Textual prints its traceback on exit) exits with the app's non-zero code."""
    app = WorkbenchApp(store)
    app.run()
    if app.return_code:
        raise SystemExit(app.return_code)

"""`?`: a modal list of every key that works where the user pressed it.

Built from the live bindings (the focused widget's, the screen's and the app's), not
from a hand-kept list, so it cannot drift from what the keys actually do. Hidden
bindings (navigation keys the footer leaves out) are listed too: the footer shows
the most used keys, this screen shows all of them.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable

from workbench.themes import stylesheet


def binding_sections(screen: Screen[object]) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(section title, [(key, description), ...]), ...] for the bindings active on
    `screen`: its focused widget first, then the screen, then the app.

    Bindings without a description are listed under their action name, so that
    nothing bound is invisible.
    """
    app = screen.app
    sections: dict[str, list[tuple[str, str]]] = {}
    seen: set[tuple[str, str]] = set()
    active: dict[str, ActiveBinding] = screen.active_bindings
    for active_binding in active.values():
        node, binding = active_binding.node, active_binding.binding
        if node is app:
            title = "app"
        elif node is screen:
            title = type(screen).__name__.removesuffix("Screen").lower() or "screen"
        else:
            title = type(node).__name__
        key = app.get_key_display(binding)
        what = binding.description or binding.action.replace("_", " ")
        if (key, what) in seen:
            continue
        seen.add((key, what))
        sections.setdefault(title, []).append((key, what))
    # The command palette key is installed by Textual outside the BINDINGS lists.
    if app.ENABLE_COMMAND_PALETTE:
        palette = Binding(app.COMMAND_PALETTE_BINDING, "command_palette")
        entry = (app.get_key_display(palette), "command palette: every action by name")
        if entry not in seen:
            sections.setdefault("app", []).append(entry)
    # The screen's own actions first, then the app's, then widget navigation.
    own = type(screen).__name__.removesuffix("Screen").lower() or "screen"
    order = [t for t in (own, "app") if t in sections]
    order += [t for t in sections if t not in order]
    return [(title, sections[title]) for title in order]


class KeysScreen(ModalScreen[None]):
    """The key help. `escape`, `?` or `q` closes it."""

    CSS_PATH = str(stylesheet("dialogs"))
    COMPONENT_CLASSES: ClassVar[set[str]] = {"keys--section", "keys--key"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, screen: Screen[object]) -> None:
        """`screen`: the screen whose keys to list (the one `?` was pressed on)."""
        super().__init__()
        self.sections = binding_sections(screen)
        self.for_screen = type(screen).__name__

    def compose(self) -> ComposeResult:
        box = Vertical(id="keys-box")
        box.border_title = "Keys"
        box.border_subtitle = "escape closes · ctrl+p finds any action by name"
        with box:
            table: DataTable[Text | str] = DataTable(id="keys-table", cursor_type="row",
                                                     zebra_stripes=False, show_cursor=False)
            yield table

    def on_mount(self) -> None:
        table = self.query_one("#keys-table", DataTable)
        table.add_column("key", key="key")
        table.add_column("action", key="action")
        section_style = self.get_component_rich_style("keys--section", partial=True)
        key_style = self.get_component_rich_style("keys--key", partial=True)
        for title, keys in self.sections:
            table.add_row(Text(title, style=section_style), "", key=f"section-{title}")
            for key, what in keys:
                table.add_row(Text(key, style=key_style), what)
        table.focus()

    def rows(self) -> list[tuple[str, str]]:
        """Every (key, description) listed, for tests and the palette."""
        return [pair for _, keys in self.sections for pair in keys]

    def action_close(self) -> None:
        self.dismiss(None)

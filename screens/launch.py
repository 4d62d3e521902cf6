"""The launch screen: pick a built-in spec or a spec file, edit it in a form generated
from the spec's pydantic model, choose the host, launch.

The form's model (sections, fields, the draft that applies and validates the edits as
`wb launch --set` does) is `workbench/launch_form.py`, Textual-free; this screen draws
it: sections become collapsible groups, fields a Switch (bool), a Select (Literal, the
host) or an Input (a TOML value), with the field's description as help. Every change
re-validates; errors show under the field they concern, and the one-line `SpecError`
message (what `wb launch` would print) under the form.

A remote or multi-node launch (an ssh round trip: seconds) runs in a thread worker, so
the form stays responsive; a local one is a fork and returns at once.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import (
    Button,
    Collapsible,
    Footer,
    Input,
    Label,
    OptionList,
    Select,
    Static,
    Switch,
)
from textual.widgets.option_list import Option

from workbench.launch_form import Draft, FormField, command_line
from workbench.run_record import RunRecord
from workbench.spec import LoadedSpec, SpecError, builtin_specs
from workbench.themes import stylesheet


class FieldRow(Vertical):
    """One field: its label and control, its help, and room for its error."""

    def __init__(self, field: FormField, control: Widget) -> None:
        super().__init__(classes="field")
        self.field = field
        self.control = control

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-line"):
            yield Label(self.field.path[-1], classes="field-label")
            yield self.control
        if self.field.help:
            yield Static(self.field.help, classes="field-help", markup=False)
        error = Static("", classes="field-error", markup=False)
        error.display = False
        yield error

    def set_error(self, message: str | None) -> None:
        error = self.query_one(".field-error", Static)
        error.display = bool(message)
        error.update(message or "")
        self.set_class(bool(message), "-invalid")


def _control(field: FormField, widget_id: str) -> Widget:
    if field.control == "switch":
        return Switch(value=field.initial == "true", id=widget_id)
    if field.control == "select":
        return Select([(c, c) for c in field.choices], id=widget_id, allow_blank=field.optional,
                      value=field.initial if field.initial in field.choices else Select.NULL,
                      compact=True)
    return Input(value=field.initial, id=widget_id, compact=True,
                 placeholder="unset" if field.optional else "")


def _raw_of(widget: Widget) -> str:
    if isinstance(widget, Switch):
        return "true" if widget.value else "false"
    if isinstance(widget, Select):
        return "" if widget.value is Select.NULL else str(widget.value)
    assert isinstance(widget, Input)
    return widget.value


class LaunchScreen(Screen[str | None]):
    """Dismissed with the new run's id (launched) or None (cancelled)."""

    CSS_PATH = str(stylesheet("launch"))
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+l", "launch", "Launch", priority=True),
        Binding("l", "launch", "Launch", show=False),
        Binding("escape", "cancel", "Back"),
        Binding("ctrl+o", "focus_path", "Spec file"),
        Binding("ctrl+b", "focus_recipes", "Built-ins"),
        Binding("ctrl+e", "toggle_sections", "Expand/collapse"),
    ]

    def __init__(self, source: str | None = None) -> None:
        """`source`: the spec to start from (a built-in name or a file path)."""
        super().__init__()
        self.builtins = builtin_specs()
        self.initial_source = source or next(iter(self.builtins), None)
        self.draft: Draft | None = None
        self.rows: dict[str, FieldRow] = {}
        self.message = ""  # the one-line SpecError of the current values, or ""
        self.launched: str | None = None
        self.loading = False  # a form is being (re)built: its rows are not mounted yet

    def compose(self) -> ComposeResult:
        with Horizontal(id="launch-main"):
            with Vertical(id="launch-side"):
                options = []
                for name, text in self.builtins.items():
                    try:
                        kind = tomllib.loads(text).get("kind", "?")
                    except tomllib.TOMLDecodeError:
                        kind = "?"
                    options.append(Option(f"{name}  [dim]{kind}[/]", id=name))
                recipes = OptionList(*options, id="launch-recipes")
                recipes.border_title = "built-in specs"
                yield recipes
                path = Input(placeholder="or a spec file path", id="launch-path")
                path.border_title = "spec file (enter)"
                yield path
            with Vertical(id="launch-body"):
                yield Static("", id="launch-title", markup=False)
                yield VerticalScroll(id="launch-form")
                yield Static("", id="launch-command", markup=False)
                yield Static("", id="launch-message", markup=False)
                with Horizontal(id="launch-buttons"):
                    yield Button("Launch (ctrl+l)", id="launch-go", variant="success",
                                 compact=True)
                    yield Button("Back (esc)", id="launch-cancel", compact=True)
        yield Footer()

    async def on_mount(self) -> None:
        if self.initial_source is not None:
            if self.initial_source in self.builtins:
                recipes = self.query_one("#launch-recipes", OptionList)
                recipes.highlighted = list(self.builtins).index(self.initial_source)
            await self.load(self.initial_source)
        self.query_one("#launch-recipes", OptionList).focus()

    # -- loading a spec -------------------------------------------------------------------

    async def load(self, source: str) -> bool:
        """Make the form for a spec; on failure keep the current form and say why."""
        try:
            draft = Draft.load(source)
        except SpecError as exc:
            self._say(str(exc), error=True)
            return False
        # Until the new rows are mounted, a keypress (ctrl+l) or a field event must not
        # validate or launch: neither the old rows (being removed) nor the new ones
        # (not composed yet) can be read.
        self.loading = True
        try:
            await self._build_form(draft)
        finally:
            self.loading = False
        self.revalidate()
        return True

    async def _build_form(self, draft: Draft) -> None:
        form = self.query_one("#launch-form", VerticalScroll)
        await form.remove_children()
        self.rows = {}
        groups: list[Widget] = []
        counter = 0
        for i, section in enumerate(draft.sections):
            rows = []
            for field in section.fields:
                counter += 1
                row = FieldRow(field, _control(field, f"field-{counter}"))
                self.rows[field.key] = row
                rows.append(row)
            title = section.title + (f" — {section.help}" if section.help else "")
            # Open at first: the run's own values and where it runs (the host choice).
            opened = section.title in ("run", "resources")
            groups.append(Collapsible(*rows, title=title, collapsed=not opened,
                                      id=f"section-{i}"))
        await form.mount_all(groups)
        self.draft = draft
        self.query_one("#launch-title", Static).update(
            f"{draft.source} ({draft.kind})" + (f": {draft.description}"
                                                 if draft.description else ""))

    @on(OptionList.OptionSelected, "#launch-recipes")
    async def _recipe_chosen(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            await self.load(event.option.id)

    @on(Input.Submitted, "#launch-path")
    async def _path_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if not path:
            return
        if not Path(path).expanduser().is_file():
            self._say(f"no spec file {path!r} — give the path of a .toml spec", error=True)
            return
        if await self.load(path) and self.rows:
            next(iter(self.rows.values())).control.focus()

    # -- validation -------------------------------------------------------------------------

    def raw_values(self) -> dict[str, str]:
        """The text of every field as the user left it."""
        return {key: _raw_of(row.control) for key, row in self.rows.items()}

    @on(Input.Changed, "#launch-form Input")
    @on(Switch.Changed, "#launch-form Switch")
    @on(Select.Changed, "#launch-form Select")
    def _field_changed(self) -> None:
        self.revalidate()

    def revalidate(self) -> LoadedSpec | None:
        """Validate the current values with the real spec model; show what is wrong."""
        if self.draft is None or self.loading:
            return None
        raw = self.raw_values()
        loaded, errors, message = self.draft.build(raw)
        for key, row in self.rows.items():
            row.set_error(errors.get(key))
        for key in errors:  # an error inside a collapsed section must be seen
            parent = self.rows[key].parent
            while parent is not None and not isinstance(parent, Collapsible):
                parent = parent.parent
            if isinstance(parent, Collapsible):
                parent.collapsed = False
        self.query_one("#launch-command", Static).update(command_line(self.draft, raw))
        self._say(message or "valid — ctrl+l launches", error=bool(message))
        self.query_one("#launch-go", Button).disabled = loaded is None
        return loaded

    def _say(self, message: str, *, error: bool) -> None:
        self.message = message if error else ""
        line = self.query_one("#launch-message", Static)
        line.update(message)
        line.set_class(error, "-error")

    # -- actions -------------------------------------------------------------------------

    @on(Button.Pressed, "#launch-go")
    def _go_pressed(self) -> None:
        self.action_launch()

    @on(Button.Pressed, "#launch-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    def action_launch(self) -> None:
        """Launch what the form says, once this screen has handled what came before.

        A binding runs outside this screen's message queue: Enter on a spec and then a
        quick ctrl+l would otherwise launch the previous form while the chosen spec is
        still queued to load. call_later puts the launch behind it."""
        self.call_later(self._launch_now)

    def _launch_now(self) -> None:
        """Launch what the form says, if it is valid; then back to the runs."""
        from workbench.launch import backends

        if self.launched is not None or not self.is_attached:  # one launch per visit
            return
        if self.loading:
            self.notify("the form is still loading", severity="warning")
            return
        loaded = self.revalidate()
        if loaded is None:
            self.notify(self.message or "choose a spec first", severity="error",
                        title="not launched")
            return
        store = self.app.ensure_store()  # type: ignore[attr-defined]
        if backends.host_of(loaded) != "local" or loaded.spec.resources.nodes > 1:
            # ssh to the host takes seconds: off the UI thread, one launch at a time.
            self.launched = ""
            self.notify("launching over ssh…", timeout=3)
            self._launch_in_thread(loaded, store.root)
            return
        try:
            row = backends.start(store, loaded).record
        except Exception as exc:  # a store or OS error: say it, stay on the form
            self.notify(f"launch failed: {exc}", severity="error")
            return
        self._launched(row)

    @work(thread=True, group="launch")
    def _launch_in_thread(self, loaded: LoadedSpec, root: Path) -> None:
        """A remote or multi-node launch, on a store connection of its own."""
        from workbench.launch import backends
        from workbench.store import Store

        try:
            with Store(root, create=False) as st:
                row = backends.start(st, loaded).record
        except Exception as exc:  # unreachable host, refused spec: say it, stay on the form
            self.app.call_from_thread(self._launch_failed, exc)
            return
        self.app.call_from_thread(self._launched, row)

    def _launch_failed(self, exc: Exception) -> None:
        self.launched = None
        self.notify(f"launch failed: {exc}", severity="error")

    def _launched(self, row: RunRecord) -> None:
        self.launched = row.id
        self.notify(f"launched {row.name} ({row.id})")
        if self.is_attached:
            self.dismiss(row.id)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_focus_path(self) -> None:
        self.query_one("#launch-path", Input).focus()

    def action_focus_recipes(self) -> None:
        self.query_one("#launch-recipes", OptionList).focus()

    def action_toggle_sections(self) -> None:
        sections = list(self.query(Collapsible))
        expand = any(c.collapsed for c in sections)
        for c in sections:
            c.collapsed = not expand

    def set_field(self, key: str, value: str | bool) -> None:
        """Set a field's control (tests, scripted use)."""
        control = self.rows[key].control
        if isinstance(control, Switch):
            control.value = bool(value) if isinstance(value, bool) else value == "true"
        elif isinstance(control, Select):
            control.value = value
        else:
            assert isinstance(control, Input)
            control.value = str(value)

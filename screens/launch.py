"""The launch screen: pick a built-in spec or a spec file, edit it in a form generated
from the spec's pydantic model, choose the host, launch.

The form is generated, not hand-written, so every recipe (and every field a later
issue adds) gets a form for free: sections become collapsible groups, fields become
a Switch (bool), a Select (Literal, the host) or an Input (anything else, read as a
TOML value exactly as `--set` reads it), with the field's description as help.

A launch is the equivalent of `wb launch NAME --set k=v ...` built from the fields
the user edited, applied with the same `spec.apply_override` and validated by the
same model, so the form can never accept what the CLI would refuse (or the other way
round). Every change re-validates; errors show under the field they concern, and the
one-line `SpecError` message (what `wb launch` would print) under the form.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ValidationError
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

from workbench.spec import (
    LoadedSpec,
    SpecBase,
    SpecError,
    apply_override,
    builtin_specs,
    configured_hosts,
    read_source,
    spec_model_for,
    validate,
)
from workbench.themes import stylesheet

# -- the form, without Textual -----------------------------------------------------------

Control = Literal["input", "switch", "select"]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class FormField:
    """One editable value of a spec: where it lives and how it is edited."""

    path: tuple[str, ...]
    control: Control
    initial: str  # the value as the control shows it (TOML text for an Input)
    help: str = ""
    choices: tuple[str, ...] = ()
    optional: bool = False  # an empty Input (blank Select) means "unset" (None)

    @property
    def key(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class FormSection:
    title: str
    help: str
    fields: tuple[FormField, ...]


def toml_value(value: Any) -> str:
    """A value as TOML source text (what `--set` would be given)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # JSON strings are TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{k if _BARE_KEY.fullmatch(str(k)) else json.dumps(str(k))} = "
                 f"{toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return json.dumps(str(value))


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner annotation, accepts None) of Optional[X]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _leaf(path: tuple[str, ...], annotation: Any, value: Any, help_text: str) -> FormField:
    inner, optional = _unwrap(annotation)
    if path == ("resources", "host"):
        hosts = configured_hosts()
        choices = tuple(hosts if value in hosts else [*hosts, str(value)])
        return FormField(path, "select", str(value), help_text, choices)
    if inner is bool and not optional:
        return FormField(path, "switch", toml_value(bool(value)), help_text)
    if typing.get_origin(inner) is Literal:
        choices = tuple(str(a) for a in typing.get_args(inner))
        return FormField(path, "select", "" if value is None else str(value), help_text,
                         choices, optional)
    if inner is str:  # shown bare: coerce() keeps a str field's text as it is
        return FormField(path, "input", "" if value is None else str(value), help_text,
                         optional=optional)
    return FormField(path, "input", toml_value(value), help_text, optional=optional)


def form_sections(model: type[SpecBase], values: dict[str, Any]) -> list[FormSection]:
    """The form of a spec model, filled with `values` (the validated spec, dumped).

    Top-level values go to a first "run" section; each sub-model is a section (nested
    models flatten into dotted labels); a free-form table with values (a script's
    `config`) is a section with one field per key, since those keys are what one edits.
    """
    top: list[FormField] = []
    sections: list[FormSection] = []
    for name, info in model.model_fields.items():
        if name == "kind":
            continue
        inner, _ = _unwrap(info.annotation)
        value = values.get(name)
        if _is_model(inner):
            doc = (inner.__doc__ or "").strip().splitlines()
            fields = tuple(_model_fields(inner, (name,), value or {}))
            sections.append(FormSection(name, doc[0] if doc else "", fields))
        elif _is_free_table(inner) and isinstance(value, dict) and value and all(
                not isinstance(v, dict) for v in value.values()):
            fields = tuple(FormField((name, str(k)), "input", toml_value(v),
                                     "free-form value (TOML)") for k, v in value.items())
            sections.append(FormSection(name, info.description or "", fields))
        else:
            top.append(_leaf((name,), info.annotation, value, info.description or ""))
    return [FormSection("run", "name, seed and the values every spec has", tuple(top)),
            *sections]


def _model_fields(model: type[BaseModel], prefix: tuple[str, ...],
                  values: dict[str, Any]) -> list[FormField]:
    out: list[FormField] = []
    for name, info in model.model_fields.items():
        inner, _ = _unwrap(info.annotation)
        value = values.get(name) if isinstance(values, dict) else None
        if _is_model(inner):
            out += _model_fields(inner, (*prefix, name), value or {})
        else:
            out.append(_leaf((*prefix, name), info.annotation, value, info.description or ""))
    return out


def _is_free_table(annotation: Any) -> bool:
    if annotation is dict:
        return True
    if typing.get_origin(annotation) is not dict:
        return False
    args = typing.get_args(annotation)
    return not args or args[1] is Any


@dataclass
class Draft:
    """A spec being edited: its source text, model, and the form's fields."""

    source: str  # a built-in name or a file path: the LoadedSpec's source
    text: str
    model: type[SpecBase]
    sections: list[FormSection]
    kind: str = ""
    description: str = ""

    @classmethod
    def load(cls, source: str) -> Draft:
        """Read and validate a spec (SpecError when it cannot be used as a starting
        point: unreadable, invalid TOML, unknown kind, or invalid as it stands)."""
        text, label = read_source(source)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{label}: invalid TOML: {exc}") from None
        model = spec_model_for(data.get("kind"), label)
        spec = validate(model, data)
        return cls(label, text, model, form_sections(model, spec.model_dump(mode="json")),
                   kind=spec.kind, description=spec.description)

    @property
    def fields(self) -> list[FormField]:
        return [f for s in self.sections for f in s.fields]

    def overrides(self, raw: dict[str, str]) -> list[str]:
        """`--set KEY=VALUE` items for the fields whose text differs from the spec's."""
        return [f"{f.key}={raw[f.key]}" for f in self.fields
                if f.key in raw and raw[f.key] != f.initial]

    def build(self, raw: dict[str, str]) -> tuple[LoadedSpec | None, dict[str, str], str]:
        """Apply the edited fields and validate: (spec or None, {field key: error},
        the one-line SpecError message, or "" when valid)."""
        data = tomllib.loads(self.text)
        errors: dict[str, str] = {}
        by_key = {f.key: f for f in self.fields}
        for f in self.fields:
            text = raw.get(f.key, f.initial)
            if text == f.initial:
                continue
            if text.strip() == "" and f.optional:  # unset: `--set` cannot say it
                node = data
                for part in f.path[:-1]:
                    node = node.setdefault(part, {})
                node[f.path[-1]] = None
                continue
            try:
                apply_override(self.model, data, f"{f.key}={text}")
            except SpecError as exc:
                errors[f.key] = str(exc)
        try:
            self.model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(str(p) for p in err["loc"])
                key = next((".".join(loc[:n]) for n in range(len(loc), 0, -1)
                            if ".".join(loc[:n]) in by_key), None)
                if key is not None:
                    errors.setdefault(key, err["msg"].removeprefix("Value error, "))
        try:
            spec = validate(self.model, data)
        except SpecError as exc:
            return None, errors, str(exc)
        if errors:  # an override that could not even be applied
            first = next(iter(errors.items()))
            return None, errors, f"{first[0]}: {first[1]}"
        return LoadedSpec(spec, self.source), errors, ""


# -- the screen ---------------------------------------------------------------------------


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
        sets = " ".join(f"--set {_shell_quote(o)}" for o in self.draft.overrides(raw))
        self.query_one("#launch-command", Static).update(
            f"$ wb launch {_shell_quote(self.draft.source)}" + (f" {sets}" if sets else ""))
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
        from workbench.launch import control

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
        if control.host_of(loaded) != "local" or loaded.spec.resources.nodes > 1:
            # ssh to the host takes seconds: off the UI thread, one launch at a time.
            self.launched = ""
            self.notify("launching over ssh…", timeout=3)
            self._launch_in_thread(loaded, store.root)
            return
        try:
            row = control.start(store, loaded)
        except Exception as exc:  # a store or OS error: say it, stay on the form
            self.notify(f"launch failed: {exc}", severity="error")
            return
        self._launched(row)

    @work(thread=True, group="launch")
    def _launch_in_thread(self, loaded: LoadedSpec, root: Path) -> None:
        """A remote or multi-node launch, on a store connection of its own."""
        from workbench.launch import control
        from workbench.store import Store

        try:
            with Store(root, create=False) as st:
                row = control.start(st, loaded)
        except Exception as exc:  # unreachable host, refused spec: say it, stay on the form
            self.app.call_from_thread(self._launch_failed, exc)
            return
        self.app.call_from_thread(self._launched, row)

    def _launch_failed(self, exc: Exception) -> None:
        self.launched = None
        self.notify(f"launch failed: {exc}", severity="error")

    def _launched(self, row: dict[str, Any]) -> None:
        self.launched = row["id"]
        self.notify(f"launched {row['name']} ({row['id']})")
        if self.is_attached:
            self.dismiss(row["id"])

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


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)

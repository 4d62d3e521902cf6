"""The launch form's model: a spec's pydantic model walked into sections and fields,
and the edited values applied and validated exactly as `wb launch --set` does.

The launch screen (`screens/launch.py`) draws these fields as Textual controls; none
of this needs Textual, so it lives in the core and is tested without an app. The form
is generated, not hand-written, so every recipe (and every field a later issue adds)
gets a form for free: sub-models become sections (nested ones flatten into dotted
labels), a bool a switch, a Literal (and the host) a choice, anything else a TOML value
read as `--set` reads it.

A launch is the equivalent of `wb launch NAME --set k=v ...` built from the fields the
user edited (`Draft.overrides`, `command_line`), applied with the same
`spec.apply_override` and validated by the same model (`Draft.build`), so the form can
never accept what the CLI would refuse, or the other way round.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import tomllib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from workbench.spec import (
    LoadedSpec,
    SpecBase,
    SpecError,
    apply_override,
    configured_hosts,
    read_source,
    spec_model_for,
    validate,
)

# How a field is edited: a TOML value typed in, an on/off switch, or one of its choices.
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
    """A group of fields: the top-level values ("run"), or one sub-model of the spec,
    titled with its name and the first line of its docstring."""

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
    """A pydantic sub-model: a section of its own, not a field."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _leaf(path: tuple[str, ...], annotation: Any, value: Any, help_text: str) -> FormField:
    """The field of one value: the control its type calls for, filled with `value`. The
    host is a choice among the configured hosts (plus the spec's own, if unknown)."""
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
    """The fields of a sub-model, nested sub-models flattened under dotted paths."""
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
    """A `dict` or `dict[str, Any]` field (a script's `config`): keys are the user's."""
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
        """Every field, section after section."""
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


def command_line(draft: Draft, raw: dict[str, str]) -> str:
    """The `wb launch` command the form amounts to, shell-quoted: shown under the form so
    a launch can be repeated (or scripted) from a terminal."""
    sets = " ".join(f"--set {shlex.quote(o)}" for o in draft.overrides(raw))
    return f"$ wb launch {shlex.quote(draft.source)}" + (f" {sets}" if sets else "")

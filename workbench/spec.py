"""Experiment specs: TOML -> validated, typed config, with `--set a.b=value` overrides.

Specs are pydantic models rather than dataclasses because pydantic gives, for
free, what we would otherwise hand-write: type coercion of `--set` strings,
range constraints (`gt=0`), `extra="forbid"` for unknown keys with the exact
location of each error, and a JSON schema that the dashboard's launch form is
generated from.

Every refusal is a `SpecError` whose message is one line naming the key and
the fix; the CLI prints it and exits 2 before anything is created.
"""

from __future__ import annotations

import difflib
import sys
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from workbench.kinds import RECIPES
from workbench.store import StoreError, validate_name


class SpecError(ValueError):
    """A spec that cannot run. The message is one line: the key, the problem, the fix."""


class Section(BaseModel):
    """Base for spec sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(Section):
    """Where and how wide a run executes.

    A multi-node run has `nodes * procs` ranks: node R runs ranks R*procs ..
    (R+1)*procs - 1 and node 0 holds global rank 0, which logs and checkpoints
    (launch/distributed.py). `hosts` names the machine of each node, node 0 first.
    Left empty, every node runs on this machine (loopback rendezvous): that is how
    multi-node launching is tested without a second machine, so it is allowed. With
    `hosts` set, `host` is not needed (node 0 runs on hosts[0]); naming another host
    there is refused rather than guessed at.
    """

    host: str = Field("local", description="Host to run on; 'local' is this machine.")
    procs: int = Field(1, ge=1, le=1024, description="Worker processes on each node.")
    nodes: int = Field(1, ge=1, le=1024,
                       description="Nodes (machines) the run spans; each runs `procs` ranks.")
    hosts: list[str] = Field(default_factory=list, description=(
        "Hosts of a multi-node run, node 0 first; each must be configured (`wb hosts "
        "add`) or 'local'. Empty: every node on this machine."))
    rdzv_port: int = Field(29400, ge=1024, le=65535, description=(
        "TCP port of the multi-node rendezvous, opened on node 0's host."))
    master_addr: str | None = Field(None, description=(
        "Node 0's address as the other nodes reach it; default: the HostName ssh uses "
        "for node 0's host (127.0.0.1 when every node is here)."))

    @field_validator("host")
    @classmethod
    def _known_host(cls, host: str) -> str:
        known = configured_hosts()
        if host not in known:
            raise ValueError(f"host {host!r} is not configured (known: {', '.join(known)})")
        return host

    @field_validator("hosts")
    @classmethod
    def _one_known_host_per_node(cls, hosts: list[str], info: ValidationInfo) -> list[str]:
        known = configured_hosts()
        for host in hosts:
            if host not in known:
                raise ValueError(f"host {host!r} is not configured (known: "
                                 f"{', '.join(known)}); add it with `wb hosts add`")
        nodes = info.data.get("nodes")  # absent when `nodes` itself was invalid
        if hosts and nodes is not None and len(hosts) != nodes:
            raise ValueError(f"lists {len(hosts)} host(s) but resources.nodes is {nodes}: "
                             "name one host per node (node 0 first), or none to run "
                             "every node here")
        host = info.data.get("host", "local")
        if hosts and host not in ("local", hosts[0]):  # two answers to "where is node 0"
            raise ValueError(f"node 0 runs on the first host ({hosts[0]!r}) but "
                             f"resources.host is {host!r}: set resources.host to "
                             f"{hosts[0]!r} or leave it 'local'")
        return hosts


class SpecBase(Section):
    """Fields every spec has. Recipes subclass it with `kind: Literal[...]` and sections."""

    kind: str
    name: str | None = Field(None, description="Run name; defaults to KIND-N.")
    description: str = Field("", description="One line shown by `wb recipes`.")
    seed: int = Field(0, ge=0, description="Seed for every random generator of the run.")
    resources: Resources = Field(default_factory=Resources)

    def run_config(self) -> dict[str, Any]:
        """What the run's `config` holds (what `run.config` returns to the code)."""
        return self.model_dump(mode="json")

    def for_launch(self) -> SpecBase:
        """The spec as launched: values that depend on where `wb` ran (a working
        directory) filled in, so the stored spec reproduces the run and `wb resume`
        works from any folder. Kinds with such values override it."""
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str | None) -> str | None:
        if name is None:
            return None
        try:
            return validate_name(name)
        except StoreError as exc:
            raise ValueError(str(exc)) from None


def configured_hosts() -> list[str]:
    """Hosts a spec may name: local, and those added by `wb hosts add`."""
    from workbench.hosts import LOCAL, load_hosts

    return [LOCAL, *load_hosts()]


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec plus the TOML that reproduces it (overrides applied)."""

    spec: SpecBase
    source: str  # built-in name or file path

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def default_name(self) -> str:
        """Runs are named after their spec: a built-in's name or the file's stem."""
        stem = Path(self.source).stem if self.source.endswith(".toml") else self.source
        return stem if _is_name(stem) else self.spec.kind

    def to_toml(self) -> str:
        return dump_toml(self.spec)


def _is_name(text: str) -> bool:
    try:
        validate_name(text)
    except StoreError:
        return False
    return True


def dump_toml(spec: BaseModel) -> str:
    return tomli_w.dumps(spec.model_dump(mode="json", exclude_none=True))


# -- finding specs ---------------------------------------------------------------------


# Built-in groups live beside the specs but are not specs themselves.
GROUPS_FILE = "groups.toml"


def builtin_specs() -> dict[str, str]:
    """Built-in spec name -> TOML text, from the package data in workbench/specs."""
    root = resources.files("workbench.specs")
    return {
        p.name.removesuffix(".toml"): p.read_text()
        for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".toml") and p.name != GROUPS_FILE
    }


@dataclass(frozen=True)
class GroupDef:
    """A built-in group: several specs launched together for comparison."""

    name: str
    specs: tuple[str, ...]
    description: str = ""
    parallel: int = 1  # runs of the group that train at once by default


def builtin_groups() -> dict[str, GroupDef]:
    """Group name -> GroupDef, from workbench/specs/groups.toml (`[NAME]` tables)."""
    path = resources.files("workbench.specs") / GROUPS_FILE
    if not path.is_file():
        return {}
    out = {}
    for name, table in tomllib.loads(path.read_text()).items():
        out[name] = GroupDef(name=name, specs=tuple(table["specs"]),
                             description=table.get("description", ""),
                             parallel=int(table.get("parallel", 1)))
    return out


def expand_sources(args: list[str] | tuple[str, ...]) -> tuple[list[str], GroupDef | None]:
    """`wb launch` arguments -> spec sources, expanding built-in group names.

    A file wins over a built-in spec, which wins over a built-in group of the same name.
    The GroupDef is returned when the arguments are exactly one built-in group, so its
    defaults (name, parallel) apply.
    """
    specs = builtin_specs()
    groups = builtin_groups()
    sources: list[str] = []
    used: list[GroupDef] = []
    if STDIN in args and len(args) > 1:
        raise SpecError("a spec from stdin ('-') launches alone — pass the other specs "
                        "in another `wb launch`")
    for arg in args:
        if arg == STDIN or Path(arg).expanduser().is_file() or arg in specs:
            sources.append(arg)
        elif arg in groups:
            used.append(groups[arg])
            sources.extend(groups[arg].specs)
        else:
            hint = _did_you_mean(arg, [*specs, *groups])
            raise SpecError(
                f"no spec {arg!r}: not a file and not a built-in recipe"
                + (f" — did you mean {hint}?" if hint else " (see `wb recipes`)"))
    return sources, (used[0] if len(used) == 1 and len(args) == 1 else None)


STDIN = "-"  # `wb launch -`: the spec's TOML on stdin (how a remote launch ships it)


def read_source(source: str) -> tuple[str, str]:
    """(text, label) for a spec file path, a built-in spec name, or '-' (stdin)."""
    if source == STDIN:
        return sys.stdin.read(), "the spec on stdin"
    path = Path(source).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SpecError(f"cannot read spec {source!r}: {reason} — check the file") from None
    builtins = builtin_specs()
    if source in builtins:
        return builtins[source], source
    hint = _did_you_mean(source, builtins)
    raise SpecError(
        f"no spec {source!r}: not a file and not a built-in recipe"
        + (f" — did you mean {hint}?" if hint else " (see `wb recipes`)")
    )


# -- loading -----------------------------------------------------------------------------


def load_spec(source: str, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    text, label = read_source(source)
    return LoadedSpec(parse_spec(text, overrides, label=label),
                      STDIN if source == STDIN else label)


def load_specs(sources: list[str] | tuple[str, ...],
               overrides: list[str] | tuple[str, ...] = ()) -> list[LoadedSpec]:
    """Load and validate every spec of a group launch before anything starts.

    Specs of different kinds have different keys (`train.steps` vs `config.steps`),
    so each `--set` applies to the specs that have its key; a key that no spec has is
    refused, as a typo would be for one spec. One spec: exactly `load_spec`.
    """
    if len(sources) == 1:
        return [load_spec(sources[0], overrides)]
    texts = [read_source(s) for s in sources]
    models = [_model_of(text, overrides, label) for text, label in texts]
    chosen: list[list[str]] = [[] for _ in sources]
    for item in overrides:
        key, sep, _ = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set resources.procs=2")
        misses: list[str] = []
        for i, model in enumerate(models):
            try:
                field_annotation(model, key.split("."))
            except SpecError as exc:
                misses.append(str(exc))
            else:
                chosen[i].append(item)
        if len(misses) == len(models):  # the message with a "did you mean" helps most
            best = next((m for m in misses if "did you mean" in m), misses[0])
            raise SpecError(f"{best} (no spec of the group has it)")
    return [LoadedSpec(parse_spec(text, chosen[i], label=label), label)
            for i, (text, label) in enumerate(texts)]


def _model_of(text: str, overrides: list[str] | tuple[str, ...], label: str) -> type[SpecBase]:
    """The spec model a text (with a possible `--set kind=...`) is validated against."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{label}: invalid TOML: {exc}") from None
    for item in overrides:
        if item.partition("=")[0].strip() == "kind":
            data["kind"] = coerce(item.partition("=")[2].strip(), str)
    return spec_model_for(data.get("kind"), label)


def parse_spec(text: str, overrides: list[str] | tuple[str, ...] = (),
               label: str = "spec") -> SpecBase:
    """Parse TOML text, apply `--set` overrides, and validate against the kind's model."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{label}: invalid TOML: {exc}") from None
    # `--set kind=...` picks the model, so it applies before the others are checked.
    for item in overrides:
        if item.partition("=")[0].strip() == "kind":
            data["kind"] = coerce(item.partition("=")[2].strip(), str)
    model = spec_model_for(data.get("kind"), label)
    for item in overrides:
        apply_override(model, data, item)
    return validate(model, data)


def spec_model_for(kind: object, label: str = "spec") -> type[SpecBase]:
    if not isinstance(kind, str):
        raise SpecError(f"{label}: missing key kind — add kind = one of "
                        f"{', '.join(repr(k) for k in RECIPES)}")
    if kind not in RECIPES:
        hint = _did_you_mean(kind, RECIPES)
        raise SpecError(f"unknown kind {kind!r}" + (f" — did you mean {hint}?" if hint else
                        f" — use one of {', '.join(repr(k) for k in RECIPES)}"))
    return RECIPES[kind].spec_model()


def validate(model: type[SpecBase], data: dict[str, Any]) -> SpecBase:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_one_line(model, exc)) from None


def apply_override(model: type[BaseModel], data: dict[str, Any], item: str) -> None:
    """Apply `a.b=value` to the raw spec dict, coercing the string to the field's type."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set resources.procs=2")
    path = key.split(".")
    annotation = field_annotation(model, path)
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {key}: {part} is not a table")
        node = child
    node[path[-1]] = coerce(raw.strip(), annotation)


def field_annotation(model: type[BaseModel], path: list[str]) -> Any:
    """The annotation at a dotted path, or SpecError("unknown key ... did you mean ...")."""
    current: Any = model
    for i, part in enumerate(path):
        inner = _unwrap(current)
        if inner is Any:  # free-form values (e.g. a dict[str, Any] section): any depth
            return Any
        if _is_dict(inner):
            current = typing.get_args(inner)[1] if typing.get_args(inner) else Any
            continue
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            raise SpecError(f"unknown key {'.'.join(path)} — {'.'.join(path[:i])} "
                            "is a value, not a table")
        if part not in inner.model_fields:
            raise SpecError(_unknown_key(inner, path[:i], part, path[i + 1:]))
        current = inner.model_fields[part].annotation
    return current


def coerce(raw: str, annotation: Any) -> Any:
    """Strings stay strings for str fields; anything else is read as a TOML value."""
    if _accepts_str_only(annotation):
        if raw[:1] in ('"', "'"):  # a quoted TOML string: --set name='"007"'
            try:
                value = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                return raw
            return value if isinstance(value, str) else raw
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # let validation name the type it wanted


# -- messages ----------------------------------------------------------------------------


def _one_line(model: type[BaseModel], exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    more = f" [+{exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        if owner is not None:
            return _unknown_key(owner, loc[:-1], loc[-1])
        return f"unknown key {key} — remove it"
    if err["type"] == "missing":
        return f"missing key {key} — add it to the spec or pass --set {key}=VALUE"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across keys (model validator): its message names keys and fix
        return f"{msg}{more}"
    got = err.get("input")
    shown = ("" if isinstance(got, dict) or got is None or repr(got) in msg
             else f" (got {got!r})")
    return f"{key}: {msg}{shown} — fix it in the spec or with --set {key}=VALUE{more}"


def _unknown_key(owner: type[BaseModel], prefix: list[str], part: str,
                 rest: list[str] | None = None) -> str:
    """`rest`: the keys below `part` in a --set path (confg.steps -> config.steps)."""
    full = ".".join([*prefix, part, *(rest or [])])
    hint = _did_you_mean(part, owner.model_fields)
    if hint:
        return f"unknown key {full} — did you mean {'.'.join([*prefix, hint, *(rest or [])])}?"
    fields = ", ".join(owner.model_fields)
    return f"unknown key {full} — valid keys{' in ' + '.'.join(prefix) if prefix else ''}: {fields}"


def _did_you_mean(word: str, options: Any) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return close[0] if close else None


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        inner = _unwrap(current)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        if part not in inner.model_fields:
            return None
        current = inner.model_fields[part].annotation
    inner = _unwrap(current)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Optional[X] -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_dict(annotation: Any) -> bool:
    return annotation is dict or typing.get_origin(annotation) is dict


def _accepts_str_only(annotation: Any) -> bool:
    inner = _unwrap(annotation)
    if inner is str:
        return True
    if typing.get_origin(inner) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(inner))
    return False

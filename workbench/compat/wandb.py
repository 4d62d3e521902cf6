"""A W&B-compatible front end to the workbench: `import workbench.compat.wandb as wandb`.

A training script written for Weights & Biases runs against the workbench by
changing that one import. The calls keep W&B's shapes and its step rules; the data
lands in the workbench store (see `wb ls`, `wb show`, the dashboard) instead of a
W&B server. Nothing here talks to a network, and `wandb` itself is not needed.

Supported, with W&B semantics:
  - `init(...)` -> `Run` (also `wandb.run`), a context manager; `mode="disabled"`
    (or WANDB_MODE=disabled) gives a run that accepts everything and writes nothing.
    `name` is the run name and `group` the workbench group, both made valid workbench
    names (1-64 of letters, digits, '.', '_', '-') with a warning when they change;
    without a name the run is called PROJECT-N. WANDB_PROJECT, WANDB_NAME,
    WANDB_RUN_GROUP, WANDB_TAGS, WANDB_NOTES, WANDB_JOB_TYPE, WANDB_ENTITY and
    WANDB_MODE fill the arguments left out, as in W&B.
  - `log(data, step=None, commit=None)`: an internal step that advances on each
    commit; `commit=False` accumulates into the same step; a larger `step` commits
    what is pending and moves there; a smaller one is dropped with a warning (W&B
    drops it too). Nested dicts are flattened with '/'. Numbers, numpy and torch
    scalars are scalars; `Histogram`, and numpy arrays or tensors of more than 32
    values (W&B turns those into 32-bin histograms), are distributions.
  - `config`: attribute and item access, `update(d, allow_val_change=)`,
    `setdefaults(d)`; changing a key's value without `allow_val_change` raises
    `ConfigError` as W&B does. Every change is written to the run's config.
  - `summary`: the last value of each key, or what `define_metric(summary=...)`
    asks for ("min", "max", "mean", "first", "last", "best" with `goal`, "none",
    "copy"); assignments override. Written to the run's config under
    `wandb.summary` when the run finishes (also at exit and on a crash).
  - `define_metric(name, step_metric=...)`: keys defined against a step metric (an
    exact name or a "prefix/*" glob, as in W&B) are recorded at that metric's value,
    taken from the same commit or else its last logged value (`step_sync`). The
    workbench has one step axis per point, so this is how `val/loss` against `epoch`
    shows up against the epoch in `wb show` and the dashboard.
  - `finish(exit_code=None)`: "finished", or "failed" for a nonzero exit code.
  - `alert(title, text, level)` -> an `alert` event on the run.
  - `login`, `setup`, `require`, `Settings`: accepted; they configure W&B's client,
    which has no counterpart here. `termlog`/`termwarn`/`termerror` print to stderr.

W&B-only metadata (project, entity, tags, notes, job_type, the requested id, ...)
is recorded in the run's config under the key `wandb`, next to `wandb.summary`; that
key is therefore reserved. Values the workbench cannot chart (strings, short lists)
are kept in the summary only, and media (`Image`, `Table`, `Audio`, `Video`, `Html`,
`wandb.plot.*`, ...) are skipped: both warn once per key (`CompatWarning`) so that
training goes on. Calls with no workbench counterpart (`watch`, `save`, `Artifact`,
`sweep`, `agent`, `Api`, ...) raise `NotImplementedError` in one line that says what
to do instead, and an attribute W&B does not have raises `AttributeError`.
"""

from __future__ import annotations

import atexit
import dataclasses
import enum
import math
import numbers
import operator
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import numpy as np

from workbench import tracking
from workbench.store import Store, StoreError, validate_name

__version__ = "0.0.0+workbench"

# The config key that holds what only W&B has a place for (project, tags, summary).
META_KEY = "wandb"
_SUPPORTED = ("init, log, config, summary, define_metric, finish, alert, run, Histogram, "
              "Settings, login, setup, require, termlog, termwarn, termerror, Error")


# -- errors and warnings -----------------------------------------------------------------


class Error(Exception):
    """`wandb.Error`: scripts catch it, so the errors W&B raises keep W&B's classes."""


class UsageError(Error):
    """A call the run's state does not allow (logging to a finished run)."""


class CommError(Error):
    """Never raised (nothing goes over a network); here so `except` clauses resolve."""


class ConfigError(Error):
    """A config value changed without `allow_val_change`, as W&B refuses it."""


class CompatWarning(UserWarning):
    """Every notice of this shim (skipped media, ignored settings, renamed runs).

    One category, so a script can silence them all with
    `warnings.filterwarnings("ignore", category=wandb.CompatWarning)`.
    """


errors = SimpleNamespace(Error=Error, UsageError=UsageError, CommError=CommError,
                         ConfigError=ConfigError)


def _warn(message: str) -> None:
    """Warn at the user's line: the first frame outside this module."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
        level += 1
    warnings.warn(message, CompatWarning, stacklevel=level)


def _refused(name: str, hint: str) -> Callable[..., NoReturn]:
    """A W&B call with no workbench counterpart: present (so `hasattr` is honest about
    W&B's surface) but failing loudly when called, never passing silently."""

    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(f"wandb.{name}() is not supported by the workbench: {hint}")

    refuse.__name__ = refuse.__qualname__ = name
    refuse.__doc__ = f"Not supported: {hint}."
    return refuse


_NO_FILES = "files stay in the run folder (run.dir); the workbench has no artifact store"
_NO_WATCH = ("log gradient or weight statistics yourself, e.g. "
             "run.workbench_run.log_dist('grad/<name>', p.grad)")
_NO_SWEEP = ("launch several specs as one group with `wb launch A B --group NAME` and "
             "compare them with `wb compare NAME`")
_REFUSED = {
    "watch": _NO_WATCH,
    "unwatch": _NO_WATCH,
    "save": _NO_FILES,
    "restore": _NO_FILES,
    "log_artifact": _NO_FILES,
    "use_artifact": _NO_FILES,
    "upsert_artifact": _NO_FILES,
    "finish_artifact": _NO_FILES,
    "link_artifact": _NO_FILES,
    "log_model": _NO_FILES,
    "use_model": _NO_FILES,
    "link_model": _NO_FILES,
    "log_code": "commit your code; a launched run keeps its spec.toml in the run folder",
    "sweep": _NO_SWEEP,
    "agent": _NO_SWEEP,
    "controller": _NO_SWEEP,
    "mark_preempting": "a launched run checkpoints and exits as `stopped` on SIGTERM",
}

watch = _refused("watch", _REFUSED["watch"])
unwatch = _refused("unwatch", _REFUSED["unwatch"])
save = _refused("save", _REFUSED["save"])
restore = _refused("restore", _REFUSED["restore"])
log_artifact = _refused("log_artifact", _REFUSED["log_artifact"])
use_artifact = _refused("use_artifact", _REFUSED["use_artifact"])
log_model = _refused("log_model", _REFUSED["log_model"])
use_model = _refused("use_model", _REFUSED["use_model"])
link_model = _refused("link_model", _REFUSED["link_model"])
sweep = _refused("sweep", _REFUSED["sweep"])
agent = _refused("agent", _REFUSED["agent"])
controller = _refused("controller", _REFUSED["controller"])
mark_preempting = _refused("mark_preempting", _REFUSED["mark_preempting"])


class Artifact:
    """Not supported: constructing one raises, before any file is staged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"wandb.Artifact is not supported by the workbench: {_NO_FILES}")


class Api:
    """Not supported: the W&B public API reads a W&B server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("wandb.Api is not supported by the workbench: read runs with "
                                  "`wb ls`, `wb show RUN --json`, `wb export RUN` or "
                                  "workbench.store.Store")


# -- values -------------------------------------------------------------------------------


class _Media:
    """A W&B media value the store has no place for.

    Constructing one works and any method call is accepted, so a script that builds
    a `wandb.Table` row by row runs on; logging it warns once per key and skips it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._what = f"wandb.{type(self).__name__}"

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)
        return _ignore


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


class Image(_Media):
    """Skipped when logged (warned once per key)."""


class Table(_Media):
    """Skipped when logged (warned once per key)."""


class Audio(_Media):
    """Skipped when logged (warned once per key)."""


class Video(_Media):
    """Skipped when logged (warned once per key)."""


class Html(_Media):
    """Skipped when logged (warned once per key)."""


class Object3D(_Media):
    """Skipped when logged (warned once per key)."""


class Molecule(_Media):
    """Skipped when logged (warned once per key)."""


class Plotly(_Media):
    """Skipped when logged (warned once per key)."""


class Graph(_Media):
    """Skipped when logged (warned once per key)."""


class Bokeh(_Media):
    """Skipped when logged (warned once per key)."""


class _Chart(_Media):
    def __init__(self, what: str) -> None:
        self._what = what


class _Plots:
    """`wandb.plot.line(...)`, `.scatter`, `.confusion_matrix`, ...: custom-chart presets
    render in W&B's web UI only; each returns a value that is skipped when logged."""

    def __getattr__(self, name: str) -> Callable[..., _Chart]:
        if name.startswith("_"):
            raise AttributeError(name)

        def chart(*args: Any, **kwargs: Any) -> _Chart:
            return _Chart(f"wandb.plot.{name}")

        return chart


plot = _Plots()


class Histogram:
    """`wandb.Histogram`: logged as a workbench distribution (count, min, max, mean,
    p50/p90/p99 and histogram bins) rather than W&B's bins alone.

    From `sequence` the quantiles are exact. From `np_histogram=(counts, edges)` the
    samples are gone, so each bin's midpoint stands for its samples (at most a million
    of them, counts scaled down past that): quantiles are then approximate.
    """

    MAX_LENGTH = 512

    def __init__(self, sequence: Any = None, np_histogram: tuple[Any, Any] | None = None,
                 num_bins: int = 64) -> None:
        if np_histogram is not None:
            if len(np_histogram) != 2 or len(np_histogram[1]) != len(np_histogram[0]) + 1:
                raise ValueError("Expected np_histogram to be a tuple of (values, bin_edges) "
                                 "or sequence to be specified")
            counts = np.asarray(np_histogram[0], dtype=np.float64)
            edges = np.asarray(np_histogram[1], dtype=np.float64)
            if len(counts) > self.MAX_LENGTH:
                raise ValueError(f"The maximum length of a histogram is {self.MAX_LENGTH}")
            total = float(counts.sum())
            if total > 1_000_000:
                counts = counts * (1_000_000 / total)
            mids = (edges[:-1] + edges[1:]) / 2
            self._values = np.repeat(mids, np.rint(counts).astype(np.int64).clip(min=0))
            self.histogram = [float(c) for c in np_histogram[0]]
            self.bins = edges.tolist()
            self._bins = max(len(counts), 1)
        elif sequence is not None:
            if num_bins > self.MAX_LENGTH:
                raise ValueError(f"The maximum length of a histogram is {self.MAX_LENGTH}")
            values = _to_numpy(sequence).astype(np.float64).ravel()
            finite = values[np.isfinite(values)]
            counts, edges = np.histogram(finite, bins=num_bins) if finite.size else ([], [])
            self._values = values
            self.histogram = [int(c) for c in counts]
            self.bins = [float(e) for e in edges]
            self._bins = num_bins
        else:
            raise ValueError("Expected np_histogram to be a tuple of (values, bin_edges) "
                             "or sequence to be specified")

    def __repr__(self) -> str:
        return f"Histogram(count={self._values.size}, bins={self._bins})"


class Settings:
    """`wandb.Settings(...)`: accepted and ignored (init warns once when given some).

    W&B settings configure W&B's own client: network, console capture, file syncing.
    The workbench has none of those; its store is chosen by WB_STORE.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def update(self, settings: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.__dict__.update(dict(settings or {}), **kwargs)


class AlertLevel(enum.StrEnum):
    """`wandb.AlertLevel`; an alert becomes an event of this severity."""

    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


_SEVERITY = {"INFO": "info", "WARN": "warning", "WARNING": "warning", "ERROR": "error"}

# What one logged value becomes.
_SCALAR, _DIST, _KEEP = 0, 1, 2


def _is_tensor(value: Any) -> bool:
    """A torch tensor, told without importing torch (which takes seconds)."""
    return hasattr(value, "detach") and hasattr(value, "numel")


def _to_numpy(value: Any) -> np.ndarray:
    if _is_tensor(value):
        t = value.detach().cpu()
        if t.is_floating_point() and t.element_size() < 4:  # bf16/fp16: numpy has no bf16
            t = t.float()
        return t.numpy()
    return np.asarray(value)


def _classify(value: Any) -> tuple[int, Any] | str:
    """(kind, converted value) for one logged value, or a description of what is skipped.

    Mirrors W&B: an array or tensor of one value is that value, of more than 32 a
    histogram, and anything else non-numeric is kept as is (here: in the summary only).
    """
    t = type(value)
    if t is float or t is int or t is bool:
        return _SCALAR, value
    if isinstance(value, Histogram):
        return _DIST, value
    if isinstance(value, _Media):
        return value._what
    if isinstance(value, np.generic):
        if isinstance(value, np.number | np.bool_) and not isinstance(value, np.complexfloating):
            return _SCALAR, value.item()
        return _KEEP, _plain(value)
    if isinstance(value, numbers.Real):
        return _SCALAR, int(value) if isinstance(value, numbers.Integral) else float(value)
    if isinstance(value, np.ndarray) or _is_tensor(value):
        arr = _to_numpy(value)
        if arr.dtype.kind not in "biuf":
            return _KEEP, arr.tolist()
        if arr.size == 1:
            return _SCALAR, arr.reshape(()).item()
        if arr.size > 32:
            return _DIST, Histogram(arr, num_bins=32)
        return _KEEP, arr.tolist()
    if value is None or isinstance(value, str | list | tuple):
        return _KEEP, _plain(value)
    return f"a {t.__name__}"


def _plain(value: Any) -> Any:
    """A JSON-ready copy: numpy and torch values become Python numbers and lists, so a
    config or summary compares equal to what the store gives back."""
    if value is None or type(value) in (str, bool, int, float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray) or _is_tensor(value):
        return _to_numpy(value).tolist()
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    for base in (bool, int, float, str):  # subclasses of the JSON types
        if isinstance(value, base):
            return base(value)
    return str(value)  # a Path, a class, any object: what json.dumps(default=str) would store


def _json_safe(value: Any) -> Any:
    """NaN and infinities as the strings "nan", "inf", "-inf" at any depth: the store's
    config is strict JSON (json.dumps would write a bare NaN), and a summary whose last
    loss was NaN should say so rather than lose the key (null deletes in a merge patch)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _step_of(step: Any) -> int:
    try:
        return operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer, not {type(step).__name__} ({step!r})") from None


def _int_step(value: Any) -> int | None:
    """A step metric's value as a workbench step (an integer), or None if it is not one."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch that turns `old` into `new`.

    The store merges config updates as merge patches (so processes attached to one run
    keep each other's keys). W&B replaces a key's value wholesale, so keys of a nested
    dict that the new value lacks are deleted explicitly (null). A None inside `new`
    also reads as a delete: merge patches cannot store null.
    """
    if not isinstance(new, dict) or not isinstance(old, dict):
        return new
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    patch.update((k, _merge_patch(old.get(k), v)) for k, v in new.items())
    return patch


def _config_dict(config: Any) -> dict[str, Any]:
    """What W&B accepts as a config: a mapping, an argparse Namespace (or any object
    with attributes), absl/TF flags, or the path of a YAML file."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, str | Path):
        import yaml  # accelerate depends on PyYAML, so it is always installed

        loaded = yaml.safe_load(Path(config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise TypeError(f"config file {config} holds a {type(loaded).__name__}, not a mapping")
        loaded.pop("wandb_version", None)
        loaded.pop("_wandb", None)
        return {k: v["value"] if isinstance(v, dict) and set(v) <= {"value", "desc"}
                and "value" in v else v for k, v in loaded.items()}
    if hasattr(config, "flag_values_dict"):
        return dict(config.flag_values_dict())
    if hasattr(config, "model_dump"):
        return dict(config.model_dump())
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "__dict__"):
        return {k: v for k, v in vars(config).items() if not k.startswith("_")}
    raise TypeError(f"config must be a dict, an argparse.Namespace or the path of a YAML "
                    f"file, not {type(config).__name__}")


def _valid_name(text: str, what: str) -> str | None:
    """A workbench name made from W&B free text, or None if nothing usable is left.

    Workbench names become paths and remote arguments, so they are 1-64 letters,
    digits, '.', '_' or '-'; W&B names are any text. Other characters become '-'.
    """
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text))
    clean = re.sub(r"\.{2,}", ".", clean).strip("._-")[:64].rstrip("._-")
    try:
        return validate_name(clean, what)
    except StoreError:
        return None


# -- config and summary -------------------------------------------------------------------


class _AttrDict:
    """A dict with attribute access over `self._items` (config and summary share it).

    Keys starting with '_' are hidden from keys()/items()/values().
    """

    _missing = "object has no attribute"

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __getattr__(self, key: str) -> Any:
        items = self.__dict__.get("_items")  # absent while copy/pickle rebuild the object
        if items is None or key.startswith("__") or key not in items:
            raise AttributeError(f"{type(self).__name__.lower()} {self._missing} {key!r}")
        return items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def keys(self) -> list[str]:
        return [k for k in self._items if not k.startswith("_")]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in self._items.items() if not k.startswith("_")]

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)


class Config(_AttrDict):
    """`wandb.config`: a dict with attribute access whose changes go to the run's config.

    Leading '-' of a key is stripped, as W&B does (so argparse-style names read back
    the same).
    """

    def __init__(self, items: dict[str, Any], persist: Callable[[dict[str, Any]], None],
                 allow_val_change: bool = False) -> None:
        object.__setattr__(self, "_items", items)
        object.__setattr__(self, "_persist", persist)
        object.__setattr__(self, "_allow", allow_val_change)

    def __setitem__(self, key: str, value: Any) -> None:
        self._set({key: value}, None)

    __setattr__ = __setitem__

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items())

    def update(self, d: Any, allow_val_change: bool | None = None) -> None:
        """Set many keys in one store write. A changed value needs `allow_val_change`."""
        self._set(_config_dict(d), allow_val_change)

    def setdefaults(self, d: Any) -> None:
        """Set only the keys not set yet (a sweep's values win over a script's defaults)."""
        self._set({k: v for k, v in _config_dict(d).items() if k not in self._items}, None)

    def persist(self) -> None:
        """W&B's explicit save: every change is already written."""

    def _set(self, d: Mapping[str, Any], allow_val_change: bool | None) -> None:
        clean: dict[str, Any] = {}
        for key, value in d.items():
            key = key.strip("-") if isinstance(key, str) else str(key)
            if key == META_KEY:
                raise ValueError(f"config key {META_KEY!r} is reserved: the workbench keeps "
                                 "W&B's project, tags and summary there; rename the key")
            value = _plain(value)
            if not (allow_val_change or self._allow) and key in self._items \
                    and self._items[key] != value:
                raise ConfigError(f'Attempted to change value of key "{key}" from '
                                  f"{self._items[key]} to {value}; if you really want to do "
                                  "this, pass allow_val_change=True to config.update()")
            clean[key] = value
        if clean:
            self._items.update(clean)
            self._persist(clean)


class Summary(_AttrDict):
    """`run.summary`: the last value of each logged key (or its define_metric
    aggregates), plus whatever the script assigns. Stored in the run's config under
    `wandb.summary` when the run finishes."""

    _missing = "has no key"

    def __init__(self) -> None:
        object.__setattr__(self, "_items", {})

    def __setitem__(self, key: str, value: Any) -> None:
        self._items[key] = _plain(value)

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    __setattr__ = __setitem__
    __delattr__ = __delitem__

    def update(self, d: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        for key, value in {**dict(d or {}), **kwargs}.items():
            self[key] = value


class _PreInit:
    """`wandb.config` / `wandb.summary` before init: W&B raises an Error telling you to
    call init first, rather than silently keeping values that go nowhere."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def _refuse(self, what: str) -> NoReturn:
        raise Error(f"You must call wandb.init() before {self._name}{what}")

    def __getitem__(self, key: str) -> NoReturn:
        self._refuse(f"[{key!r}]")

    def __setitem__(self, key: str, value: Any) -> NoReturn:
        self._refuse(f"[{key!r}]")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        self._refuse(f".{key}")

    def __setattr__(self, key: str, value: Any) -> NoReturn:
        self._refuse(f".{key}")

    def __contains__(self, key: object) -> bool:
        self._refuse(f" ({key!r} in {self._name})")

    def __iter__(self) -> NoReturn:
        self._refuse(" (iterating it)")

    def __repr__(self) -> str:
        return f"<{self._name} before wandb.init()>"


_PREINIT_CONFIG = _PreInit("wandb.config")
_PREINIT_SUMMARY = _PreInit("wandb.summary")


# -- metrics ------------------------------------------------------------------------------

_SUMMARY_OPS = ("min", "max", "mean", "first", "last", "best", "copy", "none")


@dataclasses.dataclass(frozen=True)
class Metric:
    """What define_metric returns: the definition as it now stands (merged with earlier
    definitions of the same name, as W&B merges them)."""

    name: str
    step_metric: str | None = None
    step_sync: bool | None = None
    hidden: bool | None = None
    summary: tuple[str, ...] = ()
    goal: str | None = None  # "min" or "max"

    def _merged(self, new: Metric) -> Metric:
        return Metric(
            name=new.name,
            step_metric=new.step_metric or self.step_metric,
            step_sync=self.step_sync if new.step_sync is None else new.step_sync,
            hidden=self.hidden if new.hidden is None else new.hidden,
            summary=tuple(dict.fromkeys(self.summary + new.summary)),
            goal=new.goal or self.goal,
        )


# -- the run ------------------------------------------------------------------------------


class Run:
    """A W&B-shaped run over a workbench `Run` (reachable as `run.workbench_run`, for
    what W&B has no call for: `log_matrix`, `event`, `set_total_steps`).

    W&B's step rules live here: a pending row that commits at the current step, then
    advances it. Each commit becomes one `Run.log` per distinct step (and one
    `log_dist` per histogram), the internal step's last, so that the run's progress
    is the internal step even when a commit only held metrics of a custom step axis.
    """

    def __init__(self, run: tracking.Run, *, meta: dict[str, Any],
                 allow_val_change: bool = False) -> None:
        self._run = run
        self._meta = meta
        self._lock = threading.RLock()
        self._step = 0  # the step the pending row commits at
        self._scal: dict[str, Any] = {}  # the pending row's numbers
        self._rest: dict[str, tuple[int, Any]] = {}  # its histograms and summary-only values
        self._dirty = False  # something was logged into the pending row (maybe all skipped)
        self._defines: dict[str, Metric] = {}
        self._resolved: dict[str, Metric | None] = {}  # key -> its definition, cached
        self._globs: dict[str, Metric] = {}  # prefix (name without its '*') -> definition
        self._step_metrics: set[str] = set()
        self._last: dict[str, Any] = {}  # step metric -> last value logged (for step_sync)
        self._track: dict[tuple[str, str], float] = {}  # (key, op) -> running aggregate
        self._warned: set[str] = set()
        self._finished = False
        self._stored_summary: dict[str, Any] | None = None
        self._start_time = time.time()
        items = {k: v for k, v in run.config.items() if k != META_KEY}
        self.config = Config(items, self._persist_config, allow_val_change)
        self.summary = Summary()

    # -- identity -------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._run.id

    @property
    def name(self) -> str:
        return self._run.name

    @name.setter
    def name(self, value: str) -> None:
        """Renames the run in the store (W&B allows renaming a live run)."""
        clean = _valid_name(value, "run name")
        if clean is None:
            raise ValueError(f"run name {value!r} has no letters or digits to keep")
        if clean != value:
            _warn(f"run name {value!r} is stored as {clean!r} (workbench names are 1-64 "
                  "letters, digits, '.', '_' or '-')")
        if not self._run.disabled:
            with Store(self._run.root) as st:
                st.update_run(self._run.id, name=clean)
        self._run.name = clean

    @property
    def project(self) -> str | None:
        return self._meta.get("project")

    @property
    def entity(self) -> str | None:
        return self._meta.get("entity")

    @property
    def group(self) -> str | None:
        return self._meta.get("group")

    @property
    def job_type(self) -> str | None:
        return self._meta.get("job_type")

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self._meta.get("tags") or ())

    @tags.setter
    def tags(self, value: Any) -> None:
        self._set_meta("tags", [str(t) for t in value])

    @property
    def notes(self) -> str | None:
        return self._meta.get("notes")

    @notes.setter
    def notes(self, value: str) -> None:
        self._set_meta("notes", str(value))

    @property
    def path(self) -> str:
        return "/".join([self.entity or "", self.project or "", self.id])

    @property
    def dir(self) -> str:
        """The run's folder in the store (W&B's run.dir holds the run's files too)."""
        return str(self._run.dir)

    @property
    def url(self) -> None:
        """None, as for a W&B offline run: there is no server. See `wb show RUN_ID`."""
        return None

    def get_url(self) -> None:
        return None

    def get_project_url(self) -> None:
        return None

    @property
    def step(self) -> int:
        return self._step

    @property
    def start_time(self) -> float:
        return self._start_time

    @property
    def disabled(self) -> bool:
        return self._run.disabled

    @property
    def offline(self) -> bool:
        return True

    @property
    def resumed(self) -> bool:
        return False

    @property
    def workbench_run(self) -> tracking.Run:
        return self._run

    def __repr__(self) -> str:
        return f"<wandb Run {self.name} ({self.id}) in the workbench>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"wandb Run has no attribute {name!r} in the workbench (it has "
                             "log, config, summary, define_metric, finish, alert, id, name, "
                             "dir, step, workbench_run)")

    # -- logging --------------------------------------------------------------------------

    def log(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None,
            sync: bool | None = None) -> None:
        """Log a row of values, with W&B's step rules (see the module docstring)."""
        if not isinstance(data, Mapping):
            raise ValueError("wandb.log must be passed a dictionary")
        self._check_open("log")
        scal: dict[str, Any] = {}
        rest: dict[str, tuple[int, Any]] = {}
        self._collect(data, "", scal, rest)
        if step is not None:
            step = _step_of(step)
        with self._lock:
            self._check_open("log")
            if step is not None:
                if step < self._step:
                    _warn(f"wandb.log: step {step} is less than the current step {self._step}; "
                          f"dropping {sorted([*scal, *rest])} (steps only increase, as in W&B; "
                          "use define_metric for another x axis)")
                    return
                if step > self._step:
                    self._commit()
                    self._step = step
            elif commit is None:
                commit = True
            if data:  # a row of skipped media is still a row: W&B's steps stay W&B's
                self._dirty = True
            if self._rest:  # a key's newest value wins, whatever its kind
                for key in scal:
                    self._rest.pop(key, None)
            if rest:
                for key in rest:
                    self._scal.pop(key, None)
                self._rest.update(rest)
            if self._scal:
                self._scal.update(scal)
            else:
                self._scal = scal
            if commit:
                self._commit()

    def _collect(self, data: Mapping[str, Any], prefix: str, scal: dict[str, Any],
                 rest: dict[str, tuple[int, Any]]) -> None:
        """Sort one log call's values: plain numbers first and fast, nested dicts
        flattened with '/', the rest classified (and skipped with a warning if need be)."""
        for key, value in data.items():
            if type(key) is not str and not isinstance(key, str):
                raise ValueError("Key values passed to `wandb.log` must be strings.")
            name = prefix + key if prefix else key
            t = type(value)
            if t is float or t is int or t is bool:
                scal[name] = value
            elif isinstance(value, Mapping):
                self._collect(value, name + "/", scal, rest)
            else:
                got = _classify(value)
                if isinstance(got, str):
                    self._warn_once(name, f"wandb.log: {name!r} is {got}, which the workbench "
                                    "cannot store; it is skipped (it takes numbers, and "
                                    "wandb.Histogram for distributions)")
                elif got[0] == _SCALAR:
                    scal[name] = got[1]
                else:
                    if got[0] == _KEEP:
                        self._warn_once(name, f"wandb.log: {name!r} is not a number "
                                        f"({t.__name__}); it is kept in the run summary only, "
                                        "not recorded as a metric")
                    rest[name] = got

    def define_metric(self, name: str, step_metric: str | Metric | None = None,
                      step_sync: bool | None = None, hidden: bool | None = None,
                      summary: str | None = None, goal: str | None = None,
                      overwrite: bool | None = None, **kwargs: Any) -> Metric:
        """Define a metric's step axis and summary, W&B's way (its errors included)."""
        self._check_open("define_metric")
        if not name:
            raise Error("define_metric() requires non-empty name argument")
        for key in kwargs:
            _warn(f"Unhandled define_metric() arg: {key}")
        if isinstance(step_metric, Metric):
            step_metric = step_metric.name
        for arg, val, typ in (("name", name, str), ("step_metric", step_metric, str),
                              ("step_sync", step_sync, bool), ("hidden", hidden, bool),
                              ("summary", summary, str), ("goal", goal, str),
                              ("overwrite", overwrite, bool)):
            if val is not None and not isinstance(val, typ):
                raise Error(f"Unhandled define_metric() arg: {arg} type: {type(val).__name__}")
        if "*" in (name[:-1] if name.endswith("*") else name):
            raise Error(f"Unhandled define_metric() arg: name (glob suffixes only): {name}")
        ops: list[str] = []
        for op in (summary.split(",") if summary else []):
            op = op.strip().lower()
            if op not in _SUMMARY_OPS:
                raise Error(f"Unhandled define_metric() arg: summary op: {op}")
            ops.append(op)
        cleaned_goal = None
        if goal is not None:
            cleaned_goal = goal[:3].lower()
            if cleaned_goal not in ("min", "max"):
                raise Error(f"Unhandled define_metric() arg: goal: {goal}")
        if hidden:
            self._warn_once(f"hidden:{name}", f"define_metric({name!r}, hidden=True): the "
                            "workbench shows every metric; hidden is ignored")
        new = Metric(name, step_metric, step_sync, hidden, tuple(ops), cleaned_goal)
        with self._lock:
            self._resolved.clear()
            table, key = ((self._globs, name[:-1]) if name.endswith("*")
                          else (self._defines, name))
            old = table.get(key)
            table[key] = new if old is None or overwrite else old._merged(new)
            if step_metric:
                self._defines.setdefault(step_metric, Metric(step_metric))
                self._step_metrics.add(step_metric)
            return table[key]

    def alert(self, title: str, text: str, level: str | AlertLevel | None = None,
              wait_duration: Any = None) -> None:
        """An `alert` event on the run (shown by `wb events`), at the run's step."""
        self._check_open("alert")
        lvl = (level.value if isinstance(level, AlertLevel) else str(level or "INFO")).upper()
        if lvl not in _SEVERITY:
            raise ValueError(f"level must be one of INFO, WARN, ERROR, not {level!r}")
        self._run.event("alert", severity=_SEVERITY[lvl], title=str(title), text=str(text),
                        level=lvl)

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Commit what is pending, store the summary, record "finished" (or "failed" for a
        nonzero exit code). A second call does nothing, as in W&B."""
        self._finish("failed" if exit_code else "finished", exit_code)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is None:
            self._finish("finished", 0)
        elif issubclass(exc_type, KeyboardInterrupt):
            self._finish("stopped", 1)
        else:
            self._finish("failed", 1)
        return False

    # -- internals ------------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._finished:
            raise UsageError(f"Run ({self.id}) is finished. The call to `{what}` is refused; "
                             "start another run with wandb.init()")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _warn(message)

    def _definition(self, key: str) -> Metric | None:
        """The key's definition: exact, else the first matching glob (which then becomes
        the key's own definition, as in W&B). Keys starting with '_' match no glob.
        Cached per key until the next define_metric, since every commit asks."""
        try:
            return self._resolved[key]
        except KeyError:
            pass
        m = self._defines.get(key)
        if m is None and self._globs and not key.startswith("_"):
            for prefix, glob in self._globs.items():
                if key.startswith(prefix):
                    m = self._defines[key] = dataclasses.replace(glob, name=key)
                    break
        self._resolved[key] = m
        return m

    def _step_for(self, key: str, scal: dict[str, Any], step: int) -> int:
        """The step a key of this commit is recorded at: its step metric's value, taken
        from the same commit or (step_sync) the metric's last one, else the commit's."""
        m = self._definition(key)
        sm = m.step_metric if m is not None else None
        if not sm or sm == key:
            return step
        if sm in scal:
            value = scal[sm]
        elif m is not None and m.step_sync is not False:
            value = self._last.get(sm)
        else:
            value = None
        at = _int_step(value)
        if at is not None:
            return at
        why = ("has no value yet" if value is None
               else f"is {value!r}, but workbench steps are integers")
        self._warn_once(f"step:{key}", f"wandb.log: {key!r} is defined against step metric "
                        f"{sm!r}, which {why}; it is recorded at the internal step ({step}) "
                        "instead")
        return step

    def _commit(self) -> None:
        """Write the pending row at the current step and advance it (lock held)."""
        if not self._dirty:
            return
        scal, rest, step = self._scal, self._rest, self._step
        self._scal, self._rest, self._dirty = {}, {}, False
        self._step = step + 1
        run = self._run
        items = self.summary._items
        if not self._defines and not self._globs:  # the common case: one call, no copies
            for key, (kind, value) in rest.items():
                if kind == _DIST:
                    run.log_dist(key, value._values, step=step, bins=value._bins)
                else:
                    items[key] = value
            run.log(scal, step=step)
            items.update(scal)
            return
        main: dict[str, Any] = {}
        other: dict[int, dict[str, Any]] = {}
        for key, value in scal.items():
            at = self._step_for(key, scal, step)
            if at == step:
                main[key] = value
            else:
                other.setdefault(at, {})[key] = value
        for at, metrics in other.items():
            run.log(metrics, step=at)
        for key, (kind, value) in rest.items():
            if kind == _DIST:
                run.log_dist(key, value._values, step=self._step_for(key, scal, step),
                             bins=value._bins)
        run.log(main, step=step)  # last: the run's progress is the internal step
        for sm in self._step_metrics:
            if sm in scal:
                self._last[sm] = scal[sm]
        for key, value in scal.items():
            self._summarize(items, key, value, True)
        for key, (kind, value) in rest.items():
            if kind == _KEEP:
                self._summarize(items, key, value, False)

    def _summarize(self, items: dict[str, Any], key: str, value: Any, number: bool) -> None:
        """Update the summary with one committed value, as W&B's handler does."""
        m = self._definition(key)
        ops = m.summary if m is not None else ()
        if not ops or "copy" in ops:
            items[key] = value
        if not ops or "none" in ops or not number:
            return
        f = float(value)
        if math.isnan(f):
            return
        agg = items.get(key)
        if not isinstance(agg, dict):
            agg = items[key] = {}
        track = self._track
        if "last" in ops:
            agg["last"] = value
        if "first" in ops and (key, "first") not in track:
            track[key, "first"] = f
            agg["first"] = value
        best = "best" in ops
        goal_max = m is not None and m.goal == "max"
        if "max" in ops or (best and goal_max):
            old = track.get((key, "max"))
            if old is None or f > old:
                track[key, "max"] = f
                if "max" in ops:
                    agg["max"] = value
                if best:
                    agg["best"] = value
        if "min" in ops or (best and not goal_max):
            old = track.get((key, "min"))
            if old is None or f < old:
                track[key, "min"] = f
                if "min" in ops:
                    agg["min"] = value
                if best:
                    agg["best"] = value
        if "mean" in ops:
            tot = track.get((key, "tot"), 0.0) + f
            num = track.get((key, "num"), 0.0) + 1
            track[key, "tot"], track[key, "num"] = tot, num
            agg["mean"] = tot / num

    def _persist_config(self, changed: dict[str, Any]) -> None:
        stored = self._run.config
        self._run.update_config(_json_safe({k: _merge_patch(stored.get(k), v)
                                            for k, v in changed.items()}))

    def _set_meta(self, key: str, value: Any) -> None:
        self._meta[key] = value
        self._run.update_config(_json_safe({META_KEY: {key: value}}))

    def _write_summary(self) -> None:
        summary = _json_safe(_plain(self.summary._items))
        if summary == (self._stored_summary or {}):
            return
        self._run.update_config({META_KEY: {"summary": _merge_patch(self._stored_summary,
                                                                   summary)}})
        self._stored_summary = summary

    def _flush(self) -> None:
        with self._lock:
            if not self._finished:
                self._commit()
                self._write_summary()

    def _finish(self, status: str, exit_code: int | None) -> None:
        global _current
        with self._lock:
            if self._finished:
                return
            try:
                self._commit()
                self._write_summary()
            finally:
                self._finished = True
                _open.discard(self)
                if _current is self:
                    _current = None
                self._run.finish(status, exit_code=exit_code)


for _name, _hint in _REFUSED.items():
    if _name not in ("sweep", "agent", "controller"):
        setattr(Run, _name, _refused(_name, _hint))
del _name, _hint


# -- module state and functions -----------------------------------------------------------

_current: Run | None = None
_open: set[Run] = set()
_exit_hook = False


def _flush_at_exit() -> None:
    """Commit pending rows and store summaries of runs the script did not finish.

    Registered after workbench.tracking's own exit hook, so it runs first; that hook
    then records each run's status (finished, or failed after an uncaught exception).
    """
    for run in list(_open):
        try:
            run._flush()
        except Exception as exc:
            print(f"wandb (workbench): could not flush run {run.id}: {exc}", file=sys.stderr)


def _env(value: Any, var: str) -> Any:
    return value if value is not None else os.environ.get(var) or None


def init(project: str | None = None, name: str | None = None, config: Any = None,
         entity: str | None = None, group: str | None = None, tags: Any = None,
         notes: str | None = None, dir: str | os.PathLike[str] | None = None,
         mode: str | None = None, reinit: bool | str | None = None, id: str | None = None,
         resume: bool | str | None = None, job_type: str | None = None,
         settings: Settings | Mapping[str, Any] | None = None,
         config_exclude_keys: list[str] | None = None,
         config_include_keys: list[str] | None = None,
         allow_val_change: bool | None = None, save_code: bool | None = None,
         sync_tensorboard: bool | None = None, tensorboard: bool | None = None,
         monitor_gym: bool | None = None, magic: Any = None, anonymous: str | None = None,
         force: bool | None = None, resume_from: str | None = None,
         fork_from: str | None = None, **kwargs: Any) -> Run:
    """Start a workbench run the way `wandb.init` starts a W&B run, and return it.

    Inside a launched worker (WB_RUN_ID set) this attaches to the launched run, like
    `workbench.init`: the spec's config values win, and name and group stay the
    launcher's. See the module docstring for what each argument becomes.
    """
    global _current, _exit_hook
    project = _env(project, "WANDB_PROJECT")
    name = _env(name, "WANDB_NAME")
    group = _env(group, "WANDB_RUN_GROUP")
    entity = _env(entity, "WANDB_ENTITY")
    notes = _env(notes, "WANDB_NOTES")
    job_type = _env(job_type, "WANDB_JOB_TYPE")
    mode = _env(mode, "WANDB_MODE")
    if tags is None and os.environ.get("WANDB_TAGS"):
        tags = [t for t in os.environ["WANDB_TAGS"].split(",") if t]
    if resume_from or fork_from:
        raise NotImplementedError("wandb.init(resume_from=/fork_from=) is not supported by the "
                                  "workbench: resume a launched run with `wb resume RUN`")
    if resume == "must":
        raise NotImplementedError("wandb.init(resume='must') is not supported by the workbench: "
                                  "an SDK run cannot be continued; resume a launched run with "
                                  "`wb resume RUN`")
    if mode not in (None, "online", "offline", "dryrun", "run", "shared", "disabled"):
        raise UsageError(f"mode must be 'online', 'offline' or 'disabled', not {mode!r}")
    if _current is not None:
        if reinit in (None, False, "default", "return_previous"):
            _warn("wandb.init() called while a run is active; returning that run "
                  "(pass reinit='finish_previous' or 'create_new' for a new one)")
            return _current
        if reinit in (True, "finish_previous"):
            _current.finish()
        elif reinit != "create_new":
            raise UsageError(f"reinit must be 'default', 'return_previous', 'finish_previous' "
                             f"or 'create_new', not {reinit!r}")

    user = {(k.strip("-") if isinstance(k, str) else str(k)): v
            for k, v in _config_dict(config).items()}
    if config_include_keys:
        user = {k: v for k, v in user.items() if k in config_include_keys}
    if config_exclude_keys:
        user = {k: v for k, v in user.items() if k not in config_exclude_keys}
    if META_KEY in user:
        raise ValueError(f"config key {META_KEY!r} is reserved: the workbench keeps W&B's "
                         "project, tags and summary there; rename the key")
    cfg = _json_safe({k: _plain(v) for k, v in user.items()})

    notices = []
    if settings:
        notices.append("settings are ignored (they configure W&B's client)")
    if sync_tensorboard or tensorboard:
        notices.append("sync_tensorboard is not supported (log the values with wandb.log)")
    if monitor_gym:
        notices.append("monitor_gym is not supported")
    if magic:
        notices.append("magic is not supported")
    if id is not None:
        notices.append(f"id={id!r} is recorded in the config as wandb.id; the workbench gives "
                       "the run an id of its own")
    if resume:
        notices.append(f"resume={resume!r}: an SDK run cannot be continued; this is a new run")
    if kwargs:
        notices.append(f"unknown arguments {sorted(kwargs)} are recorded in the config as "
                       "wandb.unknown and otherwise ignored")
    for notice in notices:
        _warn(f"wandb.init: {notice}")

    meta: dict[str, Any] = {
        "project": project, "entity": entity, "group": group,
        "tags": [str(t) for t in tags] if tags else None, "notes": notes,
        "job_type": job_type, "id": id, "resume": resume, "mode": mode,
        "dir": str(dir) if dir else None, "anonymous": anonymous,
        "unknown": _plain(kwargs) if kwargs else None,
    }
    meta = {k: v for k, v in meta.items() if v is not None}
    if meta:
        cfg[META_KEY] = meta

    disabled = mode == "disabled"
    attached = bool(os.environ.get("WB_RUN_ID"))
    run_name = grp = None
    if name and not attached:  # a launched run keeps the launcher's name and group
        run_name = _valid_name(name, "run name")
        if run_name != name:
            _warn(f"wandb.init: run name {name!r} is "
                  + (f"stored as {run_name!r}" if run_name else "not usable; the run gets a "
                     "default name") + " (workbench names are 1-64 letters, digits, '.', '_' "
                  "or '-')")
    if group and not attached:
        grp = _valid_name(group, "group name")
        if grp != group:
            _warn(f"wandb.init: group {group!r} is "
                  + (f"stored as {grp!r}" if grp else "not usable; the run gets no group")
                  + " (workbench names are 1-64 letters, digits, '.', '_' or '-')")

    st = None if disabled or attached else Store()
    try:
        if st is not None and run_name is None and project:
            base = _valid_name(project, "run name")
            if base:
                run_name = st.next_name(base)
        run = tracking.init(name=run_name, config=cfg, disabled=disabled)
        if st is not None and grp:
            st.update_run(run.id, grp=grp)
    finally:
        if st is not None:
            st.close()

    compat = Run(run, meta=meta, allow_val_change=bool(allow_val_change))
    if not _exit_hook:  # after tracking.init installed its hook: atexit runs ours first
        _exit_hook = True
        atexit.register(_flush_at_exit)
    _open.add(compat)
    _current = compat
    return compat


def _active(what: str) -> Run:
    if _current is None:
        raise Error(f"You must call wandb.init() before wandb.{what}()")
    return _current


def log(data: Mapping[str, Any], step: int | None = None, commit: bool | None = None,
        sync: bool | None = None) -> None:
    """`wandb.log`: log to the active run (see `Run.log`)."""
    _active("log").log(data, step=step, commit=commit)


def define_metric(name: str, step_metric: str | Metric | None = None,
                  step_sync: bool | None = None, hidden: bool | None = None,
                  summary: str | None = None, goal: str | None = None,
                  overwrite: bool | None = None, **kwargs: Any) -> Metric:
    """`wandb.define_metric` on the active run (see `Run.define_metric`)."""
    return _active("define_metric").define_metric(name, step_metric, step_sync, hidden,
                                                  summary, goal, overwrite, **kwargs)


def alert(title: str, text: str, level: str | AlertLevel | None = None,
          wait_duration: Any = None) -> None:
    """`wandb.alert`: an `alert` event on the active run."""
    _active("alert").alert(title, text, level, wait_duration)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """`wandb.finish`: finish the active run; without one, nothing (as in W&B)."""
    if _current is not None:
        _current.finish(exit_code, quiet)


def teardown(exit_code: int | None = None) -> None:
    """`wandb.teardown`: finish every run this process started."""
    for run in list(_open):
        run.finish(exit_code)


def login(key: str | None = None, relogin: bool | None = None, host: str | None = None,
          force: bool | None = None, timeout: int | None = None, verify: bool = False,
          anonymous: str | None = None, **kwargs: Any) -> bool:
    """Nothing to log in to: the store is local. True, as a successful W&B login."""
    return True


def setup(settings: Settings | None = None) -> None:
    """Accepted: it prepares W&B's client process, which does not exist here."""


def require(requirement: str | None = None, **kwargs: Any) -> None:
    """Accepted: it opts in to W&B client features, which do not apply here."""


_said: set[str] = set()


def _term(text: Any, level: str, newline: bool, repeat: bool, prefix: bool) -> None:
    text = str(text)
    if not repeat:
        if text in _said:
            return
        _said.add(text)
    head = f"wandb: {level}" if prefix else ""
    sys.stderr.write("\n".join(head + line for line in text.split("\n"))
                     + ("\n" if newline else ""))
    sys.stderr.flush()


def termlog(string: Any = "", newline: bool = True, repeat: bool = True,
            prefix: bool = True) -> None:
    """Print to stderr with W&B's `wandb: ` prefix."""
    _term(string, "", newline, repeat, prefix)


def termwarn(string: Any, newline: bool = True, repeat: bool = True,
             prefix: bool = True) -> None:
    _term(string, "WARNING ", newline, repeat, prefix)


def termerror(string: Any, newline: bool = True, repeat: bool = True,
              prefix: bool = True) -> None:
    _term(string, "ERROR ", newline, repeat, prefix)


def __getattr__(name: str) -> Any:
    """`wandb.run`, `wandb.config` and `wandb.summary` follow the active run (None, or
    objects that raise before init, as in W&B); any other unknown name says what exists."""
    if name == "run":
        return _current
    if name == "config":
        return _current.config if _current is not None else _PREINIT_CONFIG
    if name == "summary":
        return _current.summary if _current is not None else _PREINIT_SUMMARY
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(f"workbench.compat.wandb has no attribute {name!r}; it supports "
                         f"{_SUPPORTED} (media types such as wandb.Image are accepted and "
                         "skipped when logged)")


__all__ = [
    "init", "log", "define_metric", "finish", "alert", "teardown", "login", "setup", "require",
    "termlog", "termwarn", "termerror", "Run", "Config", "Summary", "Metric", "Histogram",
    "Settings", "AlertLevel", "Error", "UsageError", "CommError", "ConfigError", "errors",
    "CompatWarning", "Image", "Table", "Audio", "Video", "Html", "Object3D", "Molecule",
    "Plotly", "Graph", "Bokeh", "plot", "__version__",
    # present so that W&B's surface is honest, refusing when called
    "watch", "unwatch", "save", "restore", "log_artifact", "use_artifact", "log_model",
    "use_model", "link_model", "sweep", "agent", "controller", "mark_preempting", "Artifact",
    "Api",
]


def __dir__() -> list[str]:
    return sorted({*__all__, "run", "config", "summary"})

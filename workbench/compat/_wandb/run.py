"""`Metric` and `Run`: a W&B-shaped run over a workbench run, with W&B's step, commit,
define_metric and summary rules (see the docstring of `workbench.compat.wandb`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from workbench import tracking
from workbench.store import Store

from .config import META_KEY, Config, Summary
from .errors import _REFUSED, Error, UsageError, _refused, _warn
from .values import (
    _DIST,
    _KEEP,
    _SCALAR,
    _SEVERITY,
    AlertLevel,
    _classify,
    _int_step,
    _json_safe,
    _merge_patch,
    _plain,
    _step_of,
    _valid_name,
)

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
                 allow_val_change: bool = False,
                 on_finish: Callable[[Run], None] | None = None) -> None:
        self._run = run
        self._on_finish = on_finish  # wandb.init's: forget this run as the active one
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
        """Log a row of values, with W&B's step rules (see `workbench.compat.wandb`)."""
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
        with self._lock:
            if self._finished:
                return
            try:
                self._commit()
                self._write_summary()
            finally:
                self._finished = True
                if self._on_finish is not None:
                    self._on_finish(self)
                self._run.finish(status, exit_code=exit_code)


for _name, _hint in _REFUSED.items():
    if _name not in ("sweep", "agent", "controller"):
        setattr(Run, _name, _refused(_name, _hint))
del _name, _hint

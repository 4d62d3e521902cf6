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

This module holds the module state (the active run, the open runs) and the
module-level calls, and re-exports every public name; the rest lives in the private
package `workbench.compat._wandb`, one job per module: `errors` (the error classes,
`CompatWarning`, the refused calls), `media` (`Image`, `Table`, ..., `plot`), `values`
(`Histogram`, `Settings`, `AlertLevel`, classifying and converting values), `config`
(`Config`, `Summary`) and `run` (`Metric`, `Run`).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from workbench import tracking
from workbench.store import Store

from ._wandb.config import _PREINIT_CONFIG, _PREINIT_SUMMARY, META_KEY, Config, Summary
from ._wandb.errors import (
    _REFUSED,
    Api,
    Artifact,
    CommError,
    CompatWarning,
    ConfigError,
    Error,
    UsageError,
    _refused,
    _warn,
)
from ._wandb.media import (
    Audio,
    Bokeh,
    Graph,
    Html,
    Image,
    Molecule,
    Object3D,
    Plotly,
    Table,
    Video,
    plot,
)
from ._wandb.run import Metric, Run
from ._wandb.values import (
    AlertLevel,
    Histogram,
    Settings,
    _config_dict,
    _json_safe,
    _plain,
    _valid_name,
)

__version__ = "0.0.0+workbench"

_SUPPORTED = ("init, log, config, summary, define_metric, finish, alert, run, Histogram, "
              "Settings, login, setup, require, termlog, termwarn, termerror, Error")

errors = SimpleNamespace(Error=Error, UsageError=UsageError, CommError=CommError,
                         ConfigError=ConfigError)

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


def _forget(run: Run) -> None:
    """A run finished: it is no longer open, nor the active run (`Run`'s on_finish)."""
    global _current
    _open.discard(run)
    if _current is run:
        _current = None


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

    compat = Run(run, meta=meta, allow_val_change=bool(allow_val_change), on_finish=_forget)
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

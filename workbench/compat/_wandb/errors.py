"""The errors and warnings of `workbench.compat.wandb`, and how it refuses W&B calls.

The exception classes keep W&B's names (`wandb.Error`, `UsageError`, `CommError`,
`ConfigError`) so that scripts' `except` clauses resolve; `CompatWarning` is the one
category of every notice. `_refused` builds the stand-ins for W&B calls with no
workbench counterpart (`watch`, `save`, artifacts, sweeps), which fail loudly in one
line that says what to do instead.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

# Frames of these modules are the shim's own: a warning points past them, at the user.
_PUBLIC = "workbench.compat.wandb"
_PRIVATE = __name__.rpartition(".")[0] + "."


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


def _own(module: str | None) -> bool:
    return module == _PUBLIC or (module or "").startswith(_PRIVATE)


def _warn(message: str) -> None:
    """Warn at the user's line: the first frame outside the shim (workbench.compat.wandb
    and its parts in workbench.compat._wandb)."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and _own(frame.f_globals.get("__name__")):
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

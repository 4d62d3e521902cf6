"""W&B's media types (`wandb.Image`, `Table`, ...) and `wandb.plot`: accepted, then skipped.

The workbench store holds numbers and distributions, not media. These values can be
built and used as in W&B, so a script runs on; `wandb.log` warns once per key and
skips them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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

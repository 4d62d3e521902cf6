"""`wb bench NAME`: reproducible measurements of the figures the project promises.

Each bench is `fn(quick: bool, progress: Console | None) -> dict` of figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _store(**kw: Any) -> dict[str, Any]:
    from workbench.bench.store import bench_store

    return bench_store(**kw)


BENCHES: dict[str, Callable[..., dict[str, Any]]] = {"store": _store}

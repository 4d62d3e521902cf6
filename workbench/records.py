"""Typed records: what `Store.records()` yields, one frozen dataclass per record table.

A record leaves the store decoded once, as what it is: a scalar's NaN restored from
its flag, a distribution's edges and counts as tuples, a matrix's shape as a tuple and
its data as the raw bytes, an event's payload parsed. In-process readers (feed.py,
the exporters, selftests) use the attributes; the JSONL encoding (base64, the `type`
tag, strict JSON) belongs to the exporter (`export.record_json`), so the store never
shapes data for one output format.

This module imports nothing from the workbench, so any layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True, slots=True)
class ScalarRecord:
    """One logged number. `value` is NaN or +-inf as logged; `flag` says which
    (store.FINITE, NAN, POS_INF, NEG_INF), since SQLite keeps NaN as NULL."""

    id: int
    step: int | None
    key: str
    value: float
    wall: float | None
    flag: int
    type: ClassVar[str] = "scalar"


@dataclass(frozen=True, slots=True)
class DistRecord:
    """A distribution's summary and histogram (`len(edges) == len(counts) + 1`; empty
    when it had no finite value). `nonfinite` counts the NaN and inf values left out."""

    id: int
    step: int | None
    key: str
    count: int
    min: float | None
    max: float | None
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    nonfinite: int
    wall: float | None
    type: ClassVar[str] = "dist"


@dataclass(frozen=True, slots=True)
class MatrixRecord:
    """A small array (attention heads x layers, say), row-major `data` of `dtype`."""

    id: int
    step: int | None
    key: str
    shape: tuple[int, ...]
    dtype: str
    data: bytes
    wall: float | None
    type: ClassVar[str] = "matrix"

    def array(self) -> np.ndarray:
        """The data as a read-only numpy array of its shape (numpy imported here only:
        the store's readers of scalars and runs never need it)."""
        import numpy as np

        return np.frombuffer(self.data, dtype=self.dtype).reshape(self.shape)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """Something that happened at a step: `kind` (loss_spike, checkpoint, stage, ...),
    `severity` and a JSON `payload` (parsed; usually a dict)."""

    id: int
    step: int | None
    kind: str
    severity: str | None
    payload: Any
    wall: float | None
    type: ClassVar[str] = "event"


Record = ScalarRecord | DistRecord | MatrixRecord | EventRecord

__all__ = ["DistRecord", "EventRecord", "MatrixRecord", "Record", "ScalarRecord"]

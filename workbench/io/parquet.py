"""`wb export RUN -f parquet [-o PATH]`: a run as Parquet files, for pandas and polars.

Layout. Each record kind has its own columns, so each gets its own file rather than
one wide table with a `type` column and mostly empty cells; the scalars, the table a
dataframe user wants first, are at PATH itself (`pd.read_parquet(PATH)`), in long form:

  PATH                     scalars   step, key, value, wall
  STEM.dists.parquet       dists     step, key, count, min, max, mean, p50, p90, p99,
                                     edges (list<double>), counts (list<int64>),
                                     nonfinite, wall
  STEM.matrices.parquet    matrices  step, key, shape (list<int64>), dtype,
                                     values (list<double>, row-major)
  STEM.events.parquet      events    step, kind, severity, payload (JSON text), wall

STEM is PATH without `.parquet`. PATH defaults to `./RUNNAME.parquet`; an existing folder
means FOLDER/RUNNAME.parquet. All four files are always written (an empty one keeps its
columns), so a script can read any of them without checking and no stale sibling of an
earlier export survives next to a new one.

Rows are in commit order. `wall` is Unix seconds (`pd.to_datetime(df.wall, unit="s")`);
NaN and +-inf values stay NaN and +-inf. Every file carries the run row (id, name, kind,
status, config, ...) as JSON in its schema metadata under `workbench.run`
(`pq.read_schema(PATH).metadata[b"workbench.run"]`). Pivot to one column per metric
with `df.pivot_table(index="step", columns="key", values="value")`.

Streamed (10k rows at a time), written under temporary names and renamed at the end,
so a failed export leaves no partial file behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from workbench.export import strict_json
from workbench.io import BadInput, require
from workbench.records import EventRecord, MatrixRecord, Record
from workbench.run_record import RunRecord
from workbench.store import Store

PAGE = 10_000
SUFFIX = ".parquet"
KINDS = ("scalars", "dists", "matrices", "events")


def parquet_paths(path: Path, run_name: str) -> dict[str, Path]:
    """Where each record kind goes for `-o PATH` (see the module docstring)."""
    if path.is_dir():
        path = path / f"{run_name}{SUFFIX}"
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    return {"scalars": path.with_name(f"{stem}{SUFFIX}"),
            **{kind: path.with_name(f"{stem}.{kind}{SUFFIX}") for kind in KINDS[1:]}}


def _schemas(pa: Any) -> dict[str, Any]:
    return {
        "scalars": pa.schema([("step", pa.int64()), ("key", pa.string()),
                              ("value", pa.float64()), ("wall", pa.float64())]),
        "dists": pa.schema([("step", pa.int64()), ("key", pa.string()), ("count", pa.int64()),
                            *((c, pa.float64()) for c in ("min", "max", "mean", "p50", "p90",
                                                          "p99")),
                            ("edges", pa.list_(pa.float64())), ("counts", pa.list_(pa.int64())),
                            ("nonfinite", pa.int64()), ("wall", pa.float64())]),
        "matrices": pa.schema([("step", pa.int64()), ("key", pa.string()),
                               ("shape", pa.list_(pa.int64())), ("dtype", pa.string()),
                               ("values", pa.list_(pa.float64())), ("wall", pa.float64())]),
        "events": pa.schema([("step", pa.int64()), ("kind", pa.string()),
                             ("severity", pa.string()), ("payload", pa.string()),
                             ("wall", pa.float64())]),
    }


def export_parquet(st: Store, row: RunRecord, path: Path, *, keys: Sequence[str] = (),
                   since: int = 0) -> dict[str, tuple[Path, int]]:
    """Write the run's records past `since` (matching `keys`); {kind: (file, rows)}."""
    pa = require("pyarrow", "parquet")
    pq = require("pyarrow.parquet", "parquet")
    paths = parquet_paths(path, row.name)
    parent = paths["scalars"].parent
    if not parent.is_dir():
        raise BadInput(f"no folder {parent} for {paths['scalars'].name}")
    meta = {b"workbench.run": json.dumps(strict_json(row.to_dict()), default=str).encode()}
    temps = {kind: p.with_name(f".{p.name}.tmp{os.getpid()}") for kind, p in paths.items()}
    written: dict[str, tuple[Path, int]] = {}
    try:
        for kind, schema in _schemas(pa).items():
            schema = schema.with_metadata(meta)
            rows = 0
            with pq.ParquetWriter(temps[kind], schema) as writer:
                for page in _pages(st, row.id, kind, keys, since):
                    writer.write_table(pa.Table.from_pydict(_columns(kind, page), schema=schema))
                    rows += len(page)
            written[kind] = (paths[kind], rows)
        for kind, temp in temps.items():
            os.replace(temp, paths[kind])
    except BaseException:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        raise
    return written


def _pages(st: Store, run_id: str, table: str, keys: Sequence[str],
           since: int) -> Iterator[list[Record]]:
    cursor = since
    while True:
        page = list(st.records(run_id, since=cursor, keys=keys, limit=PAGE, tables=(table,)))
        if page:
            yield page
        if len(page) < PAGE:
            return
        cursor = page[-1].id


def _columns(kind: str, page: list[Record]) -> dict[str, list[Any]]:
    """Store records (one kind, as `Store.records` gives them) -> the file's columns."""
    if kind == "scalars":
        names: tuple[str, ...] = ("step", "key", "value", "wall")
    elif kind == "dists":
        names = ("step", "key", "count", "min", "max", "mean", "p50", "p90", "p99", "edges",
                 "counts", "nonfinite", "wall")
    elif kind == "matrices":
        names = ("step", "key", "shape", "dtype", "wall")
        out = {name: [getattr(rec, name) for rec in page] for name in names}
        out["values"] = [rec.array().astype(float).ravel().tolist()
                         for rec in page if isinstance(rec, MatrixRecord)]
        return out
    else:
        names = ("step", "kind", "severity", "wall")
        out = {name: [getattr(rec, name) for rec in page] for name in names}
        out["payload"] = [json.dumps(strict_json(rec.payload))
                          for rec in page if isinstance(rec, EventRecord)]
        return out
    return {name: [getattr(rec, name) for rec in page] for name in names}


__all__ = ["KINDS", "export_parquet", "parquet_paths"]

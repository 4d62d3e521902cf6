"""A run's scalars as an append-only columnar file, so a big run opens without SQLite.

Reading a million scalar rows out of SQLite costs seconds in Python (a tuple per row);
the same rows as fixed-size binary records load in milliseconds. `Store.write_batch`
appends each committed batch's scalars to `<run dir>/.scalars.log` (one `write` with
O_APPEND, after the commit), and `Store.scalar_history` reads the file back, checks it
against the store, and reads from SQLite only what the file lacks.

The file is derived and disposable: SQLite stays the only source of truth. A record
is (id, step, value, wall, key id) with NaN and infinities in `value` itself. Records
may arrive out of id order (two processes writing one run) or twice (a rewrite racing
an append), and a killed writer can leave half a record at the end: `read` returns
whole records sorted by id without duplicates, and the store trusts them only up to
an id below which the store holds exactly as many rows (docs/ARCHITECTURE.md, "The
store"). This module imports only numpy, and that lazily.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path
from typing import Any

LOG_NAME = ".scalars.log"


@functools.cache
def record_dtype() -> Any:
    import numpy as np

    return np.dtype([("id", "<i8"), ("step", "<i8"), ("value", "<f8"), ("wall", "<f8"),
                     ("key", "<i8")])


def append(path: Path, records: Any) -> None:
    """Add records at the end in one write (whole records, even with another process
    appending). Errors are swallowed: the file is only ever an optimisation."""
    data = records.tobytes()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return
    try:
        os.write(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path: Path) -> Any | None:
    """The file's whole records, sorted by id, without duplicates; None if there is no
    readable file."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    size = record_dtype().itemsize
    recs = np.frombuffer(raw, dtype=record_dtype(), count=len(raw) // size)
    ids = recs["id"]
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        recs = recs[np.argsort(ids, kind="stable")]
        ids = recs["id"]
        recs = recs[np.concatenate(([True], ids[1:] != ids[:-1]))]
    return recs


def write(path: Path, records: Any) -> None:
    """Replace the file with `records` (a temporary file, then a rename: a reader sees
    the old file or the new one). A writer killed mid-write leaves a temporary file,
    removed by a later write once it is old."""
    for stale in path.parent.glob(f"{path.name}.*.tmp"):
        try:
            if stale.stat().st_mtime < time.time() - 600:
                stale.unlink()
        except OSError:
            pass
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(records.tobytes())
        os.replace(tmp, path)
    except OSError:  # a read-only or deleted run folder: no file, no harm
        tmp.unlink(missing_ok=True)


def columns(records: Any) -> dict[int, tuple[Any, Any, Any]]:
    """Records (sorted by id) -> {key id: (steps, values, walls)}, each in id order."""
    import numpy as np

    if not len(records):
        return {}
    order = np.argsort(records["key"], kind="stable")
    keys = records["key"][order]
    cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    out = {}
    for part in np.split(order, cuts):
        picked = records[part]
        out[int(picked["key"][0])] = (picked["step"], picked["value"], picked["wall"])
    return out

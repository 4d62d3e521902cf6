"""Streaming export of a run's records (`wb export`), the basis of mirrors and imports.

JSONL starts with a `{"type": "run", ...}` line, then one line per record in
commit order; a followed stream repeats the run line when its status or last step
changes (mirrors copy progress from it). NaN and inf values are written as null with their `flag`
(1 nan, 2 +inf, 3 -inf), so every line is strict JSON and nothing is lost.
Non-finite numbers inside an event's payload (which has no flag) become null.

The store yields typed records (workbench/records.py); this module owns their JSON
form (`record_json`: the `type` tag, base64 matrix data, strict JSON) and its
inverse (`batch_of`), so a record is encoded once, on its way out.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import fields
from typing import IO, Any

from workbench.records import MatrixRecord, Record, ScalarRecord
from workbench.run_record import RunRecord
from workbench.store import NAN, NEG_INF, POS_INF, Batch, Store

POLL_S = 0.2  # a followed run's new rows go out within this (mirror lag)
PAGE = 10_000


def strict_json(obj: Any) -> Any:
    """NaN/inf -> None at any depth (event payloads hold them too): output stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def record_json(rec: Record) -> dict[str, Any]:
    """A record as its JSONL line holds it: `type` first, then the table's columns in
    order, matrix data as base64 text, NaN and inf as null (strict JSON)."""
    out: dict[str, Any] = {"type": rec.type}
    for f in fields(rec):
        out[f.name] = getattr(rec, f.name)
    if isinstance(rec, MatrixRecord):
        import base64

        out["data"] = base64.b64encode(rec.data).decode()
    return strict_json(out)


def run_json(row: RunRecord) -> dict[str, Any]:
    """The `{"type": "run", ...}` line: the run's columns, as `wb show --json` has them."""
    return strict_json({"type": "run", **row.to_dict()})


def export_run(st: Store, row: RunRecord, out: IO[str], *, fmt: str = "jsonl",
               keys: list[str] | None = None, since: int = 0, follow: bool = False) -> int:
    """Write records past `since`; with `follow`, keep going until the run ends.

    Returns the id of the last record written (the cursor to resume from).
    """
    keys = keys or []
    writer = csv.writer(out) if fmt == "csv" else None
    if writer:
        writer.writerow(["id", "step", "key", "value", "wall"])
    else:
        out.write(json.dumps(run_json(row)) + "\n")
    cursor, shown = since, (row.status, row.last_step)
    while True:
        # Read the status before the records, so the final drain sees everything.
        current = st.get_run(row.id) if follow else row
        while True:
            page = list(st.records(row.id, since=cursor, keys=keys, limit=PAGE))
            for rec in page:
                _write(out, writer, rec)
                cursor = rec.id
            if len(page) < PAGE:
                break
        if writer is None and (current.status, current.last_step) != shown:
            shown = (current.status, current.last_step)
            out.write(json.dumps(run_json(current)) + "\n")
        out.flush()
        if not follow or not current.is_active:
            return cursor
        time.sleep(POLL_S)


def follow_log(st: Store, row: RunRecord, out: IO[bytes], *, offset: int = 0,
               follow: bool = False) -> int:
    """Copy the run's stdout.log from byte `offset`; with `follow`, until the run ends
    (then what it wrote last). Returns the offset reached: a stream resumes there."""
    path = st.run_dir(row.id) / "stdout.log"
    while True:
        ended = not follow or not st.get_run(row.id).is_active
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while chunk := f.read(1 << 16):
                    out.write(chunk)
                    offset += len(chunk)
        except FileNotFoundError:
            pass
        out.flush()
        if ended:
            return offset
        time.sleep(POLL_S)


def _write(out: IO[str], writer: Any, rec: Record) -> None:
    if writer is None:
        out.write(json.dumps(record_json(rec)) + "\n")
    elif isinstance(rec, ScalarRecord):
        writer.writerow([rec.id, rec.step, rec.key, rec.value, rec.wall])


def batch_of(run_id: str, records: list[dict[str, Any]]) -> Batch:
    """Exported JSONL records (parsed) -> a Batch for `run_id`: the inverse of
    `record_json` (these are parsed JSON lines, from a file or a mirror's stream).

    Values come back as they were stored: NaN as NULL with its flag, infinities from
    their flag, histograms, shapes and payloads as JSON text, matrices as bytes.
    """
    import base64

    batch = Batch(run_id, [], [], [], [])
    for r in records:
        kind = r["type"]
        if kind == "scalar":
            flag = r["flag"]
            value = {NAN: None, POS_INF: math.inf, NEG_INF: -math.inf}.get(flag, r["value"])
            batch.scalars.append((r["step"], r["key"], value, r["wall"], flag))
        elif kind == "dist":
            batch.dists.append((r["step"], r["key"], r["count"], r["min"], r["max"], r["mean"],
                                r["p50"], r["p90"], r["p99"], json.dumps(r["edges"]),
                                json.dumps(r["counts"]), r["nonfinite"], r["wall"]))
        elif kind == "matrix":
            batch.matrices.append((r["step"], r["key"], json.dumps(r["shape"]), r["dtype"],
                                   base64.b64decode(r["data"]), r["wall"]))
        elif kind == "event":
            batch.events.append((r["step"], r["kind"], r["severity"], json.dumps(r["payload"]),
                                 r["wall"]))
        else:
            raise ValueError(f"unknown record type {kind!r}")
    return batch

"""Streaming export of a run's records (`wb export`), the basis of mirrors and imports.

JSONL starts with a `{"type": "run", ...}` line, then one line per record in
commit order; a followed stream repeats the run line when its status or last step
changes (mirrors copy progress from it). NaN and inf values are written as null with their `flag`
(1 nan, 2 +inf, 3 -inf), so every line is strict JSON and nothing is lost.
Non-finite numbers inside an event's payload (which has no flag) become null.
"""

from __future__ import annotations

import csv
import json
import math
import time
from typing import IO, Any

from workbench.store import (
    ACTIVE_STATUSES,
    NAN,
    NEG_INF,
    POS_INF,
    Batch,
    Store,
    strict_json,
)

POLL_S = 0.2  # a followed run's new rows go out within this (mirror lag)
PAGE = 10_000


def export_run(st: Store, row: dict[str, Any], out: IO[str], *, fmt: str = "jsonl",
               keys: list[str] | None = None, since: int = 0, follow: bool = False) -> int:
    """Write records past `since`; with `follow`, keep going until the run ends.

    Returns the id of the last record written (the cursor to resume from).
    """
    keys = keys or []
    writer = csv.writer(out) if fmt == "csv" else None
    if writer:
        writer.writerow(["id", "step", "key", "value", "wall"])
    else:
        out.write(json.dumps(strict_json({"type": "run", **row})) + "\n")
    cursor, shown = since, (row["status"], row["last_step"])
    while True:
        # Read the status before the records, so the final drain sees everything.
        current = st.get_run(row["id"]) if follow else row
        while True:
            page = list(st.records(row["id"], since=cursor, keys=keys, limit=PAGE))
            for rec in page:
                _write(out, writer, rec)
                cursor = rec["id"]
            if len(page) < PAGE:
                break
        if writer is None and (current["status"], current["last_step"]) != shown:
            shown = (current["status"], current["last_step"])
            out.write(json.dumps(strict_json({"type": "run", **current})) + "\n")
        out.flush()
        if not follow or current["status"] not in ACTIVE_STATUSES:
            return cursor
        time.sleep(POLL_S)


def follow_log(st: Store, row: dict[str, Any], out: IO[bytes], *, offset: int = 0,
               follow: bool = False) -> int:
    """Copy the run's stdout.log from byte `offset`; with `follow`, until the run ends
    (then what it wrote last). Returns the offset reached: a stream resumes there."""
    path = st.run_dir(row["id"]) / "stdout.log"
    while True:
        ended = not follow or st.get_run(row["id"])["status"] not in ACTIVE_STATUSES
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


def _write(out: IO[str], writer: Any, rec: dict[str, Any]) -> None:
    if writer is None:
        out.write(json.dumps(strict_json(rec)) + "\n")
    elif rec["type"] == "scalar":
        writer.writerow([rec["id"], rec["step"], rec["key"], rec["value"], rec["wall"]])


def batch_of(run_id: str, records: list[dict[str, Any]]) -> Batch:
    """Exported JSONL records (parsed) -> a Batch for `run_id`: the inverse of `_write`.

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

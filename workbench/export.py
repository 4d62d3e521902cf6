"""Streaming export of a run's records (`wb export`), the basis of mirrors and imports.

JSONL starts with a `{"type": "run", ...}` line, then one line per record in
commit order. NaN and inf values are written as null with their `flag`
(1 nan, 2 +inf, 3 -inf), so every line is strict JSON and nothing is lost.
Non-finite numbers inside an event's payload (which has no flag) become null.
"""

from __future__ import annotations

import csv
import json
import time
from typing import IO, Any

from workbench.store import ACTIVE_STATUSES, Store, strict_json

POLL_S = 0.5
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
    cursor, status = since, row["status"]
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
        if writer is None and current["status"] != status:
            status = current["status"]
            out.write(json.dumps(strict_json({"type": "run", **current})) + "\n")
        out.flush()
        if not follow or current["status"] not in ACTIVE_STATUSES:
            return cursor
        time.sleep(POLL_S)


def _write(out: IO[str], writer: Any, rec: dict[str, Any]) -> None:
    if writer is None:
        out.write(json.dumps(strict_json(rec)) + "\n")
    elif rec["type"] == "scalar":
        writer.writerow([rec["id"], rec["step"], rec["key"], rec["value"], rec["wall"]])

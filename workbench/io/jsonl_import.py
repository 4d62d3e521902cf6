"""`wb import jsonl`: a `wb export` JSONL stream back into a NEW run, exactly.

Why it exists: to move a run between stores (a laptop, a shared disk, a bug report)
without copying SQLite files. Exporting the imported run gives the same records,
in the same order, ids aside (the store numbers rows from its own sequence).

Choices, and why:
- A new run id, always: ids are store-wide and the source store's id may exist here.
- The name is kept when free, else NAME-N (as `create_run` numbers runs); an explicit
  `--name` that is taken is refused, since `wb show NAME` resolves to the newest run
  of a name and would hide the other one.
- The run line gives kind, config, spec, status, steps, host and timestamps. A run that
  was queued/running when exported is imported as `lost`: no process here will ever
  finish it. The source store's relations (group, `after`, `resumed_from`) are dropped:
  they name runs of another store. A followed export (`--follow`) repeats the run line;
  the last one wins.
- Streamed: one pass, at most 10k records per transaction, so a big file neither sits
  in memory nor blocks the store's other writers for its whole length.
- All or nothing: a bad line (not JSON, unknown record type, missing field) or ctrl-c
  deletes the run (rows and folder) before the error is reported, so the import is
  one pass rather than a validating pass plus a writing pass (stdin can't be re-read).
- Order is kept exactly: `write_batch` numbers a batch's scalars, then dists, then
  matrices, then events, so a batch is cut wherever the file goes back in that order.
  An exported run already comes in such runs of rows (one per flush of its writer), so
  this costs no more transactions than the original run took.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from workbench.export import batch_of
from workbench.io import (
    BadInput,
    Imported,
    all_or_nothing,
    explicit_name,
    safe_name,
    start_run,
    taken_names,
    unique_name,
)
from workbench.store import ACTIVE_STATUSES, RUN_STATUSES, Store

BATCH = 10_000  # records per transaction
_ORDER = {"scalar": 0, "dist": 1, "matrix": 2, "event": 3}  # write_batch's numbering order
_FIELDS = {
    "scalar": ("step", "key", "value", "wall", "flag"),
    "dist": ("step", "key", "count", "min", "max", "mean", "p50", "p90", "p99", "edges",
             "counts", "nonfinite", "wall"),
    "matrix": ("step", "key", "shape", "dtype", "data", "wall"),
    "event": ("step", "kind", "severity", "payload", "wall"),
}
_COUNTER = {"scalar": "scalars", "dist": "dists", "matrix": "matrices", "event": "events"}
# Copied from the run line onto the new run; the rest (id, num, dir, pid, ...) is this store's.
_KEPT = ("spec", "config", "host", "created", "started", "ended", "heartbeat", "exit_code",
         "last_step", "total_steps")

Line = tuple[int, int, dict[str, Any]]  # (line number, bytes, parsed object)
_decode = json.JSONDecoder().decode  # on str: skips json.loads' per-call encoding sniffing
_NUMBERS = (int, float)


def import_jsonl(st: Store, src: IO[bytes], *, source: str, name: str | None = None,
                 progress: Callable[[int], None] | None = None) -> Imported:
    """Read one run's `wb export` JSONL from `src` into a new run of `st`.

    `source` names the input in messages; `progress(bytes_read)` is called after each
    batch. Raises BadInput (and leaves nothing behind) on input that is not an export.
    """
    lines = _parse(src, source)
    first = next(lines, None)
    if first is None:
        raise BadInput(f"{source} is empty: expected `wb export` JSONL (a run line first)")
    lineno, done, head = first
    if head.get("type") != "run":
        raise BadInput(f"{source} line {lineno}: the first line must be the run line "
                       f"({{\"type\": \"run\", ...}}), not type {head.get('type')!r}; "
                       "is it `wb export` JSONL?")
    _check_run(head, source, lineno)
    taken = taken_names(st)
    run_name = (explicit_name(name, taken) if name
                else unique_name(safe_name(str(head.get("name") or head["kind"])), taken))
    with all_or_nothing(st) as created:
        row = start_run(st, kind=head["kind"], name=run_name, created=created)
        result = Imported(row.id, row.name, source)
        meta, pending, level = head, [], 0
        for lineno, size, rec in lines:
            done += size
            kind = rec.get("type")
            if kind == "run":
                if rec.get("id") != head.get("id"):
                    raise BadInput(f"{source} line {lineno}: a second run ({rec.get('id')!r} "
                                   f"after {head.get('id')!r}); import one run at a time")
                _check_run(rec, source, lineno)
                meta = rec
                continue
            order = _ORDER.get(kind)  # type: ignore[arg-type]
            if order is None:
                raise BadInput(f"{source} line {lineno}: unknown record type {kind!r} "
                               f"(expected run, {', '.join(_ORDER)})")
            _check(rec, kind, source, lineno)
            if pending and (order < level or len(pending) >= BATCH):
                _flush(st, row.id, pending, source, result)
                pending = []
                if progress:
                    progress(done)
            level = order
            pending.append((lineno, rec))
        if pending:
            _flush(st, row.id, pending, source, result)
        if progress:
            progress(done)
        _finish(st, row.id, meta)
    return result


def _parse(src: Iterable[bytes], source: str) -> Iterator[Line]:
    """Non-blank lines as JSON objects, with their line number and size (for progress)."""
    for lineno, raw in enumerate(src, 1):
        if not raw.strip():
            continue
        try:
            obj = _decode(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadInput(f"{source} line {lineno} is not UTF-8 text: expected `wb export` "
                           "JSONL") from None
        except ValueError as exc:
            reason = getattr(exc, "msg", str(exc))
            raise BadInput(f"{source} line {lineno} is not JSON ({reason}): expected "
                           "`wb export` JSONL") from None
        if not isinstance(obj, dict):
            raise BadInput(f"{source} line {lineno} is not a JSON object: expected "
                           "`wb export` JSONL")
        yield lineno, len(raw), obj


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_run(rec: dict[str, Any], source: str, lineno: int) -> None:
    """The run line's fields that become columns: types checked before anything is stored."""
    where = f"{source} line {lineno}: run line"
    if not isinstance(rec.get("kind"), str) or not rec["kind"]:
        raise BadInput(f"{where} has no kind")
    for field in ("created", "started", "ended", "heartbeat"):
        if rec.get(field) is not None and not _is_num(rec[field]):
            raise BadInput(f"{where}: {field} must be a number of seconds, not {rec[field]!r}")
    for field in ("last_step", "total_steps", "exit_code"):
        if rec.get(field) is not None and not _is_int(rec[field]):
            raise BadInput(f"{where}: {field} must be an integer, not {rec[field]!r}")
    config = rec.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    if rec.get("config") is not None and not isinstance(config, dict):
        raise BadInput(f"{where}: config must be a JSON object")


def _check(rec: dict[str, Any], kind: str, source: str, lineno: int) -> None:
    """Reject records the store would take but mangle (SQLite keeps any type anywhere)."""
    if kind == "scalar" and len(rec) == 7:  # the common case, checked inline (~1M a run)
        step, key, value, wall = (rec.get("step", ""), rec.get("key"), rec.get("value", ""),
                                  rec.get("wall", ""))
        if ((step is None or type(step) is int) and type(key) is str and key
                and (value is None or type(value) in _NUMBERS)
                and (wall is None or type(wall) in _NUMBERS) and rec.get("flag") in (0, 1, 2, 3)):
            return
    missing = [f for f in _FIELDS[kind] if f not in rec]
    if missing:
        raise BadInput(f"{source} line {lineno}: {kind} record lacks {', '.join(missing)}")
    bad = None
    if rec["step"] is not None and not _is_int(rec["step"]):
        bad = "step"
    elif rec["wall"] is not None and not _is_num(rec["wall"]):
        bad = "wall"
    elif kind == "event":
        if not isinstance(rec["kind"], str) or not rec["kind"]:
            bad = "kind"
    elif not isinstance(rec["key"], str) or not rec["key"]:
        bad = "key"
    elif kind == "scalar":
        if rec["flag"] not in (0, 1, 2, 3) or (rec["value"] is not None
                                               and not _is_num(rec["value"])):
            bad = "value"
    elif kind == "dist":
        if not isinstance(rec["edges"], list) or not isinstance(rec["counts"], list):
            bad = "edges/counts"
    elif not isinstance(rec["data"], str) or not isinstance(rec["shape"], list):
        bad = "data/shape"
    if bad:
        raise BadInput(f"{source} line {lineno}: {kind} record has a bad {bad}")


def _flush(st: Store, run_id: str, pending: list[tuple[int, dict[str, Any]]], source: str,
           result: Imported) -> None:
    """One transaction. A record batch_of can't convert (bad base64, say) is named by line."""
    records = [r for _, r in pending]
    try:
        batch = batch_of(run_id, records)
    except Exception:
        for lineno, rec in pending:
            try:
                batch_of(run_id, [rec])
            except Exception as exc:
                raise BadInput(f"{source} line {lineno}: bad {rec['type']} record "
                               f"({type(exc).__name__}: {exc})") from None
        raise
    try:
        st.write_batch(batch)
    except (sqlite3.InterfaceError, OverflowError, TypeError) as exc:
        raise BadInput(f"{source} lines {pending[0][0]}-{pending[-1][0]}: cannot store "
                       f"these records ({exc})") from None
    for rec in records:
        counter = _COUNTER[rec["type"]]
        setattr(result, counter, getattr(result, counter) + 1)


def _finish(st: Store, run_id: str, meta: dict[str, Any]) -> None:
    """Give the new run the source run's state; until now it was `running` (by us)."""
    fields = {f: meta.get(f) for f in _KEPT}
    status = meta.get("status")
    fields["status"] = "lost" if status in ACTIVE_STATUSES or status not in RUN_STATUSES \
        else status
    fields["pid"] = None
    fields["created"] = fields["created"] or time.time()
    fields["config"] = fields["config"] or "{}"
    if not fields["host"]:
        del fields["host"]
    st.update_run(run_id, **fields)

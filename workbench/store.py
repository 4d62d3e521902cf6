"""The run store: one SQLite database (WAL) plus one folder per run.

Every record row (scalar, distribution, matrix, event) takes its id from one
store-wide sequence, allocated inside the writer's write transaction. Ids are
therefore strictly increasing in commit order across all record kinds, so a
reader (TUI, `wb export --follow`, the SSH mirror) resumes from a single number
with no gaps and no duplicates.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.procs import pid_alive
from workbench.records import DistRecord, EventRecord, MatrixRecord, Record, ScalarRecord
from workbench.run_record import ACTIVE_STATUSES, RunRecord
from workbench.scalar_log import LOG_NAME

if TYPE_CHECKING:  # imported on first use: about 0.1 s that read paths (`wb ls`) skip
    import sqlite_utils

SCHEMA_VERSION = 3
DB_NAME = "workbench.db"
RUN_STATUSES = ("queued", "running", "finished", "failed", "stopped", "lost")
# Seconds between heartbeats written by workers and SDK writer threads.
HEARTBEAT_S = 2.0
# A run's scalars as an append-only columnar file (scalar_log.py), kept for runs this big.
SCALAR_CACHE = LOG_NAME
SCALAR_CACHE_MIN_ROWS = 50_000

# Non-finite flags on scalars. SQLite stores NaN as NULL, so the flag keeps it.
FINITE, NAN, POS_INF, NEG_INF = 0, 1, 2, 3
RECORD_TABLES = ("scalars", "dists", "matrices", "events")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ID_RE = re.compile(r"[0-9a-z]{8}")


class StoreError(Exception):
    """A problem with the store that the user can fix (bad ref, newer schema)."""


def resolve_root(store: str | os.PathLike[str] | None = None) -> Path:
    """`--store DIR`, then `WB_STORE`, then `./runs`."""
    if store:
        return Path(store).expanduser()
    env = os.environ.get("WB_STORE")
    return Path(env).expanduser() if env else Path("runs")


def validate_name(name: str, what: str = "run name") -> str:
    """Run (and group) names become paths and remote arguments: keep them boring."""
    # fullmatch, not match: `$` would also accept a trailing newline.
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise StoreError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '..')"
        )
    return name


def name_from(text: str, limit: int = 64) -> str | None:
    """Free text (a project name, a folder path) made into a valid name, or None when
    nothing usable is left: other characters become '-', runs of dots one dot.

    For names that come from elsewhere (imports, W&B, accelerate), which deserve a
    recognizable run name rather than a refusal. A name already valid is kept.
    """
    try:
        return validate_name(text)
    except StoreError:
        pass
    clean = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text)).strip("._-")
    try:
        return validate_name(clean[:limit].rstrip("._-"))
    except StoreError:
        return None


def flag_of(value: float) -> int:
    if value != value:
        return NAN
    if value == math.inf:
        return POS_INF
    if value == -math.inf:
        return NEG_INF
    return FINITE


def value_of(value: float | None, flag: int) -> float:
    """Inverse of the NaN-as-NULL storage."""
    return math.nan if flag == NAN else value  # type: ignore[return-value]


def connect(path: Path, timeout: float = 60.0) -> sqlite3.Connection:
    """A connection in autocommit mode; transactions are explicit BEGINs."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


# -- schema -----------------------------------------------------------------------------
# Record tables refer to runs by `runs.num` and to metric keys by `keys.id`
# (integers): it makes the indexes small, 1.5x the insert rate of text columns.


def _create_v1(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": str, "num": int, "name": str, "kind": str, "status": str, "host": str,
            "pid": int, "launcher": str, "spec": str, "config": str, "created": float,
            "started": float, "ended": float, "heartbeat": float, "exit_code": int,
            "resumed_from": str, "last_step": int, "total_steps": int, "dir": str,
        },
        pk="id", not_null={"num", "name", "kind", "status", "created"},
    )
    db["keys"].create({"id": int, "name": str}, pk="id", not_null={"name"})
    db["keys"].create_index(["name"], unique=True, index_name="ux_keys_name")
    db["scalars"].create(
        {"id": int, "run": int, "step": int, "key": int, "value": float, "wall": float,
         "flag": int},
        pk="id", not_null={"run", "key"},
    )
    db["dists"].create(
        {"id": int, "run": int, "step": int, "key": int, "count": int, "min": float,
         "max": float, "mean": float, "p50": float, "p90": float, "p99": float,
         "edges": str, "counts": str, "nonfinite": int, "wall": float},
        pk="id", not_null={"run", "key"},
    )
    db["matrices"].create(
        {"id": int, "run": int, "step": int, "key": int, "shape": str, "dtype": str,
         "data": bytes, "wall": float},
        pk="id", not_null={"run", "key"},
    )
    db["events"].create(
        {"id": int, "run": int, "step": int, "kind": str, "severity": str, "payload": str,
         "wall": float},
        pk="id", not_null={"run", "kind"},
    )
    for table in RECORD_TABLES:
        # run+key+step serves charts; run+id serves incremental reads.
        col = "kind" if table == "events" else "key"
        db[table].create_index(["run", col, "step"], index_name=f"ix_{table}_run_{col}_step")
        db[table].create_index(["run", "id"], index_name=f"ix_{table}_run_id")
    db["runs"].create_index(["num"], unique=True, index_name="ux_runs_num")
    db["runs"].create_index(["status"], index_name="ix_runs_status")
    db["runs"].create_index(["name"], index_name="ix_runs_name")
    db["meta"].insert_all([{"key": "seq", "value": "0"}, {"key": "runs", "value": "0"}])


def _v1_to_v2(db: sqlite_utils.Database) -> None:
    """Run groups: launched together for comparison (`wb launch A B C`, `wb compare`).

    `grp` names the group (NULL: none; not `group`, an SQL keyword). `after` is the id of
    the run a queued run waits for, so at most `--parallel N` of a group train at once.
    Nullable columns: existing runs keep working as runs without a group.
    """
    db["runs"].add_column("grp", str)
    db["runs"].add_column("after", str)
    db["runs"].create_index(["grp"], index_name="ix_runs_grp")


def _v2_to_v3(db: sqlite_utils.Database) -> None:
    """Mirrors of remote runs (launch/mirror.py): per mirrored run, the remote record
    id it has copied up to (`cursor`, advanced in the same transaction as the copied
    rows, so a reconnect resumes with no gap and no duplicate), and its process and
    connection state for the views."""
    db["mirrors"].create({"run": str, "cursor": int, "pid": int, "state": str,
                          "error": str, "updated": float}, pk="run", not_null={"cursor"})


# MIGRATIONS[v] upgrades a store at schema version v to v + 1.
MIGRATIONS: dict[int, Any] = {0: _create_v1, 1: _v1_to_v2, 2: _v2_to_v3}


def _migrate(conn: sqlite3.Connection) -> None:
    try:  # the common case, a store at this schema, needs no lock and no sqlite_utils
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet (or busy): the locked path decides
        row = None
    if row is not None and int(row[0]) == SCHEMA_VERSION:
        return
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "meta" not in db.table_names():
            db["meta"].create({"key": str, "value": str}, pk="key")
            db["meta"].insert({"key": "schema_version", "value": "0"})
        version = int(db["meta"].get("schema_version")["value"])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"this store was written by a newer workbench (schema {version}, this one "
                f"reads {SCHEMA_VERSION}); upgrade workbench-lab"
            )
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](db)
            version += 1
            db["meta"].upsert({"key": "schema_version", "value": str(version)}, pk="key")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- records ------------------------------------------------------------------------------


@dataclass
class Batch:
    """One flush of one run: rows without ids; the store numbers them in one transaction.

    scalars: (step, key, value, wall, flag)
    dists: (step, key, count, min, max, mean, p50, p90, p99, edges, counts, nonfinite, wall)
    matrices: (step, key, shape, dtype, data, wall)
    events: (step, kind, severity, payload, wall)
    """

    run_id: str
    scalars: Sequence[tuple] = ()
    dists: Sequence[tuple] = ()
    matrices: Sequence[tuple] = ()
    events: Sequence[tuple] = ()

    def __len__(self) -> int:
        return len(self.scalars) + len(self.dists) + len(self.matrices) + len(self.events)


_INSERT = {
    "scalars": "INSERT INTO scalars (id, run, step, key, value, wall, flag) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)",
    "dists": "INSERT INTO dists (id, run, step, key, count, min, max, mean, p50, p90, p99, "
    "edges, counts, nonfinite, wall) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "matrices": "INSERT INTO matrices (id, run, step, key, shape, dtype, data, wall) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "events": "INSERT INTO events (id, run, step, kind, severity, payload, wall) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)",
}
_SELECT = {
    "scalars": "SELECT r.id, r.step, k.name AS key, r.value, r.wall, r.flag FROM scalars r "
    "JOIN keys k ON k.id = r.key",
    "dists": "SELECT r.id, r.step, k.name AS key, r.count, r.min, r.max, r.mean, r.p50, r.p90, "
    "r.p99, r.edges, r.counts, r.nonfinite, r.wall FROM dists r JOIN keys k ON k.id = r.key",
    "matrices": "SELECT r.id, r.step, k.name AS key, r.shape, r.dtype, r.data, r.wall "
    "FROM matrices r JOIN keys k ON k.id = r.key",
    "events": "SELECT r.id, r.step, r.kind, r.severity, r.payload, r.wall FROM events r",
}


@functools.cache
def _log_read_dtype() -> Any:
    """A scalar row as `scalar_history` reads it to fill the scalar log."""
    import numpy as np

    return np.dtype([("id", "<i8"), ("step", "<i8"), ("value", "<f8"), ("wall", "<f8"),
                     ("key", "<i8"), ("flag", "<i8")])


@functools.cache
def _scalar_dtype() -> Any:
    """The structured row of scalar reads (numpy stays out of `import workbench.store`)."""
    import numpy as np

    return np.dtype([("step", "<i8"), ("key", "<i8"), ("value", "<f8"), ("wall", "<f8"),
                     ("flag", "<i8")])


class Store:
    """A run store rooted at a directory. Cheap to open; one connection per instance."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, create: bool = True):
        self.root = resolve_root(root)
        self.path = self.root / DB_NAME
        if not self.path.exists():
            if not create:
                raise StoreError(f"no store at {self.root} (pass --store DIR or set WB_STORE)")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                os.chmod(self.root, 0o700)
            except OSError as exc:
                raise StoreError(f"cannot create the store at {self.root}: {exc}") from None
        try:
            self.conn = connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path} is not a usable workbench store ({exc}); "
                             "point --store at another folder") from None
        try:
            self._init_db()
        except (sqlite3.DatabaseError, OSError) as exc:
            self.conn.close()
            raise StoreError(f"{self.path} is not a usable workbench store ({exc}); "
                             "point --store at another folder") from None
        except BaseException:  # a newer schema, a failed migration: don't leak the handle
            self.conn.close()
            raise
        self._nums: dict[str, int] = {}
        self._key_ids: dict[str, int] = {}
        self._cache_due: tuple | None = None  # a scalar log write left for later

    def _init_db(self) -> None:
        # Setting WAL needs a brief exclusive lock; concurrent first opens may collide.
        for attempt in range(50):
            try:
                if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.conn.execute("PRAGMA journal_mode = WAL")
                    os.chmod(self.path, 0o600)
                _migrate(self.conn)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        """sqlite_utils over this connection, for writes and schema work (reads use
        plain SQL: importing sqlite_utils costs about 0.1 s)."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    @property
    def schema_version(self) -> int:
        return int(self.db["meta"].get("schema_version")["value"])

    # -- runs ---------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def create_run(
        self,
        *,
        kind: str,
        name: str | None = None,
        base: str | None = None,
        status: str = "queued",
        launcher: str = "local",
        spec: str | None = None,
        config: dict[str, Any] | None = None,
        resumed_from: str | None = None,
        pid: int | None = None,
        total_steps: int | None = None,
        group: str | None = None,
        after: str | None = None,
        run_id: str | None = None,
        host: str | None = None,
    ) -> RunRecord:
        """Insert a run row and make its folder (mode 700).

        Without `name`, the run is called BASE-N (BASE defaults to the kind). `group`
        tags runs launched together; `after` is the run a queued worker waits for.
        A mirror of a remote run passes the remote `run_id` and the configured `host`
        name, so `wb stop ID` means the same run on both sides.
        """
        if run_id is None:
            run_id = new_run_id()
        elif not _ID_RE.fullmatch(run_id):
            raise StoreError(f"invalid run id {run_id!r}: expected 8 characters a-z0-9")
        if name:
            validate_name(name)
        else:
            base = validate_name(base or kind)
        if group is not None:
            validate_name(group, "group name")
        now = time.time()
        row = {
            "id": run_id, "num": None, "name": name, "kind": kind, "status": status,
            "host": host or socket.gethostname(), "pid": pid, "launcher": launcher, "spec": spec,
            "config": json.dumps(config or {}, default=str), "created": now,
            "started": now if status == "running" else None, "ended": None,
            "heartbeat": now, "exit_code": None, "resumed_from": resumed_from,
            "last_step": None, "total_steps": total_steps,
            "dir": str(self.run_dir(run_id).resolve()), "grp": group, "after": after,
        }
        run_dir = self.run_dir(run_id)
        if run_dir.exists():
            raise StoreError(f"run {run_id} already exists in {self.root}")
        run_dir.mkdir(mode=0o700)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            # Never reused, even after deletes: readers cache run -> num.
            row["num"] = int(self.conn.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'runs' RETURNING value"
            ).fetchone()[0])
            if not name:
                row["name"] = self.next_name(base)
            self.db["runs"].insert(row)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            run_dir.rmdir()
            raise
        return run_record(row)

    def _next_suffix(self, base: str, column: str = "name") -> int:
        """1 + the largest N among runs named (or grouped, column `grp`) BASE-N."""
        names = self.conn.execute(
            f"SELECT substr({column}, ?) FROM runs WHERE substr({column}, 1, ?) = ?",
            (len(base) + 2, len(base) + 1, f"{base}-"),
        )
        return 1 + max((int(n) for (n,) in names if n.isdigit()), default=0)

    def new_group_name(self, base: str = "group") -> str:
        """BASE-N, unused so far: each group launch is its own comparison."""
        return f"{validate_name(base, 'group name')}-{self._next_suffix(base, 'grp')}"

    def groups(self) -> list[str]:
        """Group names, in the order their first run was created."""
        return [g for (g,) in self.conn.execute(
            "SELECT grp FROM runs WHERE grp IS NOT NULL GROUP BY grp ORDER BY min(num)")]

    def has_group(self, group: str) -> bool:
        return self.conn.execute("SELECT 1 FROM runs WHERE grp = ? LIMIT 1",
                                 (group,)).fetchone() is not None

    def update_run(self, run_id: str, **fields: Any) -> None:
        if "config" in fields and not isinstance(fields["config"], str):
            fields["config"] = json.dumps(fields["config"], default=str)
        self.db["runs"].update(run_id, fields)

    def merge_config(self, run_id: str, values: dict[str, Any], *,
                     keep_existing: bool = False) -> dict[str, Any]:
        """Merge `values` into the run's config in one statement (JSON merge patch), so
        processes attached to one run cannot overwrite each other's keys."""
        expr = "json_patch(?, config)" if keep_existing else "json_patch(config, ?)"
        row = self.conn.execute(
            f"UPDATE runs SET config = {expr} WHERE id = ? RETURNING config",
            (json.dumps(values, default=str), run_id),
        ).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.root}")
        return json.loads(row[0])

    def get_run(self, run_id: str) -> RunRecord:
        row = next(_dicts(self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,))),
                   None)
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.root}")
        return _with_liveness(row)

    def stored_status(self, run_id: str) -> str | None:
        """The status as recorded, before the read-time `lost` judgement."""
        row = self.conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def last_step(self, run_id: str) -> int | None:
        """The run's `last_step` as its writers keep it (None before the first step): one
        column, for a sampler that polls it every few seconds without building a record."""
        row = self.conn.execute("SELECT last_step FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.root}")
        return row[0]

    def runs(self, status: str | None = None, group: str | None = None,
             kind: str | None = None) -> list[RunRecord]:
        """Runs oldest first; `status` filters on the read-time status (so `lost` works),
        `group` and `kind` on the stored columns."""
        clauses = [(c, v) for c, v in (("grp = ?", group), ("kind = ?", kind)) if v is not None]
        where = " AND ".join(c for c, _ in clauses)
        sql = "SELECT * FROM runs" + (f" WHERE {where}" if where else "") + " ORDER BY num"
        rows = [_with_liveness(r) for r in _dicts(self.conn.execute(sql, [v for _, v in clauses]))]
        return [r for r in rows if status is None or r.status == status]

    def resolve(self, ref: str) -> RunRecord:
        """RUN is an id, a name (the newest run of that name), or a unique id prefix.

        A name is tried before a prefix (as `docker` does): otherwise a short name
        such as `lr3` would silently resolve to another run whose id starts `lr3`.
        Prefixes are case-sensitive (LIKE would fold case).
        """
        row = self.conn.execute("SELECT id FROM runs WHERE id = ?", (ref,)).fetchone()
        if row:
            return self.get_run(row[0])
        named = self.conn.execute(
            "SELECT id FROM runs WHERE name = ? ORDER BY num DESC LIMIT 1", (ref,)).fetchone()
        if named:
            return self.get_run(named[0])
        ids = [r[0] for r in self.conn.execute(
            "SELECT id FROM runs WHERE substr(id, 1, ?) = ? ORDER BY num", (len(ref), ref))
        ] if ref else []
        if len(ids) == 1:
            return self.get_run(ids[0])
        if len(ids) > 1:
            raise StoreError(f"run prefix {ref!r} is ambiguous ({', '.join(ids[:5])}); "
                             "give more characters")
        raise StoreError(f"no run {ref!r} in {self.root} (see `wb ls`)")

    def delete_run(self, run_id: str) -> None:
        """Remove a run's rows in one transaction, then its folder."""
        import shutil

        num = self.run_num(run_id)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for table in RECORD_TABLES:
                self.conn.execute(f"DELETE FROM {table} WHERE run = ?", (num,))
            self.conn.execute("DELETE FROM mirrors WHERE run = ?", (run_id,))
            self.conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._nums.pop(run_id, None)
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def run_num(self, run_id: str) -> int:
        """The integer the record tables use for a run."""
        num = self._nums.get(run_id)
        if num is None:
            row = self.conn.execute("SELECT num FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.root}")
            num = self._nums[run_id] = row[0]
        return num

    # -- writes -------------------------------------------------------------------------

    def _intern(self, names: Iterable[str]) -> dict[str, int]:
        """Key name -> id, adding new names; call inside the write transaction."""
        ids = self._key_ids
        for name in set(names) - ids.keys():
            text = str(name)  # a non-str key must not poison the batch (sqlite3 can't bind it)
            self.conn.execute("INSERT OR IGNORE INTO keys (name) VALUES (?)", (text,))
            ids[name] = self.conn.execute("SELECT id FROM keys WHERE name = ?",
                                          (text,)).fetchone()[0]
        return ids

    def next_name(self, base: str) -> str:
        """The name `create_run` would give a run of BASE now: BASE-N."""
        return f"{validate_name(base)}-{self._next_suffix(base)}"

    def write_batch(self, batch: Batch, *, last_step: int | None = None,
                    heartbeat: bool = False, mirror_cursor: int | None = None) -> None:
        """Write one batch atomically: ids from the store-wide sequence, one transaction.

        `mirror_cursor`: the remote id of the batch's last record, saved in the same
        transaction (launch/mirror.py), so rows and cursor never disagree after a crash.
        """
        conn = self.conn
        run = self.run_num(batch.run_id)
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq = int(conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])
            first_scalar = seq + 1  # scalars are numbered first (RECORD_TABLES' order)
            keys = self._intern(r[1] for t in ("scalars", "dists", "matrices")
                                for r in getattr(batch, t))
            for table in RECORD_TABLES:
                rows = getattr(batch, table)
                if not rows:
                    continue
                if table == "events":
                    numbered = [(i, run, *r) for i, r in enumerate(rows, seq + 1)]
                else:
                    numbered = [(i, run, r[0], keys[r[1]], *r[2:])
                                for i, r in enumerate(rows, seq + 1)]
                conn.executemany(_INSERT[table], numbered)
                seq += len(rows)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
            if mirror_cursor is not None:
                conn.execute("INSERT INTO mirrors (run, cursor, updated) VALUES (?, ?, ?) "
                             "ON CONFLICT(run) DO UPDATE SET cursor = excluded.cursor, "
                             "updated = excluded.updated",
                             (batch.run_id, mirror_cursor, time.time()))
            if last_step is not None or heartbeat:
                conn.execute(
                    "UPDATE runs SET last_step = CASE WHEN ? IS NULL THEN last_step"
                    " ELSE max(coalesce(last_step, ?), ?) END,"
                    " heartbeat = CASE WHEN ? THEN ? ELSE heartbeat END WHERE id = ?",
                    (last_step, last_step, last_step, heartbeat, time.time(), batch.run_id),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self._key_ids.clear()  # ids of rolled-back new keys are void
            raise
        if batch.scalars:
            self._log_scalars(batch.run_id, first_scalar, batch.scalars, keys)

    def _log_scalars(self, run_id: str, first: int, rows: Sequence[tuple],
                     keys: dict[str, int]) -> None:
        """After a commit: append the batch's scalars to the run's scalar log, or start
        the log (from the store) once the run has SCALAR_CACHE_MIN_ROWS points. A small
        run keeps none: SQLite reads it fast enough."""
        from workbench import scalar_log

        path = self.run_dir(run_id) / SCALAR_CACHE
        if path.exists():
            import numpy as np

            recs = np.empty(len(rows), dtype=scalar_log.record_dtype())
            recs["id"] = np.arange(first, first + len(rows))
            recs["step"] = [r[0] for r in rows]
            recs["key"] = [keys[r[1]] for r in rows]
            recs["value"] = [value_of(r[2], r[4]) for r in rows]
            recs["wall"] = [r[3] for r in rows]
            scalar_log.append(path, recs)
        elif self.scalar_span(run_id) >= SCALAR_CACHE_MIN_ROWS:
            self.scalar_history(run_id, min_rows=0)  # reads the store once, writes the log

    def time_raw_scalar_inserts(self, run_id: str, rows: Sequence[tuple[int, str, float]],
                                *, batch: int = 10_000) -> float:
        """Seconds to insert (step, key, value) rows through plain `executemany`, `batch`
        rows a transaction: the raw-SQLite baseline of `wb bench store`, into this schema.

        Only the inserts are timed: ids, keys and rows are prepared first, and the store's
        sequence is moved past the new ids afterwards, so the store stays consistent.
        `write_batch` is the way to write records; this exists to measure it against.
        """
        run = self.run_num(run_id)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            seq = self.last_id()
            keys = self._intern(k for _, k, _ in rows)
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'",
                              (str(seq + len(rows)),))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._key_ids.clear()
            raise
        wall = time.time()
        numbered = [(i, run, step, keys[key], value, wall, FINITE)
                    for i, (step, key, value) in enumerate(rows, seq + 1)]
        t0 = time.perf_counter()
        for lo in range(0, len(numbered), batch):
            self.conn.execute("BEGIN")
            self.conn.executemany(_INSERT["scalars"], numbered[lo:lo + batch])
            self.conn.execute("COMMIT")
        return time.perf_counter() - t0

    def mirror(self, run_id: str) -> dict[str, Any]:
        """A remote run's mirror state: cursor (0 before the first row), pid, state, error."""
        row = self.conn.execute("SELECT cursor, pid, state, error, updated FROM mirrors "
                                "WHERE run = ?", (run_id,)).fetchone()
        if row is None:
            return {"cursor": 0, "pid": None, "state": None, "error": None, "updated": None}
        return dict(zip(("cursor", "pid", "state", "error", "updated"), row, strict=True))

    def set_mirror(self, run_id: str, **fields: Any) -> None:
        """Update a mirror's pid / state / error (never its cursor: see write_batch)."""
        fields = {**fields, "updated": time.time()}
        cols = ", ".join(f"{k} = excluded.{k}" for k in fields)
        self.conn.execute(
            f"INSERT INTO mirrors (run, cursor, {', '.join(fields)}) VALUES "
            f"(?, 0, {', '.join('?' * len(fields))}) ON CONFLICT(run) DO UPDATE SET {cols}",
            (run_id, *fields.values()))

    # -- reads --------------------------------------------------------------------------

    def change_mark(self) -> tuple[int, int]:
        """Equal between two calls exactly when nothing was committed to the store in
        between: SQLite's data_version (commits by other connections) and this
        connection's own total of changed rows. Two cheap reads, for a view that
        re-reads only after a change."""
        return (self.conn.execute("PRAGMA data_version").fetchone()[0],
                self.conn.total_changes)

    @staticmethod
    def judged(row: RunRecord) -> RunRecord:
        """A runs row as `runs()` returns it, judged again (an active run whose process
        is gone reads `lost`), for a view that kept it since."""
        return _with_liveness(row)

    def last_id(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    def scalars(self, run_id: str, key: str | None = None, since: int = 0,
                limit: int | None = None) -> list[tuple[int, int, str, float, float]]:
        """(id, step, key, value, wall) past `since`, NaN restored."""
        sql = _SELECT["scalars"] + " WHERE r.run = ? AND r.id > ?"
        args: list[Any] = [self.run_num(run_id), since]
        if key is not None:
            sql += " AND k.name = ?"
            args.append(key)
        sql += " ORDER BY r.id" + (f" LIMIT {int(limit)}" if limit else "")
        return [(i, s, k, value_of(v, f), w) for i, s, k, v, w, f in self.conn.execute(sql, args)]

    def scalar_columns(self, run_id: str, since: int = 0, upto: int | None = None,
                       ) -> tuple[int, dict[str, tuple[Any, Any, Any]]]:
        """Scalars past `since` as numpy columns per key: {key: (steps, values, walls)}.

        The fast path for charts: a million points load in about a second, where
        `scalars()` builds a million tuples. NaN is restored from the flag. Returns
        the cursor to pass as `since` next time (like `records()`, the read is bounded
        by the sequence value read first, so nothing committed is ever skipped;
        `upto`: a bound the caller read already).
        """
        import numpy as np

        num = self.run_num(run_id)
        upto = self.last_id() if upto is None else upto
        cursor = self.conn.execute(
            "SELECT step, key, ifnull(value, 0.0), wall, flag FROM scalars "
            "WHERE run = ? AND id > ? AND id <= ? ORDER BY id", (num, since, upto))
        return upto, self._columns(np.fromiter(cursor, dtype=_scalar_dtype()))

    def scalar_history(self, run_id: str, *, min_rows: int | None = None,
                       write: bool = True) -> tuple[int, dict[str, tuple[Any, Any, Any]]]:
        """What `scalar_columns(run_id)` returns (every scalar, as columns per key, and
        the cursor), served from the run's scalar log (scalar_log.py) where it agrees
        with the store.

        The log is trusted up to the highest of a few of its ids below which the store
        holds exactly as many of the run's rows as the log does (rows of a batch still
        being appended, or appended out of order, only move that point back); the rest
        is read from the store. A run of at least `min_rows` points (re)writes the log
        when it had none or a quarter of its rows came from the store. `min_rows`
        defaults to SCALAR_CACHE_MIN_ROWS. `write=False` leaves a due write to
        `write_scalar_cache()`, for a view that shows the history first. Deleting the
        run removes its folder, and with it the log.
        """
        import numpy as np

        from workbench import scalar_log

        min_rows = SCALAR_CACHE_MIN_ROWS if min_rows is None else min_rows
        upto = self.last_id()
        num = self.run_num(run_id)
        path = self.run_dir(run_id) / SCALAR_CACHE
        logged = scalar_log.read(path)
        trusted = 0
        if logged is not None:
            logged = logged[logged["id"] <= upto]
            trusted = self._log_agrees(num, logged["id"])
            logged = logged[:trusted]
        since = int(logged["id"][-1]) if trusted else 0
        fresh = self._scalar_records(num, since, upto)
        recs = np.concatenate([logged, fresh]) if trusted else fresh
        total = len(recs)
        if total >= min_rows and (not trusted or len(fresh) >= total // 4):
            self._cache_due = (path, recs)
            if write:
                self.write_scalar_cache()
        by_key = scalar_log.columns(recs)
        names = self._key_names(list(by_key))
        return upto, {names[k]: cols for k, cols in by_key.items()}

    def _scalar_records(self, num: int, since: int, upto: int) -> Any:
        """The run's scalar rows with `since < id <= upto` as scalar-log records (NaN
        restored from the flag): what the log lacks."""
        import numpy as np

        from workbench import scalar_log

        rows = np.fromiter(self.conn.execute(
            "SELECT id, step, ifnull(value, 0.0), wall, key, flag FROM scalars "
            "WHERE run = ? AND id > ? AND id <= ? ORDER BY id", (num, since, upto)),
            dtype=_log_read_dtype())
        recs = np.empty(len(rows), dtype=scalar_log.record_dtype())
        for name in ("id", "step", "value", "wall", "key"):
            recs[name] = rows[name]
        recs["value"][rows["flag"] == NAN] = math.nan
        return recs

    def _log_agrees(self, num: int, ids: Any) -> int:
        """How many of a log's records (their sorted ids) the store confirms: the
        largest tried prefix whose last id has exactly that many of the run's rows at
        or below it. Index counts only, at most four."""
        n = len(ids)
        for count in sorted({n, n - 1_000, n - 20_000, n // 2}, reverse=True):
            if count <= 0:
                break
            (have,) = self.conn.execute(
                "SELECT count(*) FROM scalars WHERE run = ? AND id <= ?",
                (num, int(ids[count - 1]))).fetchone()
            if have == count:
                return count
        return 0

    def _key_names(self, key_ids: list[int]) -> dict[int, str]:
        if not key_ids:
            return {}
        return dict(self.conn.execute(
            f"SELECT id, name FROM keys WHERE id IN ({','.join('?' * len(key_ids))})",
            key_ids).fetchall())

    def write_scalar_cache(self) -> None:
        """Write the scalar log a `scalar_history(write=False)` left due, if any."""
        from workbench import scalar_log

        due, self._cache_due = self._cache_due, None
        if due is not None:
            scalar_log.write(*due)

    def scalar_count(self, run_id: str, keys: Sequence[str] = ()) -> int:
        """How many scalar rows the run has, only those whose key matches one of the GLOB
        `keys` when given (a benchmark's check that nothing was lost)."""
        sql = "SELECT count(*) FROM scalars r"
        args: list[Any] = [self.run_num(run_id)]
        if keys:
            sql += " JOIN keys k ON k.id = r.key WHERE r.run = ? AND (" + " OR ".join(
                "k.name GLOB ?" for _ in keys) + ")"
            args += list(keys)
        else:
            sql += " WHERE r.run = ?"
        return int(self.conn.execute(sql, args).fetchone()[0])

    def scalar_span(self, run_id: str) -> int:
        """About how many scalar rows a run has (its id range: two index seeks), to
        decide cheaply whether a view should load it progressively."""
        lo, hi = self.conn.execute("SELECT min(id), max(id) FROM scalars WHERE run = ?",
                                   (self.run_num(run_id),)).fetchone()
        return 0 if lo is None else hi - lo + 1

    def scalar_tail(self, run_id: str, limit: int) -> dict[str, tuple[Any, Any, Any]]:
        """The newest points of every scalar key, about `limit` in all, as columns per
        key (oldest first): what a view paints first while the whole history loads.
        Index seeks only: the run's keys by a skip-scan, then each key's tail."""
        import numpy as np

        num = self.run_num(run_id)
        keys = [k for (k,) in self.conn.execute(
            "WITH RECURSIVE k(key) AS (SELECT min(key) FROM scalars WHERE run = ?1 "
            "UNION ALL SELECT (SELECT min(key) FROM scalars WHERE run = ?1 AND key > k.key) "
            "FROM k WHERE k.key IS NOT NULL) SELECT key FROM k WHERE key IS NOT NULL",
            (num,))]
        if not keys:
            return {}
        each = max(1, int(limit) // len(keys))
        parts = [np.fromiter(self.conn.execute(
            "SELECT step, key, ifnull(value, 0.0), wall, flag FROM scalars WHERE run = ? "
            "AND key = ? ORDER BY step DESC, id DESC LIMIT ?", (num, key, each)),
            dtype=_scalar_dtype())[::-1] for key in keys]
        return self._columns(np.concatenate(parts))

    def _columns(self, rows: Any) -> dict[str, tuple[Any, Any, Any]]:
        """Structured scalar rows -> {key: (steps, values, walls)}, NaN restored."""
        import numpy as np

        if not len(rows):
            return {}
        values = rows["value"].copy()
        values[rows["flag"] == NAN] = math.nan
        ids = np.unique(rows["key"])
        names = dict(self.conn.execute(
            f"SELECT id, name FROM keys WHERE id IN ({','.join('?' * len(ids))})",
            [int(i) for i in ids]).fetchall())
        out = {}
        for key_id in ids:
            mask = rows["key"] == key_id
            out[names[int(key_id)]] = (rows["step"][mask], values[mask], rows["wall"][mask])
        return out

    def latest(self, run_id: str) -> dict[str, tuple[int, float]]:
        """Latest (step, value) per scalar key."""
        rows = self.conn.execute(
            _SELECT["scalars"] + " WHERE r.id IN "
            "(SELECT max(id) FROM scalars WHERE run = ? GROUP BY key) ORDER BY k.name",
            (self.run_num(run_id),),
        )
        return {k: (s, value_of(v, f)) for _, s, k, v, _, f in rows}

    def scalar_stats(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Per scalar key: point count, and min / max over its finite values (None
        when it has none). One aggregate query, for summaries."""
        rows = self.conn.execute(
            "SELECT k.name, count(*), min(CASE WHEN r.flag = 0 THEN r.value END), "
            "max(CASE WHEN r.flag = 0 THEN r.value END) FROM scalars r "
            "JOIN keys k ON k.id = r.key WHERE r.run = ? GROUP BY r.key ORDER BY k.name",
            (self.run_num(run_id),))
        return {k: {"count": n, "min": lo, "max": hi} for k, n, lo, hi in rows}

    def latest_value(self, run_id: str, key: str) -> tuple[int, float] | None:
        """(step, value) of one key's newest point: an index seek, for live views."""
        row = self.conn.execute(
            "SELECT step, value, flag FROM scalars WHERE run = ? AND key = "
            "(SELECT id FROM keys WHERE name = ?) ORDER BY step DESC, id DESC LIMIT 1",
            (self.run_num(run_id), key),
        ).fetchone()
        return None if row is None else (row[0], value_of(row[1], row[2]))

    def latest_values(self, wanted: Iterable[tuple[str, str]],
                      ) -> dict[str, tuple[int, float] | None]:
        """`latest_value` of many (run id, key) pairs at once: {run id: (step, value) or
        None}. One statement per distinct key, its index seeks done inside SQLite (the
        runs table's first read of a thousand runs)."""
        by_key: dict[str, list[str]] = {}
        for run_id, key in wanted:
            by_key.setdefault(key, []).append(run_id)
        out: dict[str, tuple[int, float] | None] = {}
        for key, run_ids in by_key.items():
            out.update(dict.fromkeys(run_ids))
            rows = self.conn.execute(
                "SELECT r.id, s.step, s.value, s.flag FROM json_each(?) j "
                "JOIN runs r ON r.id = j.value JOIN scalars s ON s.id = "
                "(SELECT id FROM scalars WHERE run = r.num AND key = "
                "(SELECT id FROM keys WHERE name = ?) ORDER BY step DESC, id DESC LIMIT 1)",
                (json.dumps(run_ids), key))
            out.update((i, (step, value_of(v, f))) for i, step, v, f in rows)
        return out

    def event_kind_counts(self, kind: str, run_ids: Sequence[str]) -> dict[str, int]:
        """Events of one kind per run id, for the given runs in one statement (runs
        without any are left out)."""
        rows = self.conn.execute(
            "SELECT r.id, (SELECT count(*) FROM events e WHERE e.run = r.num AND e.kind = ?) "
            "AS n FROM json_each(?) j JOIN runs r ON r.id = j.value WHERE n > 0",
            (kind, json.dumps(list(run_ids))))
        return dict(rows.fetchall())

    def loss_spike_counts(self) -> dict[str, int]:
        """Loss-spike events per run id, for every run at once (`wb ls`)."""
        rows = self.conn.execute(
            "SELECT r.id, count(*) FROM events e JOIN runs r ON r.num = e.run "
            "WHERE e.kind = 'loss_spike' GROUP BY e.run")
        return dict(rows.fetchall())

    def event_counts(self, run_id: str) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT kind, count(*) FROM events WHERE run = ? GROUP BY kind ORDER BY kind",
            (self.run_num(run_id),),
        )
        return dict(rows.fetchall())

    def events(self, run_id: str, since: int = 0,
               kind: str | None = None) -> list[EventRecord]:
        """The run's events after id `since`, oldest first, of one kind if given."""
        sql = _SELECT["events"] + " WHERE r.run = ? AND r.id > ?"
        args: list[Any] = [self.run_num(run_id), since]
        if kind:
            sql += " AND r.kind = ?"
            args.append(kind)
        rows = self.conn.execute(sql + " ORDER BY r.id", args)
        return [_record("events", r) for r in rows]

    def records(self, run_id: str, since: int = 0, keys: Sequence[str] = (),
                limit: int = 10_000, tables: Sequence[str] = RECORD_TABLES,
                ) -> Iterator[Record]:
        """All record kinds past `since`, in id (commit) order, as typed records
        (workbench/records.py: matrices as raw bytes; the exporter encodes them).

        `keys` are GLOB patterns on metric keys (events match on their kind);
        `tables` picks record kinds (e.g. all but scalars, read by scalar_columns).

        The four tables are read by four statements, which need not share one
        snapshot: a batch committed between them could show its events but not
        its scalars, and a reader resuming past the newest id would then skip
        those scalars for good. So the read is bounded by the sequence value
        read first: every id up to it is committed, and visible to each later
        statement.
        """
        import heapq

        num = self.run_num(run_id)
        upto = self.last_id()
        streams = []
        for table in tables:
            col = "r.kind" if table == "events" else "k.name"
            where = " WHERE r.run = ? AND r.id > ? AND r.id <= ?"
            args: list[Any] = [num, since, upto]
            if keys:
                where += " AND (" + " OR ".join(f"{col} GLOB ?" for _ in keys) + ")"
                args += list(keys)
            cur = _lazy(self.conn, _SELECT[table] + where + f" ORDER BY r.id LIMIT {int(limit)}",
                        args)
            streams.append(_tagged(table, cur))
        for count, (_, table, row) in enumerate(heapq.merge(*streams, key=lambda x: x[0])):
            if count >= limit:
                return
            yield _record(table, row)


def build_scalar_cache(root: str | os.PathLike[str], run_id: str, *,
                       min_rows: int | None = None, timeout: float = 300.0) -> bool:
    """Write a run's scalar log (`Store.scalar_history`) from a separate process, on a
    core of its own: for a big run written before it had one. True when that process
    succeeded; a failure only means there is no log (the reader then reads the store
    itself)."""
    import subprocess
    import sys

    rows = SCALAR_CACHE_MIN_ROWS if min_rows is None else min_rows
    code = ("import sys; from workbench.store import Store; Store(sys.argv[1], "
            "create=False).scalar_history(sys.argv[2], min_rows=int(sys.argv[3]))")
    try:
        return subprocess.run([sys.executable, "-c", code, str(root), run_id, str(rows)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _dicts(cursor: sqlite3.Cursor) -> Iterator[dict[str, Any]]:
    """A cursor's rows as dicts in column order (what sqlite_utils' reads return)."""
    cols = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(cols, row, strict=True))


def _lazy(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Iterator[tuple]:
    """Runs when first iterated, so a merge of several reads starts them together."""
    yield from conn.execute(sql, args)


def _tagged(table: str, rows: Iterable[tuple]) -> Iterator[tuple[int, str, tuple]]:
    for row in rows:
        yield row[0], table, row


def _record(table: str, row: tuple) -> Record:
    """A record table's row (`_SELECT[table]`'s columns) decoded once, typed."""
    if table == "scalars":
        i, step, key, value, wall, flag = row
        return ScalarRecord(i, step, key, value_of(value, flag), wall, flag)
    if table == "dists":
        *head, edges, counts, nonfinite, wall = row
        return DistRecord(*head, tuple(json.loads(edges)), tuple(json.loads(counts)),
                          nonfinite, wall)
    if table == "matrices":
        i, step, key, shape, dtype, data, wall = row
        return MatrixRecord(i, step, key, tuple(json.loads(shape)), dtype, bytes(data), wall)
    i, step, kind, severity, payload, wall = row
    return EventRecord(i, step, kind, severity, json.loads(payload or "{}"), wall)


def run_record(row: Mapping[str, Any]) -> RunRecord:
    """A `runs` row as a RunRecord: config parsed once, `grp` as `group`. The one place
    a run row is read by column name."""
    text = row.get("config")
    try:
        config = json.loads(text) if isinstance(text, str) and text else (text or {})
    except ValueError:
        config = {}
    return RunRecord(
        id=row["id"], num=row["num"], name=row["name"], kind=row["kind"],
        status=row["status"], host=row.get("host") or "", launcher=row.get("launcher") or "",
        created=row["created"], dir=row.get("dir") or "", config=config,
        spec=row.get("spec"), pid=row.get("pid"), started=row.get("started"),
        ended=row.get("ended"), heartbeat=row.get("heartbeat"),
        exit_code=row.get("exit_code"), resumed_from=row.get("resumed_from"),
        last_step=row.get("last_step"), total_steps=row.get("total_steps"),
        group=row.get("grp"), after=row.get("after"), stored_status=row["status"],
    )


def _with_liveness(row: dict[str, Any] | RunRecord) -> RunRecord:
    """Show a queued/running run whose process is gone as `lost` (read-time, not stored).

    A remote run carries its host's own judgement, copied by its mirror.
    """
    rec = row if isinstance(row, RunRecord) else run_record(row)
    if (rec.stored_status in ACTIVE_STATUSES and rec.pid and not rec.is_remote
            and rec.host == socket.gethostname() and not pid_alive(rec.pid)):
        return rec.with_status("lost")
    return rec


def new_run_id() -> str:
    """8 lowercase base-36 characters: short enough to type, 2.8e12 possibilities."""
    import secrets  # here: it loads hashlib, which reads (`wb ls`) do not need

    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(8))


__all__ = [
    "Batch", "Store", "StoreError", "resolve_root", "validate_name", "flag_of", "value_of",
    "RUN_STATUSES", "SCHEMA_VERSION", "RunRecord", "ACTIVE_STATUSES", "Record",
    "ScalarRecord", "DistRecord", "MatrixRecord", "EventRecord",
]

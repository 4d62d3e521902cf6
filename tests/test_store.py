"""The run store: real SQLite (WAL, through sqlite-utils), no mocks."""

from __future__ import annotations

import math
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlite_utils

from workbench import store as store_mod
from workbench.records import DistRecord, EventRecord, MatrixRecord, ScalarRecord
from workbench.store import (
    DB_NAME,
    RECORD_TABLES,
    SCHEMA_VERSION,
    Batch,
    Store,
    StoreError,
    resolve_root,
)
from workbench.tracking import Run, init


def _open_run(store: Store, **kwargs: Any) -> Run:
    """An SDK run in this process, in this test's store."""
    return init(store=store.root, **kwargs)


def _raw(store_dir: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, to look at the file without the Store's help."""
    return sqlite3.connect(store_dir / DB_NAME, timeout=30)


# ---------------------------------------------------------------- format


def test_sqlite_in_wal_mode_through_sqlite_utils(store: Store, store_dir: Path) -> None:
    assert isinstance(store.db, sqlite_utils.Database)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = _raw(store_dir)
    try:  # the mode is persistent: a fresh connection sees it too
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"runs", "scalars", "dists", "matrices", "events", "meta", "keys"} <= tables


def test_every_record_kind_round_trips(store: Store) -> None:
    lengths = np.arange(1, 201, dtype=float)  # 1..200
    heads = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    with _open_run(store, name="rt", config={"lr": 3e-4, "model": {"layers": 2}}) as run:
        run.log({"train/loss": 2.5, "train/lr": 3e-4}, step=0)
        run.log({"train/loss": 2.25}, step=1)
        run.log_dist("rollout/length", lengths, step=1)
        run.log_matrix("attn/max_logit_heads", heads, step=1)
        run.event("checkpoint", step=1, path="ckpt/1", bytes=123)
        assert run.flush()
    row = store.get_run(run.id)
    assert row.name == "rt" and row.kind == "custom" and row.status == "finished"
    assert row.launcher == "sdk" and row.pid == os.getpid()
    assert row.last_step == 1
    assert row.config == {"lr": 3e-4, "model": {"layers": 2}}

    scalars = store.scalars(run.id)
    assert [(s, k, v) for _, s, k, v, _ in scalars] == [
        (0, "train/loss", 2.5), (0, "train/lr", 3e-4), (1, "train/loss", 2.25)]
    assert [k for _, _, k, _, _ in store.scalars(run.id, key="train/loss")] == ["train/loss"] * 2
    assert store.latest(run.id) == {"train/loss": (1, 2.25), "train/lr": (0, 3e-4)}

    events = store.events(run.id)
    assert len(events) == 1
    ev = events[0]
    assert (ev.kind, ev.step, ev.severity) == ("checkpoint", 1, "info")
    assert ev.payload == {"path": "ckpt/1", "bytes": 123}
    assert store.event_counts(run.id) == {"checkpoint": 1}

    records = list(store.records(run.id))
    assert [type(r) for r in records] == [ScalarRecord, ScalarRecord, ScalarRecord, DistRecord,
                                          MatrixRecord, EventRecord]
    assert [r.type for r in records] == ["scalar", "scalar", "scalar", "dist", "matrix",
                                         "event"]
    assert records[0] == ScalarRecord(records[0].id, 0, "train/loss", 2.5, records[0].wall, 0)
    dist = records[3]
    assert isinstance(dist, DistRecord)
    assert (dist.key, dist.step, dist.count) == ("rollout/length", 1, 200)
    assert (dist.min, dist.max, dist.mean) == (1.0, 200.0, 100.5)
    for q in ("p50", "p90", "p99"):
        assert getattr(dist, q) == pytest.approx(np.quantile(lengths, int(q[1:]) / 100))
    assert isinstance(dist.edges, tuple) and isinstance(dist.counts, tuple)
    assert len(dist.edges) == len(dist.counts) + 1
    assert sum(dist.counts) == 200 and dist.nonfinite == 0
    assert dist.edges[0] <= 1.0 and dist.edges[-1] >= 200.0

    matrix = records[4]
    assert isinstance(matrix, MatrixRecord)
    assert (matrix.key, matrix.step, matrix.shape) == ("attn/max_logit_heads", 1, (3, 4))
    assert isinstance(matrix.data, bytes)  # raw: base64 is the exporter's business
    np.testing.assert_array_equal(
        np.frombuffer(matrix.data, dtype=matrix.dtype).reshape(matrix.shape), heads)
    np.testing.assert_array_equal(matrix.array(), heads)
    event = records[5]
    assert isinstance(event, EventRecord)
    assert (event.kind, event.step, event.severity) == ("checkpoint", 1, "info")
    assert event.payload == {"path": "ckpt/1", "bytes": 123}


# ---------------------------------------------------------------- schema and migrations


def test_schema_version_lives_in_meta(store: Store, store_dir: Path) -> None:
    assert store.schema_version == SCHEMA_VERSION >= 1
    conn = _raw(store_dir)
    try:
        (value,) = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    finally:
        conn.close()
    assert int(value) == SCHEMA_VERSION


def test_newer_schema_is_refused_with_upgrade_hint(store_dir: Path) -> None:
    with Store(store_dir) as st:
        run_id = st.create_run(kind="custom", name="keep").id
    conn = _raw(store_dir)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                     (str(SCHEMA_VERSION + 1),))
    conn.close()
    with pytest.raises(StoreError, match="upgrade"):
        Store(store_dir)
    conn = _raw(store_dir)
    try:  # refused, not touched
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] \
            == str(SCHEMA_VERSION + 1)
        assert conn.execute("SELECT id FROM runs").fetchall() == [(run_id,)]
    finally:
        conn.close()


def _v2_migration(calls: list[int]) -> Any:
    def add_note_column(db: sqlite_utils.Database) -> None:
        calls.append(1)
        db["runs"].add_column("note", str)

    return add_note_column


def test_registered_migration_runs_once_on_open(store_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(store_dir) as st:  # a store at the current (v1) schema, with data
        run_id = st.create_run(kind="custom", name="old").id
        assert st.schema_version == SCHEMA_VERSION
    calls: list[int] = []
    migrations = dict(store_mod.MIGRATIONS)
    migrations[SCHEMA_VERSION] = _v2_migration(calls)
    monkeypatch.setattr(store_mod, "MIGRATIONS", migrations)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)

    with Store(store_dir) as st:
        assert calls == [1]
        assert st.schema_version == SCHEMA_VERSION + 1
        assert "note" in st.db["runs"].columns_dict
        assert st.resolve("old").id == run_id  # data carried over
        st.update_run(run_id, note="migrated")
    with Store(store_dir) as st:  # already migrated: not again
        assert calls == [1]
        assert st.db["runs"].get(run_id)["note"] == "migrated"

    fresh = store_dir.parent / "fresh"
    with Store(fresh) as st:  # a new store walks the whole path, each step once
        assert calls == [1, 1]
        assert st.schema_version == SCHEMA_VERSION + 1


def test_failed_migration_leaves_the_store_as_it_was(store_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(store_dir) as st:
        st.create_run(kind="custom", name="old")

    def broken(db: sqlite_utils.Database) -> None:
        db["runs"].add_column("note", str)
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_mod, "MIGRATIONS", {**store_mod.MIGRATIONS, SCHEMA_VERSION: broken})
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="migration bug"):
        Store(store_dir)
    monkeypatch.undo()
    with Store(store_dir) as st:
        assert st.schema_version == SCHEMA_VERSION
        assert "note" not in st.db["runs"].columns_dict
        assert [r.name for r in st.runs()] == ["old"]


# ---------------------------------------------------------------- indexes


def _index_columns(conn: sqlite3.Connection, table: str) -> list[list[str]]:
    out = []
    for _, name, *_ in conn.execute(f"PRAGMA index_list({table})"):
        out.append([r[2] for r in conn.execute(f"PRAGMA index_info({name})")])
    return out


@pytest.mark.parametrize("table", RECORD_TABLES)
def test_record_tables_have_run_key_step_and_run_id_indexes(store: Store, table: str) -> None:
    cols = _index_columns(store.conn, table)
    key = "kind" if table == "events" else "key"
    assert ["run", key, "step"] in cols
    assert ["run", "id"] in cols


def _plans(store: Store, call: Any) -> dict[str, list[str]]:
    """Run `call`, capture every SELECT on a record table, EXPLAIN QUERY PLAN each."""
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)  # the trace shows bound values inline
    try:
        result = call()
        if not isinstance(result, list | dict):
            list(result)
    finally:
        store.conn.set_trace_callback(None)
    plans = {}
    for sql in seen:
        if sql.lstrip().upper().startswith("SELECT") and any(
                f"FROM {t}" in sql for t in RECORD_TABLES):
            plans[sql] = [r[3] for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql)]
    assert plans, seen
    return plans


def test_tui_queries_use_indexes_not_full_scans(store: Store) -> None:
    with _open_run(store, name="big") as run:
        for step in range(300):
            run.log({f"k{i}": float(step + i) for i in range(8)}, step=step)
            if step % 50 == 0:
                run.log_dist("d", [1, 2, 3], step=step)
                run.event("stage", step=step)
    cursor = store.last_id() - 20
    calls = {
        "scalars(key)": lambda: store.scalars(run.id, key="k3"),
        "scalars(key, since)": lambda: store.scalars(run.id, key="k3", since=cursor),
        "records(since)": lambda: store.records(run.id, since=cursor),
        "records(keys)": lambda: store.records(run.id, keys=["k1"]),
        "events": lambda: store.events(run.id, since=cursor),
        "latest": lambda: store.latest(run.id),
    }
    for label, call in calls.items():
        for sql, plan in _plans(store, call).items():
            for line in plan:
                # A SCAN of a record table would read every run's rows.
                assert not line.startswith("SCAN"), (label, sql, plan)
            assert any("INDEX" in line for line in plan), (label, sql, plan)
    key_plan = next(iter(_plans(store, lambda: store.scalars(run.id, key="k3")).values()))
    assert any(line.startswith("SEARCH r USING") and "INDEX" in line for line in key_plan)


# ---------------------------------------------------------------- location


def test_store_location_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir = tmp_path / "from-env"
    explicit = tmp_path / "explicit"
    monkeypatch.setenv("WB_STORE", str(env_dir))
    assert resolve_root(explicit) == explicit
    assert resolve_root(str(explicit)) == explicit
    assert resolve_root() == env_dir
    assert resolve_root(None) == env_dir
    monkeypatch.setenv("WB_STORE", "~/somewhere")
    assert resolve_root() == Path.home() / "somewhere"
    monkeypatch.delenv("WB_STORE")
    assert resolve_root() == Path("runs")

    # and the Store itself lands there
    with Store() as st:  # cwd is tmp_path
        assert (tmp_path / "runs" / DB_NAME).is_file()
        assert st.root.resolve() == (tmp_path / "runs").resolve()
    monkeypatch.setenv("WB_STORE", str(env_dir))
    with Store() as st:
        assert (env_dir / DB_NAME).is_file() and st.root == env_dir
    with Store(explicit) as st:
        assert (explicit / DB_NAME).is_file() and st.root == explicit


def test_store_without_create_refuses_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        Store(tmp_path / "nothing-here", create=False)
    assert not (tmp_path / "nothing-here").exists()


# ---------------------------------------------------------------- ids and incremental reads


def test_ids_come_from_one_store_wide_sequence(store: Store) -> None:
    with _open_run(store, name="a") as a, _open_run(store, name="b") as b:
        expected: list[tuple[str, str, str]] = []  # (run, type, key-or-kind) in commit order
        for step in range(8):
            for run in (a, b):
                kind = step % 4
                if kind == 0:
                    run.log({"train/loss": float(step), "val/loss": float(step)}, step=step)
                    expected += [(run.id, "scalar", "train/loss"), (run.id, "scalar", "val/loss")]
                elif kind == 1:
                    run.log_dist("rollout/length", [step, step + 1, step + 2], step=step)
                    expected.append((run.id, "dist", "rollout/length"))
                elif kind == 2:
                    run.log_matrix("attn/max_logit_heads", np.full((2, 2), step), step=step)
                    expected.append((run.id, "matrix", "attn/max_logit_heads"))
                else:
                    run.event("loss_spike", step=step, z=3.5)
                    expected.append((run.id, "event", "loss_spike"))
                assert run.flush()  # commit now: commit order == call order

    per_run = {r.id: list(store.records(r.id)) for r in (a, b)}
    merged = sorted(((rec.id, rid, rec) for rid, recs in per_run.items() for rec in recs),
                    key=lambda x: x[0])
    ids = [i for i, _, _ in merged]
    assert len(ids) == len(set(ids)) == len(expected) == 20
    assert ids == sorted(ids) and ids == list(range(1, 21))  # strictly increasing, no gaps
    got = [(rid, rec.type, rec.kind if isinstance(rec, EventRecord) else rec.key)
           for _, rid, rec in merged]
    assert got == expected
    assert store.last_id() == 20

    # ids are unique across tables in the database itself
    union = " UNION ALL ".join(f"SELECT id FROM {t}" for t in RECORD_TABLES)
    total, distinct = store.conn.execute(
        f"SELECT count(*), count(DISTINCT id) FROM ({union})").fetchone()
    assert total == distinct == 20

    # records(since=N): exactly the records past N, in id order, across kinds
    for rid, recs in per_run.items():
        for n in range(0, 22):
            page = list(store.records(rid, since=n))
            assert page == [r for r in recs if r.id > n]
            assert [r.id for r in page] == sorted(r.id for r in page)
        # paging with a limit walks the same sequence
        cursor, walked = 0, []
        for _ in range(50):
            page = list(store.records(rid, since=cursor, limit=3))
            if not page:
                break
            assert len(page) <= 3
            walked += page
            cursor = page[-1].id
        assert walked == recs

    # GLOB filters on metric keys; events match on their kind
    ra = per_run[a.id]
    assert list(store.records(a.id, keys=["train/*"])) == [
        r for r in ra if getattr(r, "key", None) == "train/loss"]
    assert list(store.records(a.id, keys=["*/loss"])) == [
        r for r in ra if getattr(r, "key", None) in ("train/loss", "val/loss")]
    assert list(store.records(a.id, keys=["loss_*", "attn/*"])) == [
        r for r in ra if isinstance(r, EventRecord | MatrixRecord)]
    assert list(store.records(a.id, keys=["nothing*"])) == []
    # scalars(since) and events(since) share the same cursor
    assert all(i > 5 for i, *_ in store.scalars(a.id, since=5))
    assert all(e.id > 5 for e in store.events(a.id, since=5))


def test_write_batch_numbers_rows_in_one_transaction(store: Store) -> None:
    run_id = store.create_run(kind="custom").id
    batch = Batch(run_id,
                  scalars=[(0, "x", 1.0, 0.0, 0), (1, "x", 2.0, 0.0, 0)],
                  events=[(1, "stage", "info", "{}", 0.0)])
    store.write_batch(batch, last_step=1)
    store.write_batch(Batch(run_id, scalars=[(2, "y", 3.0, 0.0, 0)]), last_step=2)
    assert [(r.id, r.type) for r in store.records(run_id)] == [
        (1, "scalar"), (2, "scalar"), (3, "event"), (4, "scalar")]
    assert store.get_run(run_id).last_step == 2


# ---------------------------------------------------------------- non-finite values


def test_nan_and_inf_are_kept_flagged_and_warned_once_per_key(store: Store) -> None:
    with _open_run(store, name="nan") as run:
        run.log({"a": float("nan"), "b": math.inf, "c": -math.inf, "d": 1.0}, step=0)
        run.log({"a": float("nan"), "b": math.inf, "c": -math.inf, "d": 2.0}, step=1)
        run.log({"a": np.float32("nan"), "d": np.nan}, step=2)
        run.log({"a": 0.5}, step=3)
    by_key: dict[str, list[float]] = {}
    for _, _, key, value, _ in store.scalars(run.id):
        by_key.setdefault(key, []).append(value)
    assert len(by_key["a"]) == 4 and all(math.isnan(v) for v in by_key["a"][:3])
    assert by_key["a"][3] == 0.5
    assert by_key["b"] == [math.inf, math.inf]
    assert by_key["c"] == [-math.inf, -math.inf]
    assert by_key["d"][:2] == [1.0, 2.0] and math.isnan(by_key["d"][2])

    latest = store.latest(run.id)
    assert latest["a"] == (3, 0.5) and latest["b"] == (1, math.inf)
    assert latest["d"][0] == 2 and math.isnan(latest["d"][1])

    flags = {(r.key, r.step): r.flag for r in store.records(run.id)
             if isinstance(r, ScalarRecord)}
    assert flags[("a", 0)] == store_mod.NAN and flags[("b", 0)] == store_mod.POS_INF
    assert flags[("c", 0)] == store_mod.NEG_INF and flags[("d", 0)] == store_mod.FINITE

    warnings = store.events(run.id, kind="nan")
    assert sorted(e.payload["key"] for e in warnings) == ["a", "b", "c", "d"]
    assert all(e.severity == "warning" for e in warnings)
    labels = {e.payload["key"]: e.payload["value"] for e in warnings}
    assert labels == {"a": "nan", "b": "inf", "c": "-inf", "d": "nan"}


def test_distribution_with_nonfinite_values(store: Store) -> None:
    with _open_run(store) as run:
        run.log_dist("staleness", [0, 1, 2, float("nan"), math.inf], step=0)
        run.log_dist("empty", [float("nan")], step=0)
    recs = {r.key: r for r in store.records(run.id) if isinstance(r, DistRecord)}
    assert recs["staleness"].count == 3 and recs["staleness"].nonfinite == 2
    assert recs["staleness"].max == 2.0
    assert recs["empty"].count == 0 and recs["empty"].nonfinite == 1
    assert recs["empty"].edges == () and recs["empty"].counts == ()


# ---------------------------------------------------------------- runs: resolve, delete


def test_resolve_by_id_prefix_and_name(store: Store) -> None:
    old = store.create_run(kind="custom", name="baseline")
    new = store.create_run(kind="custom", name="baseline")
    other = store.create_run(kind="pretrain")
    assert other.name == "pretrain-1"
    assert store.create_run(kind="pretrain").name == "pretrain-2"

    assert store.resolve(old.id).id == old.id  # exact id
    assert store.resolve(other.id[:6]).id == other.id  # unique prefix
    assert store.resolve("baseline").id == new.id  # newest of that name
    assert store.resolve("pretrain-1").id == other.id
    with pytest.raises(StoreError, match="no run"):
        store.resolve("does-not-exist")
    with pytest.raises(StoreError):
        store.resolve(other.id.upper())  # ids are lowercase; no case folding


def test_ambiguous_prefix_is_an_error(store: Store) -> None:
    ids = [store.create_run(kind="custom").id for _ in range(37)]  # 36 first chars
    firsts: dict[str, list[str]] = {}
    for run_id in ids:
        firsts.setdefault(run_id[0], []).append(run_id)
    prefix, group = next((p, g) for p, g in firsts.items() if len(g) > 1)
    with pytest.raises(StoreError, match="ambiguous"):
        store.resolve(prefix)
    for run_id in group:  # a longer prefix still finds each one
        assert store.resolve(run_id).id == run_id


def test_name_wins_over_an_id_prefix(store: Store) -> None:
    target = store.create_run(kind="custom")
    named = store.create_run(kind="custom", name=target.id[:3])
    assert store.resolve(target.id[:3]).id == named.id
    assert store.resolve(target.id[:4]).id == target.id


def test_delete_run_removes_rows_and_folder(store: Store) -> None:
    with _open_run(store, name="gone") as gone, _open_run(store, name="kept") as kept:
        for run in (gone, kept):
            run.log({"x": 1.0}, step=0)
            run.log_dist("d", [1, 2], step=0)
            run.log_matrix("m", np.eye(2), step=0)
            run.event("stage", step=0)
    (store.run_dir(gone.id) / "stdout.log").write_text("hello\n")
    store.delete_run(gone.id)
    assert not store.run_dir(gone.id).exists()
    with pytest.raises(StoreError):
        store.resolve(gone.id)
    assert [r.name for r in store.runs()] == ["kept"]
    num_rows = sum(store.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                   for t in RECORD_TABLES)
    assert num_rows == 4 and len(list(store.records(kept.id))) == 4
    assert store.run_dir(kept.id).is_dir()


# ---------------------------------------------------------------- permissions, names


def test_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)  # whatever the umask, the store is private
    try:
        root = tmp_path / "private"
        with Store(root) as st:
            with _open_run(st, name="p") as run:
                run.log({"x": 1.0}, step=0)
            other = st.create_run(kind="custom")
            mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
            assert mode(root) == 0o700
            assert mode(root / DB_NAME) == 0o600
            assert mode(st.run_dir(run.id)) == 0o700
            assert mode(st.run_dir(other.id)) == 0o700
            for path in root.iterdir():  # -wal and -shm too
                assert mode(path) & 0o077 == 0, path
    finally:
        os.umask(old)


@pytest.mark.parametrize("bad", ["a/b", "..", "../x", "a..b", "a b", " a", "-x", ".hidden",
                                 "x" * 65, "a\n", "a\\b", "naïve"])
def test_bad_run_names_are_refused(store: Store, bad: str) -> None:
    with pytest.raises(StoreError, match="invalid run name"):
        store.create_run(kind="custom", name=bad)
    with pytest.raises(StoreError, match="invalid run name"):
        init(name=bad, store=store.root)
    assert store.runs() == []
    assert [p.name for p in store.root.iterdir() if p.is_dir()] == []


@pytest.mark.parametrize("good", ["a", "run-1", "lr_3e-4.b", "A9", "x" * 64])
def test_good_run_names_are_accepted(store: Store, good: str) -> None:
    assert store.resolve(store.create_run(kind="custom", name=good).id).name == good


# ---------------------------------------------------------------- review fixes


def test_auto_names_and_run_numbers_are_never_reused(store: Store) -> None:
    first = store.create_run(kind="script", base="charlm")
    second = store.create_run(kind="script", base="charlm")
    store.create_run(kind="script", name="charlm-zzz")  # not BASE-N: does not count
    assert (first.name, second.name) == ("charlm-1", "charlm-2")
    store.delete_run(first.id)
    third = store.create_run(kind="script", base="charlm")
    assert third.name == "charlm-3"
    store.delete_run(third.id)
    fourth = store.create_run(kind="script", base="charlm")
    assert fourth.num > third.num > second.num  # readers cache run -> num


def test_a_heartbeat_alone_leaves_last_step_unset(store: Store) -> None:
    from workbench.store import Batch

    row = store.create_run(kind="custom", status="running", launcher="sdk")
    store.write_batch(Batch(row.id), heartbeat=True)
    assert store.get_run(row.id).last_step is None
    store.write_batch(Batch(row.id, scalars=[(4, "x", 1.0, 0.0, 0)]), last_step=4)
    store.write_batch(Batch(row.id), last_step=2, heartbeat=True)
    assert store.get_run(row.id).last_step == 4


def test_a_file_that_is_not_a_store_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "workbench.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable workbench store"):
        Store(bad)


def test_merge_config_keeps_other_processes_keys(store: Store) -> None:
    row = store.create_run(kind="script", config={"lr": 0.1, "opt": {"name": "muon"}})
    other = Store(store.root)
    try:
        other.merge_config(row.id, {"rank1": True})
        merged = store.merge_config(row.id, {"opt": {"beta": 0.9}})
        assert merged == {"lr": 0.1, "opt": {"name": "muon", "beta": 0.9}, "rank1": True}
        kept = store.merge_config(row.id, {"lr": 3.0, "new": 1}, keep_existing=True)
        assert kept["lr"] == 0.1 and kept["new"] == 1
    finally:
        other.close()


# ---------------------------------------------------------------- what callers need


def test_last_step_reads_the_column_writers_keep(store: Store) -> None:
    row = store.create_run(kind="custom", status="running", launcher="sdk")
    assert store.last_step(row.id) is None  # no step yet
    store.write_batch(Batch(row.id, scalars=[(7, "x", 1.0, 0.0, 0)]), last_step=7)
    assert store.last_step(row.id) == 7 == store.get_run(row.id).last_step
    store.write_batch(Batch(row.id), last_step=3)  # never moves back
    assert store.last_step(row.id) == 7
    with pytest.raises(StoreError, match="no run"):
        store.last_step("zzzzzzzz")


def test_scalar_count_per_run_and_by_key_pattern(store: Store) -> None:
    a = store.create_run(kind="custom")
    b = store.create_run(kind="custom")
    store.write_batch(Batch(a.id, scalars=[(0, "bench/x", 1.0, 0.0, 0), (0, "sys/cpu", 2.0, 0.0, 0),
                                           (1, "bench/x", math.nan, 0.0, 1)]))
    store.write_batch(Batch(b.id, scalars=[(0, "bench/x", 1.0, 0.0, 0)]))
    assert store.scalar_count(a.id) == 3 and store.scalar_count(b.id) == 1
    assert store.scalar_count(a.id, keys=["bench/*"]) == 2
    assert store.scalar_count(a.id, keys=["bench/*", "sys/*"]) == 3
    assert store.scalar_count(a.id, keys=["nothing*"]) == 0


def test_raw_scalar_inserts_keep_the_store_consistent(store: Store) -> None:
    run = store.create_run(kind="bench", status="running", launcher="sdk")
    rows = [(i // 2, f"m{i % 2}", float(i)) for i in range(25)]
    seconds = store.time_raw_scalar_inserts(run.id, rows, batch=10)
    assert seconds >= 0
    assert store.scalar_count(run.id) == 25 and store.last_id() == 25
    got = store.scalars(run.id)
    assert [i for i, *_ in got] == list(range(1, 26))
    assert [(s, k, v) for _, s, k, v, _ in got] == rows
    store.write_batch(Batch(run.id, scalars=[(99, "m0", 0.5, 0.0, 0)]))  # ids go on from there
    assert store.scalars(run.id, since=25)[0][0] == 26


def test_typed_records_are_frozen_and_decoded_once(store: Store) -> None:
    run = store.create_run(kind="custom")
    store.write_batch(Batch(
        run.id, scalars=[(0, "x", None, 1.0, 1), (0, "y", math.inf, 1.0, 2)],
        dists=[(1, "d", 2, 1.0, 2.0, 1.5, 1.5, 1.9, 2.0, "[1.0, 1.5, 2.0]", "[1, 1]", 0, 2.0)],
        matrices=[(2, "m", "[2, 1]", "float32", np.array([[1.5], [2.5]], "float32").tobytes(),
                   3.0)],
        events=[(3, "stage", "info", '{"stage": "done", "v": 1}', 4.0)]))
    nan, inf, dist, matrix, event = store.records(run.id)
    assert isinstance(nan, ScalarRecord) and math.isnan(nan.value) and nan.flag == 1
    assert inf == ScalarRecord(2, 0, "y", math.inf, 1.0, 2)
    assert dist == DistRecord(3, 1, "d", 2, 1.0, 2.0, 1.5, 1.5, 1.9, 2.0, (1.0, 1.5, 2.0),
                              (1, 1), 0, 2.0)
    assert matrix == MatrixRecord(4, 2, "m", (2, 1), "float32",
                                  np.array([[1.5], [2.5]], "float32").tobytes(), 3.0)
    assert matrix.array().tolist() == [[1.5], [2.5]]
    assert event == EventRecord(5, 3, "stage", "info", {"stage": "done", "v": 1}, 4.0)
    with pytest.raises(AttributeError):
        event.kind = "other"  # type: ignore[misc]
    assert [r.type for r in (nan, dist, matrix, event)] == ["scalar", "dist", "matrix", "event"]
    assert list(store.records(run.id, tables=("matrices",))) == [matrix]


def test_strict_json_lives_in_the_exporter_only() -> None:
    """The JSON encoding belongs to the exporter; the store has no copy of it."""
    import workbench.store
    from workbench.export import strict_json

    value = {"a": [math.nan, 1.0, (math.inf, -math.inf)], "b": {"c": math.nan}, "d": "x"}
    want = {"a": [None, 1.0, [None, None]], "b": {"c": None}, "d": "x"}
    assert strict_json(value) == want
    assert not hasattr(workbench.store, "strict_json")

"""Crash safety and concurrency of the store, with real processes and real signals."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from workbench.store import RECORD_TABLES, Batch, Store

METRICS = 8

_VICTIM = f"""
import sys, time
import workbench

run = workbench.init(name="victim")
print("run", run.id, flush=True)
keys = [f"m{{i}}" for i in range({METRICS})]
last = -1
deadline = time.monotonic() + 30
step = 0
while step < 2_000_000 and time.monotonic() < deadline:
    value = float(step)
    run.log({{k: value for k in keys}}, step=step)  # one step = {METRICS} metrics, one call
    step += 1
    if step % 4 == 0:  # a breath, as a training step takes; the writer stays busy anyway
        time.sleep(0.0001)
    flushed = run.flushed_rows
    if flushed != last:  # acknowledged: these rows are committed
        print(flushed, flush=True)
        last = flushed
print("done", flush=True)
"""


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.strip())
    lines.put(None)


@pytest.mark.parametrize("kill_after", [2, 3])
def test_kill_9_mid_logging_loses_no_acknowledged_row(tmp_path: Path, store_dir: Path,
                                                      kill_after: int) -> None:
    script = tmp_path / "victim.py"
    script.write_text(_VICTIM)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    pump.start()
    acknowledged: list[int] = []
    run_id = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None and line != "done", "the writer ended before the kill"
            if line.startswith("run "):
                run_id = line.split()[1]
                continue
            acknowledged.append(int(line))
            if len([n for n in acknowledged if n > 0]) >= kill_after:
                time.sleep(0.1)  # into the next batch: the writer is mid-transaction
                os.kill(proc.pid, signal.SIGKILL)  # in the middle of logging
                break
        else:
            pytest.fail("no flushes seen in 30 s")
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    pump.join(timeout=30)
    while True:  # acknowledgements printed before the kill but not read yet still count
        line = lines.get(timeout=5)
        if line is None:
            break
        assert line != "done"
        acknowledged.append(int(line))
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert stderr == ""
    assert run_id is not None and acknowledged == sorted(acknowledged)

    with Store(store_dir) as st:  # opens cleanly after the crash
        assert st.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert st.get_run(run_id).status == "lost"
        num = st.run_num(run_id)
        total = st.conn.execute("SELECT count(*) FROM scalars WHERE run = ?",
                                (num,)).fetchone()[0]
        assert total >= acknowledged[-1] > 0  # nothing acknowledged is missing
        per_step = st.conn.execute(
            "SELECT step, count(*), count(DISTINCT key), min(value), max(value) "
            "FROM scalars WHERE run = ? GROUP BY step ORDER BY step", (num,)).fetchall()
        steps = [s for s, *_ in per_step]
        assert steps == list(range(len(steps)))  # a contiguous prefix 0..k
        for step, count, keys, lo, hi in per_step:  # no step half-written
            assert (count, keys, lo, hi) == (METRICS, METRICS, step, step), step
        assert total == METRICS * len(steps)
        # the sequence survived too: a new writer continues past the last id
        last = st.last_id()
        assert last == st.conn.execute("SELECT max(id) FROM scalars").fetchone()[0]
    with Store(store_dir) as st:
        other = st.create_run(kind="custom")
        st.write_batch(Batch(other.id, scalars=[(0, "x", 1.0, 0.0, 0)]))
        assert st.scalars(other.id)[0][0] == last + 1


_WRITER = """
import sys, time
import workbench

worker, seconds, max_steps = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
run = workbench.init(config={"writers": 4})
lengths = [1, 2, 3, 5, 8, 13, 21, 34]
rows = 0
step = 0
deadline = time.monotonic() + seconds
while step < max_steps and time.monotonic() < deadline:
    s = worker * 10_000_000 + step  # disjoint steps per writer
    run.log({"train/loss": 1.0 / (step + 1), "train/lr": 3e-4, "perf/tokens_per_s": 1e5,
             "worker": float(worker)}, step=s)
    rows += 4
    if step % 50 == 0:
        run.log_dist("rollout/length", lengths, step=s)
        rows += 1
    if step % 200 == 0:
        run.event("stage", step=s, worker=worker)
        rows += 1
    if step % 500 == 0:
        run.log_matrix("attn/max_logit_heads", [[1.0, 2.0], [3.0, 4.0]], step=s)
        rows += 1
    step += 1
    if step % 200 == 0:  # bursts at full speed, then a breath, as training steps come
        time.sleep(0.05)
run.finish()
print(rows, run.flushed_rows, step, flush=True)
"""


def test_four_writers_and_a_polling_reader(tmp_path: Path, store: Store) -> None:
    seconds, max_steps = 10.0, 100_000
    row = store.create_run(kind="custom", name="busy", status="running", pid=os.getpid())
    run_id = row.id
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(_WRITER))
    env = {**os.environ, "WB_RUN_ID": run_id, "WB_STORE": str(store.root)}
    procs = [subprocess.Popen([sys.executable, str(script), str(w), str(seconds),
                               str(max_steps)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for w in range(4)]
    seen: list[int] = []
    kinds: set[str] = set()
    polls = 0
    try:
        reader = Store(store.root)  # its own connection, like the TUI
        cursor = 0
        deadline = time.monotonic() + 90
        drained = False
        while time.monotonic() < deadline:
            done = all(p.poll() is not None for p in procs)  # before reading: then drain
            page = list(reader.records(run_id, since=cursor, limit=20_000))
            polls += 1
            if page:
                ids = [r.id for r in page]
                assert ids[0] > cursor and ids == sorted(ids)
                seen += ids
                kinds.update(r.type for r in page)
                cursor = ids[-1]
            elif done:
                drained = True
                break
            else:
                time.sleep(0.02)
        assert drained, "the reader did not catch up in time"
        reader.close()
        outs = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert err == "", err  # no "database is locked", no retry notice, nothing
            outs.append([int(x) for x in out.split()])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    logged = sum(o[0] for o in outs)
    assert all(o[0] == o[1] for o in outs)  # each writer committed all it logged
    assert all(o[2] > 0 for o in outs)
    num = store.run_num(run_id)
    total = sum(store.conn.execute(f"SELECT count(*) FROM {t} WHERE run = ?",
                                   (num,)).fetchone()[0] for t in RECORD_TABLES)
    assert total == logged
    assert len(seen) == len(set(seen)) == total  # the cursor saw every row exactly once
    assert kinds == {"scalar", "dist", "event", "matrix"}
    assert polls > 10
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert store.get_run(run_id).status == "running"  # attached writers leave it alone


MIN_BATCHES = 200  # written however long they take: the count checked is not a speed

_MIXED = f"""
import sys, time
from workbench.store import Batch, Store

st = Store(sys.argv[1])
run_id, seconds = sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + seconds
batches = 0
while batches < 200_000 and (batches < {MIN_BATCHES} or time.monotonic() < deadline):
    # each batch: a scalar, then a distribution, then an event (ids in that order)
    st.write_batch(Batch(run_id, scalars=[(batches, "x", 1.0, 0.0, 0)],
                         dists=[(batches, "d", 1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, "[]", "[]",
                                 0, 0.0)],
                         events=[(batches, "stage", "info", "{{}}", 0.0)]))
    batches += 1
print(batches, flush=True)
"""


def test_incremental_reads_never_skip_a_committed_row(tmp_path: Path, store: Store) -> None:
    """Each poll reads four tables; a batch committed between those reads must not be
    half-seen, or a reader resuming past the newest id it saw skips the rest for good."""
    run_id = store.create_run(kind="custom").id
    script = tmp_path / "mixed.py"
    script.write_text(_MIXED)
    proc = subprocess.Popen([sys.executable, str(script), str(store.root), run_id, "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[int] = []
    cursor = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = proc.poll() is not None
            page = [r.id for r in store.records(run_id, since=cursor)]
            if page:
                seen += page
                cursor = page[-1]
            elif done:
                break
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0 and err == "", err
    batches = int(out)
    assert batches >= MIN_BATCHES
    assert seen == list(range(1, 3 * batches + 1))  # every id, once, in order

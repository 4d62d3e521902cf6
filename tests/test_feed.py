"""RunFeed (incremental live view of a run) and `wb watch` (its headless twin)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
from typing import Any

import numpy as np
import pytest

from tests.helpers import wb_inproc
from workbench.feed import RunFeed, Series
from workbench.store import Store
from workbench.tracking import Run


def sdk_run(store: Store, kind: str = "pretrain", config: dict | None = None) -> Run:
    row = store.create_run(kind=kind, status="running", launcher="sdk", config=config or {})
    return Run(store, row, owner=True)


def test_series_grows_without_losing_points() -> None:
    s = Series()
    for k in range(5):
        n = 700 * (k + 1)
        s.extend(np.arange(n), np.full(n, float(k)), np.zeros(n))
    assert len(s) == sum(700 * (k + 1) for k in range(5))
    assert s.value[:700].tolist() == [0.0] * 700 and s.value[-1] == 4.0
    assert s.last() == (3499, 4.0)
    assert Series().last() is None


def test_feed_reads_each_record_kind_once_and_incrementally(store: Store) -> None:
    run = sdk_run(store, config={"optim": {"tau": 30.0}, "train": {"batch_size": 8},
                                 "model": {"seq_len": 64}})
    for step in range(1, 6):
        run.log({"train/loss": 5.0 - step, "attn/max_logit": 10.0 * step}, step=step)
    run.log({"train/grad_norm": math.nan}, step=5)
    run.log_matrix("attn/max_logit_heads", np.arange(6, dtype=np.float32).reshape(2, 3), step=5)
    run.log_dist("rollout/length", np.arange(1, 101), step=5)
    run.event("loss_spike", step=4, severity="warning", value=9.0)
    run.flush()

    feed = RunFeed(store, run.id)
    assert feed.poll()
    assert feed.series("train/loss").step.tolist() == [1, 2, 3, 4, 5]
    assert feed.series("train/loss").value.tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert math.isnan(feed.series("train/grad_norm").value[0])  # NaN kept as NaN
    step, m = feed.matrix("attn/max_logit_heads")
    assert step == 5 and m.shape == (2, 3) and m[1, 2] == 5.0
    d = feed.dist("rollout/length")
    assert d is not None
    assert d.count == 100 and d.max == 100 and d.p50 == pytest.approx(50.5)
    assert [e.kind for e in feed.events] == ["nan", "loss_spike"]  # the NaN warns
    assert feed.tau == 30.0 and feed.tokens_per_step == 512
    assert set(feed.keys()) >= {"train/loss", "attn/max_logit", "train/grad_norm"}

    assert not feed.poll()  # nothing new: nothing changes
    run.log({"train/loss": -1.0}, step=6)
    run.log_dist("rollout/length", [1, 2, 3], step=6)
    run.event("checkpoint", step=6)
    run.flush()
    assert feed.poll()
    assert feed.series("train/loss").step.tolist() == [1, 2, 3, 4, 5, 6]  # no duplicates
    assert len(feed.dist_history("rollout/length")) == 2
    assert [e.kind for e in feed.events] == ["nan", "loss_spike", "checkpoint"]
    assert feed.row.last_step == 6
    run.finish()


def test_a_preview_paints_each_keys_newest_points_then_poll_replaces_it(store: Store,
                                                                         tmp_path: Any) -> None:
    row = store.create_run(kind="custom", name="big", status="finished", launcher="sdk")
    run = Run(store, row, owner=True)
    for block in range(4):  # logged key by key in blocks, as a batched writer does
        for key in ("a", "b"):
            for step in range(block * 100, block * 100 + 100):
                run.log({key: float(step) if key == "a" else -float(step)}, step=step)
    run.log({"c": math.nan}, step=399)
    run.finish()
    assert store.scalar_span(row.id) == 801
    feed = RunFeed(store, row.id)
    assert feed.preview(limit=60)
    assert feed.partial and sorted(feed.keys()) == ["a", "b", "c"]  # every key, not the last
    assert feed.series("a").step.tolist() == list(range(380, 400))
    assert feed.series("b").value[-1] == -399 and math.isnan(feed.series("c").value[0])
    other = Store(store.root, create=False)  # a loader thread's own connection
    try:
        assert feed.poll(store=other)
    finally:
        other.close()
    assert not feed.partial and feed.series("a").step.tolist() == list(range(400))
    assert not feed.poll()  # the cursor moved: nothing is read twice


def test_feed_sees_rows_written_by_another_process_while_polling(store: Store) -> None:
    run = sdk_run(store)
    run.log({"train/loss": 1.0}, step=0)
    run.flush()
    feed = RunFeed(store, run.id)
    feed.poll()
    code = textwrap.dedent(f"""
        import time
        from workbench.store import Store
        from workbench.tracking import Run
        st = Store({str(store.root)!r})
        run = Run(st, st.get_run({run.id!r}), owner=False)
        for step in range(1, 201):
            run.log({{"train/loss": float(step)}}, step=step)
            if step % 20 == 0:
                run.flush()
                time.sleep(0.02)
        run.finish()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        feed.poll()
        if proc.poll() is not None and len(feed.series("train/loss")) == 201:
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    feed.poll()
    steps = feed.series("train/loss").step
    assert steps.tolist() == list(range(201))  # every point once, in order
    run.finish()


def test_watch_once_draws_the_chart_and_the_stats(store: Store) -> None:
    run = sdk_run(store)
    for step in range(1, 101):
        run.log({"train/loss": 5.0 / step, "train/lr": 1e-3}, step=step)
    run.log({"val/loss": 1.0}, step=100)
    run.event("loss_spike", step=50, severity="warning", value=3.0)
    run.finish()
    out = wb_inproc("watch", run.id, "--once", "--store", str(store.root), check=True).stdout
    assert run.name in out and "finished" in out and "step 100" in out
    assert "train/loss" in out and "spikes 1" in out and "loss_spike" in out
    assert sum(ch in out for ch in "⠁⠂⠄⡀⢀⠈⠐⠠") > 0  # braille dots of the curve


def test_watch_piped_follows_until_the_run_ends_and_exits_by_status(store: Store) -> None:
    run = sdk_run(store)
    run.log({"train/loss": 2.0}, step=1)
    run.flush()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "watch", run.id,
                             "--interval", "0.2", "--store", str(store.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    run.log({"train/loss": 1.0}, step=2)
    run.flush()
    time.sleep(1.0)
    run.finish("failed")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "step 1" in out and "step 2" in out and "failed" in out


def test_watch_refuses_a_metric_a_finished_run_does_not_have(store: Store) -> None:
    run = sdk_run(store)
    run.log({"train/loss": 2.0}, step=1)
    run.finish()
    proc = wb_inproc("watch", run.id, "--key", "nope/x", "--store", str(store.root))
    assert proc.returncode == 2
    assert "has no metric 'nope/x'" in proc.stderr and "train/loss" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

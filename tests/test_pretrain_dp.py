"""Data-parallel pretraining (`resources.procs = 2`): real torchrun ranks on gloo.

Each test starts the real worker, which starts torchrun, which starts two ranks
(about 10 s of start-up on 2 cores). Runs go one at a time, so they don't slow
each other down.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from tests.helpers import wait_for
from tests.test_pretrain import ckpt, launch, losses, tiny, wait_done
from workbench.launch import local
from workbench.procs import descendants, pid_alive
from workbench.store import Store

STEPS = 10


def dp(text: str, procs: int) -> str:
    return text.replace("[train]", f"[resources]\nprocs = {procs}\n[train]")


def test_two_processes_match_one_with_the_same_global_batch(store: Store) -> None:
    text = tiny(opt="muonclip", steps=STEPS, ckpt=STEPS)
    one = wait_done(store, launch(store, text), timeout=120)
    before = len(store.runs())
    two = wait_done(store, launch(store, dp(text, 2)), timeout=180)
    assert len(store.runs()) == before + 1  # one run row for both ranks

    a, b = losses(store, one.id), losses(store, two.id)
    assert sorted(b) == list(range(1, STEPS + 1))  # rank 0 alone logs: one row per step
    assert len(store.scalars(two.id, "train/loss")) == STEPS
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    va, vb = losses(store, one.id, "val/loss"), losses(store, two.id, "val/loss")
    assert vb[STEPS] == pytest.approx(va[STEPS], rel=1e-4)
    ma, mb = losses(store, one.id, "attn/max_logit"), losses(store, two.id,
                                                                 "attn/max_logit")
    assert mb[STEPS] == pytest.approx(ma[STEPS], rel=1e-3)  # all-reduced max, not rank 0's

    wa, wb_ = ckpt(store, one.id, STEPS), ckpt(store, two.id, STEPS)
    assert wa.keys() == wb_.keys()
    for k in wa:
        torch.testing.assert_close(wb_[k], wa[k], rtol=1e-3, atol=1e-5)
    # Muon's momentum is sharded over the ranks; the checkpoint still holds all of it
    ma, mb = (torch.load(store.run_dir(r.id) / "checkpoints" / f"step-{STEPS:08d}" /
                         "state.pt", weights_only=False)["optimizers"][0]["state"]
              for r in (one, two))
    assert ma and mb.keys() == ma.keys()
    for i in ma:
        torch.testing.assert_close(mb[i]["momentum_buffer"], ma[i]["momentum_buffer"],
                                   rtol=1e-3, atol=1e-5)

    config = store.get_run(two.id).config
    assert config["world_size"] == 2
    assert len(store.events(two.id, kind="checkpoint")) == 1  # written once, by rank 0
    assert "perf/optim_step_ms" in {k for _, _, k, _, _ in store.scalars(two.id)}
    out = (store.run_dir(two.id) / "stdout.log").read_text()
    assert "x 2 processes" in out and "starting 2 ranks" in out
    assert out.count("step 10/10") == 1  # rank 0 prints


def test_stop_reaches_every_rank_and_resume_continues(store: Store,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_FAULT_SLEEP_S", "0.1")
    launched = launch(store, dp(tiny(steps=40, ckpt=0), 2))
    monkeypatch.delenv("WB_FAULT_SLEEP_S")
    row = launched.record
    wait_for(lambda: max(losses(store, row.id), default=0) >= 3, 120, "a few steps")
    ranks = descendants(row.pid)
    assert len(ranks) >= 3  # torchrun and its two ranks
    local.stop(store, store.get_run(row.id), grace=60)
    launched.process.wait(timeout=60)
    assert store.get_run(row.id).status == "stopped"
    (event,) = store.events(row.id, kind="checkpoint")
    assert event.payload["reason"] == "stop" and 3 <= event.step < 40
    wait_for(lambda: not any(pid_alive(p) for p in ranks), 30, "the ranks to exit")

    resumed = wait_done(store, local.resume(store, store.get_run(row.id)), timeout=180)
    steps = sorted(losses(store, resumed.id))
    assert steps == list(range(event.step + 1, 41))


def test_kill_9_of_the_worker_takes_the_ranks_down(store: Store,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_FAULT_SLEEP_S", "0.1")
    launched = launch(store, dp(tiny(steps=400, ckpt=0), 2))
    monkeypatch.delenv("WB_FAULT_SLEEP_S")
    row = launched.record
    wait_for(lambda: max(losses(store, row.id), default=0) >= 2, 120, "a few steps")
    tree = descendants(row.pid)
    os.kill(row.pid, signal.SIGKILL)  # the worker alone, as a crash would
    launched.process.wait(timeout=30)
    wait_for(lambda: not any(pid_alive(p) for p in tree), 30, "ranks and torchrun to exit")
    assert store.get_run(row.id).status == "lost"
    last = max(losses(store, row.id))
    time.sleep(1.5)
    assert max(losses(store, row.id)) == last  # nothing trains behind a lost run

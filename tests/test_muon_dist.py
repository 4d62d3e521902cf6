"""`wb bench muon-dist`: two real ranks under torchrun, identical replicas, the figures.

The reference test of distributed Muon itself (2 gloo ranks, 3 steps, replicas
bit-equal and equal to single-process Muon) is
tests/test_optim.py::test_distributed_muon_matches_single_process.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from tests.helpers import assert_rounded_ratio, wb
from workbench.bench import BENCHES
from workbench.bench.muon_dist import run_bounded, summarize

FIELDS = ["one_proc_ms", "two_proc_ms_per_rank", "speedup", "all_gather_ms",
          "in_step_all_gather_ms", "max_abs_diff_vs_single", "matrices", "world_size",
          "two_independent_ms", "speedup_bound"]


def test_registered() -> None:
    assert "muon-dist" in BENCHES


def test_quick_through_the_cli() -> None:
    proc = wb("bench", "muon-dist", "--quick", "--json", check=True, timeout=150)
    r = json.loads(proc.stdout)
    for key in FIELDS:
        assert isinstance(r[key], int | float) and math.isfinite(r[key]), (key, r[key])
    assert r["replicas_identical"] is True
    assert r["matches_single"] is True and r["max_abs_diff_vs_single"] <= r["tolerance"]
    assert r["world_size"] == 2 and len(r["rank_ms"]) == 2
    assert r["threads_per_rank"] == 1
    assert r["matrices"] == 7 and r["quick"] is True
    assert r["one_proc_ms"] > 0 and r["two_proc_ms_per_rank"] > 0 and r["all_gather_ms"] > 0
    assert_rounded_ratio(r["speedup"], r["one_proc_ms"], r["two_proc_ms_per_rank"], 3, 4)
    assert r["ns_dtype"] in ("float32", "bfloat16") and r["device"] and r["backend"]


def _info(step_ms: list[float]) -> dict:
    return {"step_ms": step_ms, "in_step_all_gather_ms": [1.0] * len(step_ms),
            "all_gather_ms": [0.5] * len(step_ms), "threads": 1, "ns_dtype": "float32",
            "device": "cpu", "backend": "gloo", "matrices": 1, "params": 4, "d_model": 2,
            "n_layer": 1, "shapes": [[2, 2]]}


def test_summarize_takes_the_slower_rank_and_flags_diverged_replicas() -> None:
    single = _info([10.0, 12.0, 11.0])
    ranks = [_info([5.0, 9.0, 5.0]), _info([6.0, 4.0, 7.0])]
    p = torch.ones(2, 2)
    r = summarize(single, ranks, [p], [[p.clone()], [p.clone()]], steps=4,
                  independent=[_info([13.0, 14.0, 15.0]), _info([16.0, 12.0, 11.0])])
    assert r["two_proc_ms_per_rank"] == 7.0  # median of the per-repeat max: 6, 9, 7
    assert r["two_independent_ms"] == 14.0
    assert r["speedup_bound"] == pytest.approx(22 / 14, rel=1e-3)
    assert r["one_proc_ms"] == 11.0 and r["speedup"] == pytest.approx(11 / 7, rel=1e-3)
    assert r["replicas_identical"] and r["matches_single"] and r["max_abs_diff_vs_single"] == 0
    r = summarize(single, ranks, [p], [[p.clone()], [p + 1e-3]], steps=4)
    assert not r["replicas_identical"] and not r["matches_single"]
    assert r["max_abs_diff_vs_single"] == pytest.approx(1e-3, rel=1e-3)


def test_a_stuck_subprocess_is_stopped() -> None:
    with pytest.raises(RuntimeError, match="timed out"):
        run_bounded([[sys.executable, "-c", "import time; time.sleep(60)"]] * 2, {}, timeout=1)


"""Distributed Muon's sharded state (real gloo ranks), and `wb bench muon-dist`: real
ranks under torchrun, identical replicas, the figures.

The older reference test of the distributed step (2 gloo ranks, 3 steps, the NS work
split, replicas equal to single-process Muon) is
tests/test_optim.py::test_distributed_muon_matches_single_process.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import assert_rounded_ratio, wb
from workbench.bench import BENCHES
from workbench.bench.muon_dist import run_bounded, state_figures, summarize
from workbench.optim import Muon

FIELDS = ["one_proc_ms", "two_proc_ms_per_rank", "speedup", "all_gather_ms",
          "in_step_all_gather_ms", "max_abs_diff_vs_single", "matrices", "world_size",
          "two_independent_ms", "speedup_bound", "state_bytes_one_process",
          "state_bytes_ratio"]


# ----------------------------------------------------------------------------- sharded state

# Shapes interleaved, as in a model; buckets of 6, 6 and 3: 1/3 each at 3 ranks, and a
# bucket that does not split evenly at 2.
SHAPES = [(8, 16), (16, 8), (12, 12), (8, 16), (16, 8), (8, 16), (12, 12), (16, 8),
          (8, 16), (16, 8), (8, 16), (12, 12), (16, 8), (8, 16), (16, 8)]
STEPS, SAVE_AT = 6, 3
NO_GRAD = (1, 4)  # (step, param): a matrix without a gradient for one step
KW = dict(lr=0.02, weight_decay=0.1, ns_dtype=torch.float32)  # fp32: fast on any CPU


def _problem() -> tuple[list[torch.Tensor], list[list[torch.Tensor | None]]]:
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=gen) * 0.1 for s in SHAPES]
    grads: list[list[torch.Tensor | None]] = [
        [torch.randn(s, generator=gen) for s in SHAPES] for _ in range(STEPS)]
    grads[NO_GRAD[0]][NO_GRAD[1]] = None
    return init, grads


def _steps(opt: Muon, params: list[nn.Parameter], grads, start: int, stop: int) -> None:
    for step in range(start, stop):
        for p, g in zip(params, grads[step], strict=True):
            p.grad = None if g is None else g.clone()
        opt.step()


def _make(weights: list[torch.Tensor], **kw) -> tuple[Muon, list[nn.Parameter]]:
    params = [nn.Parameter(w.clone()) for w in weights]
    return Muon(params, **KW, **kw), params


def _momentum_bytes(opt: Muon) -> int:
    """Counted here, not by the optimizer: the storage this process really holds (a
    buffer that is a view of a bigger tensor, e.g. a gathered chunk, pins all of it)."""
    storages = {s["momentum_buffer"].untyped_storage() for s in opt.state.values()
                if "momentum_buffer" in s}
    return sum({st.data_ptr(): st.nbytes() for st in storages}.values())


def _expected_bytes(world: int) -> list[int]:
    """Round-robin within each shape bucket (parameter order): matrix i -> rank i % W."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for shape in SHAPES:
        buckets[shape].append(math.prod(shape) * 4)
    out = [0] * world
    for sizes in buckets.values():
        for i, size in enumerate(sizes):
            out[i % world] += size
    return out


def _shard_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """3 ranks: runs at N=3 (all) and N=2 (ranks 0, 1), from scratch and resumed from
    the checkpoints the others wrote; rank 0 of each job writes its state."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    out = Path(out_dir)
    pair = dist.new_group([0, 1])  # every rank must create it
    groups = {3: None, 2: pair}
    init, grads = _problem()
    res: dict = {"bytes": {}, "counted": {}, "final": {}, "states_equal": {}}
    try:
        for n in (3, 2):  # from scratch; save at SAVE_AT, then on to the end
            if rank >= n:
                continue
            opt, params = _make(init, distributed=True, process_group=groups[n])
            _steps(opt, params, grads, 0, SAVE_AT)
            res["bytes"][n], res["counted"][n] = opt.state_bytes(), _momentum_bytes(opt)
            state = opt.state_dict()  # a collective: every rank gets the full state
            if rank == 0:
                torch.save({"params": [p.detach() for p in params], "opt": state},
                           out / f"ckpt-n{n}.pt")
            _steps(opt, params, grads, SAVE_AT, STEPS)
            res["final"][(n, "scratch")] = [p.detach().clone() for p in params]
            res["bytes_after_state_dict"] = opt.state_bytes()  # a gather keeps nothing
        dist.barrier()
        for n, source in [(3, 2), (3, 1), (2, 3), (2, 1)]:  # resume at n from N=source
            if rank >= n:
                continue
            ckpt = torch.load(out / f"ckpt-n{source}.pt")
            opt, params = _make(ckpt["params"], distributed=True, process_group=groups[n])
            opt.load_state_dict(ckpt["opt"])
            res["bytes"][(n, source)] = _momentum_bytes(opt)
            _steps(opt, params, grads, SAVE_AT, STEPS)
            res["final"][(n, source)] = [p.detach().clone() for p in params]
        torch.save(res, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sharded_state_is_1_over_n_and_checkpoints_resume_at_any_n(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    init, grads = _problem()
    one, params = _make(init)  # the unsharded reference, one process
    _steps(one, params, grads, 0, SAVE_AT)
    one_bytes = one.state_bytes()
    assert one_bytes == _momentum_bytes(one) == sum(math.prod(s) * 4 for s in SHAPES)
    torch.save({"params": [p.detach().clone() for p in params], "opt": one.state_dict()},
               tmp_path / "ckpt-n1.pt")
    _steps(one, params, grads, SAVE_AT, STEPS)
    ref = [p.detach() for p in params]

    ctx = mp.start_processes(_shard_worker, args=(3, _free_port(), str(tmp_path)), nprocs=3,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 150
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "sharded Muon workers timed out"
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(3)]

    # each rank holds the momentum of the matrices it owns, and nothing else
    for n in (3, 2):
        held = [ranks[r]["counted"][n] for r in range(n)]
        assert held == [ranks[r]["bytes"][n] for r in range(n)] == _expected_bytes(n)
        assert sum(held) == one_bytes  # no buffer twice, none missing
        assert max(held) <= math.ceil(one_bytes / n) + 12 * 12 * 4  # 1/N, give or take one
    assert [ranks[r]["counted"][3] * 3 for r in range(3)] == [one_bytes] * 3  # exactly 1/3
    # the checkpoint is the full state whatever N wrote it: the one-process one, bit for bit
    sd1 = torch.load(tmp_path / "ckpt-n1.pt")["opt"]
    for n in (2, 3):
        sd = torch.load(tmp_path / f"ckpt-n{n}.pt")["opt"]
        assert sd["param_groups"] == sd1["param_groups"]
        assert sd["state"].keys() == sd1["state"].keys() == set(range(len(SHAPES)))
        for i, s in sd1["state"].items():
            assert torch.equal(sd["state"][i]["momentum_buffer"], s["momentum_buffer"])
    # a resumed shard is this rank's part only
    for n, source in [(3, 2), (3, 1), (2, 3), (2, 1)]:
        assert [ranks[r]["bytes"][(n, source)] for r in range(n)] == _expected_bytes(n)
    # every run, from scratch or resumed at another N, ends bit-equal to one process
    runs = [(3, "scratch"), (2, "scratch"), (3, 2), (3, 1), (2, 3), (2, 1)]
    for n, source in runs:
        for r in range(n):
            for a, b in zip(ranks[r]["final"][(n, source)], ref, strict=True):
                assert torch.equal(a, b), (n, source, r)
    for source in (2, 3):  # and resumed in one process
        ckpt = torch.load(tmp_path / f"ckpt-n{source}.pt")
        opt, params = _make(ckpt["params"])
        opt.load_state_dict(ckpt["opt"])
        assert opt.state_bytes() == one_bytes
        _steps(opt, params, grads, SAVE_AT, STEPS)
        for a, b in zip(params, ref, strict=True):
            assert torch.equal(a.detach(), b), source


def test_state_figures_ratio() -> None:
    one = {"state_bytes": 1000}
    r = state_figures(one, [{"state_bytes": 600}, {"state_bytes": 400}])
    assert r == {"world_size": 2, "state_bytes_per_rank": [600, 400],
                 "state_bytes_one_process": 1000, "state_bytes_ratio": 0.6, "ideal_ratio": 0.5}


# ----------------------------------------------------------------------------- the bench


def test_registered() -> None:
    assert "muon-dist" in BENCHES


def test_quick_through_the_cli() -> None:
    # five jobs of fresh processes (1, 2 at once, torchrun 2, torchrun 3): ~50 s on an
    # idle 2-core machine, but start-up and the one-time NS timing stretch under load
    proc = wb("bench", "muon-dist", "--quick", "--json", check=True, timeout=420)
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
    assert r["ns_dtype"] in ("float32", "bfloat16", "mixed") and r["device"] and r["backend"]
    assert r["ns_dtype_rule"].startswith("auto") and len(r["ns_choices"]) == 3  # 3 shapes
    assert {c["source"] for c in r["ns_choices"]} == {"measured"}
    # the optimizer state is sharded: each rank holds its matrices' momentum only
    one = r["state_bytes_one_process"]
    assert one == r["params"] * 4  # fp32 momentum, one buffer per matrix
    assert sum(r["state_bytes_per_rank"]) == one
    assert r["state_bytes_ratio"] == round(max(r["state_bytes_per_rank"]) / one, 4)
    assert [row["world_size"] for row in r["state_by_world"]] == [2, 3]
    for row in r["state_by_world"]:  # quick's 7 matrices split 4 : 3 at best
        n = row["world_size"]
        assert len(row["state_bytes_per_rank"]) == n and sum(row["state_bytes_per_rank"]) == one
        assert row["state_bytes_ratio"] < 0.65 and row["ideal_ratio"] == round(1 / n, 4)


def _info(step_ms: list[float]) -> dict:
    return {"step_ms": step_ms, "in_step_all_gather_ms": [1.0] * len(step_ms),
            "all_gather_ms": [0.5] * len(step_ms), "threads": 1, "ns_dtype": "float32",
            "device": "cpu", "backend": "gloo", "matrices": 1, "params": 4, "d_model": 2,
            "n_layer": 1, "shapes": [[2, 2]], "state_bytes": 16}


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


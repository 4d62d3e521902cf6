"""Muon's ``ns_dtype="auto"``: decided by a one-time timing per (shape, device), cached,
the same on every rank, kept across a resume, and recorded in a pretrain run's config.

Timings are injected (``measure_ns_dtypes`` replaced) wherever the test is about the
decision, so the tests hold on any CPU; one test times for real.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import workbench.optim.muon as muon_mod
from tests.test_pretrain import losses, tiny
from workbench.optim.muon import BF16_MARGIN, Muon, clear_ns_dtype_cache, measure_ns_dtypes
from workbench.recipes import Context
from workbench.recipes import pretrain as pt
from workbench.run_record import RunRecord
from workbench.spec import dump_toml, parse_spec
from workbench.store import Store
from workbench.tracking import Run

SHAPES = [(8, 16), (8, 16), (12, 12)]


@pytest.fixture(autouse=True)
def _cold_cache(one_thread: Any) -> Iterator[None]:
    """Each test starts with no cached decision (and one thread, restored afterwards:
    the pretrain recipe sets the process's thread count)."""
    clear_ns_dtype_cache()
    yield
    clear_ns_dtype_cache()


def fake_timing(ms: dict[str, float], calls: list[tuple[int, ...]] | None = None
                ) -> Callable[..., dict[str, float]]:
    """A measure_ns_dtypes that reports `ms` and logs the shapes it was asked about."""
    def measure(G: torch.Tensor, *args: Any) -> dict[str, float]:
        if calls is not None:
            calls.append(tuple(G.shape))
        return dict(ms)
    return measure


def params_with_grads(seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return params


def stepped(ns_dtype: torch.dtype | str, steps: int = 2) -> tuple[Muon, list[torch.Tensor]]:
    params = params_with_grads()
    opt = Muon(params, lr=0.02, ns_dtype=ns_dtype)
    for _ in range(steps):
        opt.step()
    return opt, [p.detach().clone() for p in params]


@pytest.mark.parametrize(("ms", "chosen"), [
    ({"float32": 10.0, "bfloat16": 1.0}, torch.bfloat16),   # native-bf16 CPU / GPU
    ({"float32": 1.0, "bfloat16": 30.0}, torch.float32),    # AVX2-only CPU
    ({"float32": 1.0, "bfloat16": 0.95}, torch.float32),  # a near-tie (BF16_MARGIN): fp32
])
def test_auto_runs_the_dtype_the_timing_found_faster(monkeypatch: pytest.MonkeyPatch,
                                                     ms: dict[str, float],
                                                     chosen: torch.dtype) -> None:
    monkeypatch.setattr(muon_mod, "measure_ns_dtypes", fake_timing(ms))
    opt, auto = stepped("auto")
    _, fixed = stepped(chosen)
    for a, f in zip(auto, fixed, strict=True):
        assert torch.equal(a, f)  # the same arithmetic as that dtype fixed
    name = str(chosen).removeprefix("torch.")
    assert [(r["shape"], r["dtype"], r["ms"], r["source"]) for r in opt.ns_choice_records()] \
        == [([8, 16], name, ms, "measured"), ([12, 12], name, ms, "measured")]
    assert muon_mod.ns_dtype_summary([opt]) == name


def test_the_decision_is_cached_per_shape_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    monkeypatch.setattr(muon_mod, "measure_ns_dtypes",
                        fake_timing({"float32": 1.0, "bfloat16": 2.0}, calls))
    stepped("auto", steps=3)
    assert sorted(calls) == [(8, 16), (12, 12)]  # once per shape, on one matrix of it
    opt, _ = stepped("auto")  # a second optimizer in the same process: no new timing
    assert len(calls) == 2
    assert {r["source"] for r in opt.ns_choice_records()} == {"measured"}
    opt.resolve_ns_dtypes()
    assert len(calls) == 2
    meta = Muon([nn.Parameter(torch.zeros(8, 16, device="meta"))], ns_dtype="auto")
    assert meta.resolve_ns_dtypes()[0]["device"] == "meta"
    assert calls[-1] == (8, 16) and len(calls) == 3  # another device is another key


def test_fixed_dtypes_never_time(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> dict[str, float]:
        raise AssertionError("timed")

    monkeypatch.setattr(muon_mod, "measure_ns_dtypes", refuse)
    opt, _ = stepped(torch.float32)
    assert opt.resolve_ns_dtypes() == [] and muon_mod.ns_dtype_summary([opt]) == "float32"
    with pytest.raises(ValueError, match="auto"):
        Muon(params_with_grads(), ns_dtype="fast")


@pytest.mark.parametrize(("fp32_ms", "bf16_ms", "bf16_calls"), [
    (1.0, 1000.0, 1),  # clearly slower and expensive: its first call settles it
    (1.0, 50.0, 4),    # slower but cheap: warm-up and every timed call
    (100.0, 250.0, 4),  # expensive but close: every call
    (100.0, 20.0, 4),  # faster: every call
])
def test_measurement_is_bounded(fp32_ms: float, bf16_ms: float, bf16_calls: int) -> None:
    """fp32 (the CPU's old default) goes first; a clearly slower bf16 costs one call."""
    seen: list[torch.dtype] = []
    cost = {torch.float32: fp32_ms, torch.bfloat16: bf16_ms}

    def fake_call(fn: Callable[[], Any], device: torch.device) -> float:
        fn()
        return cost[seen[-1]]

    def fake_ns(G: torch.Tensor, steps: int, eps: float, coefficients: Any,
                dtype: torch.dtype) -> torch.Tensor:
        seen.append(dtype)
        return G

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(muon_mod, "_call_ms", fake_call)
        mp.setattr(muon_mod, "newton_schulz", fake_ns)
        ms = measure_ns_dtypes(torch.zeros(4, 4))
    assert ms == {"float32": fp32_ms, "bfloat16": bf16_ms}
    assert seen == [torch.float32] * 4 + [torch.bfloat16] * bf16_calls


def test_real_measurement_is_finite() -> None:
    real = measure_ns_dtypes(torch.randn(16, 32))
    assert set(real) == {"float32", "bfloat16"} and all(0 < v < 10_000 for v in real.values())


def test_state_dict_carries_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(muon_mod, "measure_ns_dtypes",
                        fake_timing({"float32": 9.0, "bfloat16": 1.0}))
    opt, _ = stepped("auto")
    state = opt.state_dict()
    assert {r["dtype"] for r in state["ns_choices"]} == {"bfloat16"}

    clear_ns_dtype_cache()  # a new process whose timing would now say fp32
    monkeypatch.setattr(muon_mod, "measure_ns_dtypes",
                        fake_timing({"float32": 1.0, "bfloat16": 9.0}))
    resumed = Muon(params_with_grads(), lr=0.02, ns_dtype="auto")
    resumed.load_state_dict(state)
    records = resumed.resolve_ns_dtypes()
    assert {(r["dtype"], r["source"]) for r in records} == {("bfloat16", "checkpoint")}
    assert records[0]["ms"] == {"float32": 9.0, "bfloat16": 1.0}  # the timings that decided
    older = {k: v for k, v in state.items() if k != "ns_choices"}  # written before records
    fresh = Muon(params_with_grads(), lr=0.02, ns_dtype="auto")
    fresh.load_state_dict(older)  # no record: decided afresh
    assert {r["dtype"] for r in fresh.resolve_ns_dtypes()} == {"float32"}


# ----------------------------------------------------------------------------- two ranks


def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=30))
    calls: list[tuple[int, ...]] = []
    # each rank's own timing disagrees: rank 0 finds fp32 faster, rank 1 bf16
    ms = {"float32": 1.0, "bfloat16": 5.0} if rank == 0 else {"float32": 5.0, "bfloat16": 1.0}
    muon_mod.measure_ns_dtypes = fake_timing(ms, calls)
    try:
        out = {}
        for distributed in (True, False):  # split NS work, or plain DDP-style replicas
            clear_ns_dtype_cache()
            params = params_with_grads()
            opt = Muon(params, lr=0.02, distributed=distributed, ns_dtype="auto")
            for _ in range(2):
                opt.step()
            out[distributed] = {"params": [p.detach() for p in params],
                                "records": opt.ns_choice_records()}
        torch.save({"out": out, "calls": calls}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_runs_rank_0s_choice(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_rank_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 90
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "workers timed out"
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r1["calls"] == []  # only rank 0 times
    assert len(r0["calls"]) == 2 * 2  # two shapes, cache cleared between the two modes
    for distributed in (True, False):
        a, b = r0["out"][distributed], r1["out"][distributed]
        assert {r["dtype"] for r in a["records"] + b["records"]} == {"float32"}
        assert {r["source"] for r in a["records"]} == {"measured"}
        assert {r["source"] for r in b["records"]} == {"rank 0"}
        for x, y in zip(a["params"], b["params"], strict=True):
            assert torch.equal(x, y)  # the replicas stay bit-identical


# ----------------------------------------------------------------------------- pretrain


def run_inline(store: Store, text: str, resume_dir: Path | None = None) -> RunRecord:
    """A pretrain run in this process, so the injected timing applies."""
    spec = parse_spec(text)
    row = store.create_run(kind="pretrain", base="tiny", status="running", spec=dump_toml(spec),
                           config=spec.run_config(), total_steps=spec.total_steps)
    run = Run(store, row, owner=True)
    try:
        pt.run(spec, Context(run=run, run_dir=store.run_dir(row.id), resume_dir=resume_dir))
    finally:
        run.finish()
    return store.get_run(row.id)


def config_of(row: RunRecord) -> dict[str, Any]:
    return dict(row.config)


def test_a_pretrain_run_records_the_choice_and_a_resume_keeps_it(
        store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tiny(opt="muon", steps=6, ckpt=3)
    bf16_faster = {"float32": 7.0, "bfloat16": 2.0}
    monkeypatch.setattr(muon_mod, "measure_ns_dtypes", fake_timing(bf16_faster))
    first = run_inline(store, text)
    config = config_of(first)
    assert config["ns_dtype"] == "torch.bfloat16"
    shapes = {tuple(r["shape"]) for r in config["muon_ns_choice"]}
    assert shapes == {(64, 64), (192, 64), (64, 192)}  # q/k/v/o, gate/up, down
    assert all(r["dtype"] == "bfloat16" and r["ms"] == bf16_faster and r["source"] == "measured"
               and r["device"] == "cpu" for r in config["muon_ns_choice"])
    assert "Muon NS dtype (auto) 64x64 on cpu: bfloat16 (measured" in capsys.readouterr().out

    # resume from step 3 in a "new process" whose timing would say fp32
    shutil.rmtree(store.run_dir(first.id) / "checkpoints" / "step-00000006")
    clear_ns_dtype_cache()
    monkeypatch.setattr(muon_mod, "measure_ns_dtypes",
                        fake_timing({"float32": 1.0, "bfloat16": 9.0}))
    resumed = run_inline(store, text, resume_dir=store.run_dir(first.id))
    records = config_of(resumed)["muon_ns_choice"]
    assert {(r["dtype"], r["source"]) for r in records} == {("bfloat16", "checkpoint")}
    a, c = losses(store, first.id), losses(store, resumed.id)
    assert sorted(c) == [4, 5, 6]
    assert {s: a[s] for s in c} == c  # bit for bit: the same NS dtype as before


def test_a_real_pretrain_run_records_measured_timings(store: Store) -> None:
    row = run_inline(store, tiny(opt="muonclip", steps=3, ckpt=3))
    config = config_of(row)
    records = config["muon_ns_choice"]
    assert len(records) == 3 and all(r["source"] == "measured" for r in records)
    for r in records:
        assert set(r["ms"]) == {"float32", "bfloat16"} and all(v > 0 for v in r["ms"].values())
        faster = "bfloat16" if r["ms"]["bfloat16"] < BF16_MARGIN * r["ms"]["float32"] \
            else "float32"
        assert r["dtype"] == faster
    dtypes = {r["dtype"] for r in records}
    assert config["ns_dtype"] == (f"torch.{dtypes.pop()}" if len(dtypes) == 1 else "mixed")

"""`wb bench muon-dist`: distributed Muon's step time and optimizer state per rank, N ranks vs 1.

Distributed Muon (``Muon(distributed=True)``, workbench/optim/muon.py) shards the
optimizer (ZeRO-1): each matrix's owner rank alone keeps its momentum and runs its
Newton-Schulz, and the results are shared with one ``all_gather`` per shape bucket.
This bench measures what that buys: the step time of one rank of a 2-process job
against the same optimizer in a single process, and the optimizer-state bytes each
rank holds at 2, 3 (and, full, 4) ranks against one process's, on the Muon-routed
matrices of the GPT that ``wb bench muon`` uses (:func:`workbench.bench.muon.shapes_config`):
CPU full d_model 384 x 6 layers (42 matrices), CPU --quick one block (7 matrices; its
buckets of 4, 2 and 1 matrices split 4 : 3 over 2 ranks, so it cannot reach x2);
with 2 GPUs, that bench's CUDA sets (full: d_model 768 x 12 layers).

Why it runs real processes: the point is the exchange between ranks, so the 2-rank
arm is started the way the project launches multi-process runs,
``python -m torch.distributed.run --standalone --nproc_per_node 2 -m
workbench.bench.muon_dist --worker ...``, and the 1-process baseline is the same
worker started with plain ``python`` (no process group, ``distributed=False``).

Fairness on a CPU: every process runs ``torch.set_num_threads(1)``, so one rank of
the 2-rank job has exactly the compute of the baseline and "per rank" compares like
with like (on the 2-core dev machine the two ranks take one core each). The NS dtype
is the optimizer's own ``ns_dtype="auto"`` choice: the 1-process arm decides it per
shape (:meth:`Muon.resolve_ns_dtypes`, a one-time timing before the timed steps, on
its one thread) and every other arm adopts those choices, so all arms run the same
arithmetic; ``ns_dtype`` reports it (``"mixed"`` when shapes differ) and
``ns_choices`` the per-shape records with their timings. ``bench_muon_dist(ns_dtype=
"float32")`` (or ``"bfloat16"``) fixes it instead. CUDA is used only when there are at
least 2 GPUs (NCCL, one GPU per rank); with fewer, every arm runs on the CPU with gloo.

Networking: ``--standalone`` rendezvouses at ``localhost:0`` and hands the ranks
``MASTER_ADDR=localhost``; gloo would pick its own address from the hostname, so the
bench sets ``GLOO_SOCKET_IFNAME`` to the loopback interface. (torch's TCPStore server
always listens on every interface; there is no option for that, but all connections
go to 127.0.0.1.)

Timed: ``opt.step()`` alone, after warm-up, with a ``barrier()`` before each repeat;
the 2-rank time of a repeat is the slower rank's, the figure is the median. Every rank
has the same (seeded) weights and gradients. Each subprocess has a timeout, and every
worker also exits on its own (``faulthandler``) a little before it.

Figures: ``one_proc_ms``, ``two_proc_ms_per_rank``, ``speedup`` = one / two (ideal 2),
``all_gather_ms`` (the exchange alone: the same all_gathers replayed after a barrier,
no NS), ``in_step_all_gather_ms`` (CPU only: time spent inside all_gather during a
step; the excess over ``all_gather_ms`` is waiting for the slower rank), ``rank_ms``
(each rank's own median), ``two_independent_ms`` (two unconnected 1-process runs at
the same time: the cost of sharing the machine, no exchange) and ``speedup_bound`` =
2 * one_proc_ms / two_independent_ms (the best a 2-rank split can do on this machine;
on the 2-vCPU dev box the two cores slow each other down), and
the correctness check ``replicas_identical`` (rank 0 and rank 1 parameters bit-equal
after all the steps), ``max_abs_diff_vs_single`` and ``matches_single`` (vs the
1-process run after the same steps, within ``tolerance``; on a CPU they are bit-equal,
0.0). ``load_avg_before`` is the 1-minute load average at the start: on a shared
machine, other work skews the figures.

Optimizer state (:meth:`Muon.state_bytes`, the momentum buffers each process holds
after its steps): ``state_bytes_one_process``, ``state_bytes_per_rank`` (the timed
2-rank job), ``state_bytes_ratio`` = the largest rank's bytes / one process's (ideal
1/N; a bucket whose size is not a multiple of N puts one matrix more on some ranks)
and ``state_by_world``: the same per N for N = 2, 3 (and 4 when not --quick), the
extra N from a short untimed torchrun job of one step.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from workbench.bench.muon import LR, WD, shapes_config
from workbench.models.gpt import GPT
from workbench.optim import Muon, adjust_lr, route
from workbench.optim.muon import AUTO, NS_DTYPES, NsChoice, ns_dtype_summary

MODULE = "workbench.bench.muon_dist"
WORLD = 2
STATE_WORLDS = (2, 3, 4)  # N at which the state bytes per rank are measured (quick: 2, 3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def problem(device: torch.device, quick: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights and gradients, identical in every process (same seeds, same shapes)."""
    torch.manual_seed(0)
    model = GPT(shapes_config(device, quick))  # built on the CPU: the same init everywhere
    weights = [p.detach().to(device) for _, p in route(model).muon]
    gen = torch.Generator(device="cpu").manual_seed(1)
    grads = [(torch.randn(w.shape, generator=gen) * 0.01).to(device) for w in weights]
    return weights, grads


def _loopback_ifname() -> str | None:
    names = {name for _, name in socket.if_nameindex()}
    return next((n for n in ("lo", "lo0") if n in names), None)


# ----------------------------------------------------------------------------- worker


def _worker(argv: Sequence[str]) -> None:
    """One process of either arm; writes ``{tag}.json`` (timings) and ``{tag}.pt`` (params)."""
    ap = argparse.ArgumentParser(prog=f"python -m {MODULE} --worker")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", choices=("cpu", "cuda"), required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--reps", type=int, required=True)
    ap.add_argument("--deadline", type=float, required=True, help="seconds before self-exit")
    ap.add_argument("--tag", default=None,
                    help="output name (default: single, or rank{r} under torchrun)")
    ap.add_argument("--ns-dtype", choices=(AUTO, *NS_DTYPES), default=AUTO)
    ap.add_argument("--ns-choices", type=Path, default=None,
                    help="auto's per-shape choices to adopt (the 1-process arm's), JSON")
    args = ap.parse_args(argv)
    faulthandler.dump_traceback_later(args.deadline, exit=True)  # never outlive the bench
    torch.set_num_threads(1)

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world > 1:
        dist.init_process_group(backend, timeout=timedelta(seconds=args.deadline))
    ns_dtype = AUTO if args.ns_dtype == AUTO else NS_DTYPES[args.ns_dtype]

    # Record every all_gather Muon makes: the chunk it sent, to replay the exchange alone
    # afterwards, and on a CPU its time (the exchange plus any wait for the slower rank;
    # gloo on CPU tensors returns when done). On CUDA timing it would need a sync that
    # the real step does not make, so it is left out there.
    all_gather = dist.all_gather
    in_gather: list[float] = []
    chunks: list[torch.Tensor] = []

    def timed_all_gather(tensor_list: list[torch.Tensor], tensor: torch.Tensor,
                         *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        work = all_gather(tensor_list, tensor, *a, **kw)
        in_gather.append((time.perf_counter() - t0) * 1e3)
        chunks.append(tensor)
        return work

    cfg = shapes_config(device, args.quick)
    weights, grads = problem(device, args.quick)
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt = Muon(params, lr=LR, weight_decay=WD, ns_dtype=ns_dtype, distributed=world > 1)
    if ns_dtype == AUTO and args.ns_choices is not None:  # every arm runs the same dtypes
        for record in json.loads(args.ns_choices.read_text()):
            choice = NsChoice.from_record(record, source="1-process arm")
            opt.ns_choices[(choice.shape, choice.device)] = choice
    opt.resolve_ns_dtypes()  # any timing happens here, before the timed steps

    def barrier() -> None:
        if world > 1:
            dist.barrier()
        _sync(device)

    dist.all_gather = timed_all_gather  # type: ignore[assignment]  # Muon looks it up per call
    try:
        for _ in range(args.warmup):
            opt.step()
        step_ms, gather_ms = [], []
        for _ in range(args.reps):
            barrier()
            in_gather.clear()
            chunks.clear()
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            step_ms.append((time.perf_counter() - t0) * 1e3)
            gather_ms.append(sum(in_gather))
    finally:
        dist.all_gather = all_gather  # type: ignore[assignment]

    exchange_ms = []
    if world > 1:  # the last step's all_gathers again, with no NS between them
        outs = [[torch.empty_like(c) for _ in range(world)] for c in chunks]
        for _ in range(args.reps):
            barrier()
            t0 = time.perf_counter()
            for c, out in zip(chunks, outs, strict=True):
                all_gather(out, c)
            _sync(device)
            exchange_ms.append((time.perf_counter() - t0) * 1e3)
        dist.barrier()
        dist.destroy_process_group()

    if world > 1:
        tag = f"{args.tag}-rank{rank}" if args.tag else f"rank{rank}"
    else:
        tag = args.tag or "single"
    torch.save([p.detach().cpu() for p in params], args.out / f"{tag}.pt")
    info = {
        "step_ms": step_ms, "all_gather_ms": exchange_ms,
        "in_step_all_gather_ms": gather_ms if device.type == "cpu" else None,
        "world_size": world, "threads": torch.get_num_threads(),
        "ns_dtype": ns_dtype_summary([opt]), "ns_choices": opt.ns_choice_records(),
        "state_bytes": opt.state_bytes(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backend": backend,
        "matrices": len(params), "params": sum(p.numel() for p in params),
        "d_model": cfg.d_model, "n_layer": cfg.n_layer,
        "shapes": [list(p.shape) for p in params],
    }
    (args.out / f"{tag}.json").write_text(json.dumps(info))
    faulthandler.cancel_dump_traceback_later()


# ----------------------------------------------------------------------------- parent


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, bool]:
    """(output, timed out); a process still running after `timeout` is SIGTERMed
    (torchrun forwards that to its ranks), then SIGKILLed."""
    try:
        return proc.communicate(timeout=max(timeout, 0.1))[0], False
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            return proc.communicate(timeout=15)[0], True
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.communicate(timeout=15)[0], True


def run_bounded(cmds: list[list[str]], env: dict[str, str], timeout: float) -> None:
    """Run `cmds` at the same time, all of them within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for cmd in cmds]
    results = [_finish(proc, deadline - time.monotonic()) for proc in procs]
    for cmd, proc, (out, timed_out) in zip(cmds, procs, results, strict=True):
        if timed_out:
            raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}\n{_tail(out)}")
        if proc.returncode != 0:
            raise RuntimeError(f"exit code {proc.returncode}: {' '.join(cmd)}\n{_tail(out)}")


def tolerance(ns_dtype: str, shapes: Sequence[Sequence[int]], steps: int) -> float:
    """How far a replica may drift from the 1-process run: a few NS-dtype ulps of the
    largest shape-adjusted update per step (batched NS over fewer matrices may round
    differently). On this CPU the results are bit-equal; the slack is for GPUs.
    ``"mixed"`` (auto chose per shape) takes bf16's, the coarser."""
    ulp = torch.finfo(torch.float32 if ns_dtype == "float32" else torch.bfloat16).eps
    step = max(adjust_lr(LR, "match_rms_adamw", s) for s in shapes)
    return steps * step * 1.5 * 4 * ulp


def state_figures(single: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Optimizer-state bytes per rank of an N-rank job against one process's."""
    one = single["state_bytes"]
    per_rank = [r["state_bytes"] for r in ranks]
    return {"world_size": len(ranks), "state_bytes_per_rank": per_rank,
            "state_bytes_one_process": one,
            "state_bytes_ratio": round(max(per_rank) / one, 4) if one else None,
            "ideal_ratio": round(1 / len(ranks), 4)}


def summarize(single: dict[str, Any], ranks: list[dict[str, Any]],
              single_params: list[torch.Tensor], rank_params: list[list[torch.Tensor]],
              steps: int, independent: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The figures, from the workers' timings and final parameters."""
    one = statistics.median(single["step_ms"])
    # Two unconnected 1-process runs at once: all the work of both, no exchange. Their
    # step time over one_proc_ms is what sharing the machine costs; a 2-rank job doing
    # half the work each could at best be 2 * one / that fast here.
    indep = max(statistics.median(r["step_ms"]) for r in independent) if independent else None
    # a repeat of the 2-rank job lasts as long as its slower rank
    two = statistics.median(max(rep) for rep in zip(*(r["step_ms"] for r in ranks),
                                                     strict=True))
    replicas_identical = all(
        all(torch.equal(a, b) for a, b in zip(rank_params[0], other, strict=True))
        for other in rank_params[1:])
    diff = max(float((a - s).abs().max()) for params in rank_params
               for a, s in zip(params, single_params, strict=True))
    tol = tolerance(single["ns_dtype"], single["shapes"], steps)
    state = state_figures(single, ranks)
    return {
        "one_proc_ms": round(one, 3),
        "two_proc_ms_per_rank": round(two, 3),
        "speedup": round(one / two, 4),
        "all_gather_ms": round(max(statistics.median(r["all_gather_ms"]) for r in ranks), 3),
        "in_step_all_gather_ms": None if ranks[0]["in_step_all_gather_ms"] is None else round(
            max(statistics.median(r["in_step_all_gather_ms"]) for r in ranks), 3),
        "rank_ms": [round(statistics.median(r["step_ms"]), 3) for r in ranks],
        "two_independent_ms": None if indep is None else round(indep, 3),
        "speedup_bound": None if indep is None else round(2 * one / indep, 4),
        "replicas_identical": replicas_identical,
        "max_abs_diff_vs_single": diff,
        "matches_single": diff <= tol,
        "tolerance": tol,
        "state_bytes_per_rank": state["state_bytes_per_rank"],
        "state_bytes_one_process": state["state_bytes_one_process"],
        "state_bytes_ratio": state["state_bytes_ratio"],
        "device": single["device"],
        "backend": ranks[0]["backend"],
        "world_size": len(ranks),
        "threads_per_rank": single["threads"],
        "ns_dtype": single["ns_dtype"],
        "ns_choices": single.get("ns_choices", []),
        "matrices": single["matrices"],
        "params": single["params"],
        "d_model": single["d_model"],
        "n_layer": single["n_layer"],
        "steps": steps,
        "repeats": len(single["step_ms"]),
    }


def bench_muon_dist(quick: bool = False, progress: Console | None = None,
                    ns_dtype: str = AUTO) -> dict[str, Any]:
    say: Callable[..., None] = progress.print if progress else (lambda *a, **k: None)
    if ns_dtype != AUTO and ns_dtype not in NS_DTYPES:
        raise ValueError(f"ns_dtype must be {AUTO!r} or one of {', '.join(NS_DTYPES)}")
    device = "cuda" if torch.cuda.device_count() >= WORLD else "cpu"
    if device == "cuda":
        warmup, reps = (5, 20) if quick else (10, 50)
    else:
        warmup, reps = (1, 5) if quick else (2, 10)
    worlds = [n for n in STATE_WORLDS if n != WORLD and (n <= 3 or not quick)]
    if device == "cuda":  # one GPU per rank
        worlds = [n for n in worlds if n <= torch.cuda.device_count()]
    timeout = 100.0 if quick else 240.0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ifname = _loopback_ifname()
    if ifname:
        env["GLOO_SOCKET_IFNAME"] = ifname
    root = str(Path(__file__).resolve().parents[2])  # importable even when not installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)

    def torchrun(n: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(n), "--module", MODULE]

    # the machine may be shared: other load skews both arms, so the figures carry it
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="wb-muon-dist-") as tmp:
        out = Path(tmp)
        base = ["--worker", "--out", str(out), "--device", device,
                "--deadline", str(timeout - 10), "--ns-dtype", ns_dtype,
                *(["--quick"] if quick else [])]
        worker = [*base, "--warmup", str(warmup), "--reps", str(reps)]
        cfg = shapes_config(torch.device(device), quick)
        say(f"muon-dist bench on {device}: the Muon matrices of GPT(d_model={cfg.d_model}, "
            f"n_layer={cfg.n_layer}), {warmup} warm-up + {reps} timed steps, "
            f"1 thread per process, NS dtype {ns_dtype}")
        say("  1 process (distributed off) ...")
        run_bounded([[sys.executable, "-m", MODULE, *worker]], env, timeout)
        single = json.loads((out / "single.json").read_text())
        choices = out / "ns_choices.json"  # auto's choices, adopted by every other arm
        choices.write_text(json.dumps(single["ns_choices"]))
        worker += ["--ns-choices", str(choices)]
        say(f"  {WORLD} unconnected 1-process runs at once (what sharing the machine costs) ...")
        run_bounded([[sys.executable, "-m", MODULE, *worker, "--tag", f"indep{i}"]
                     for i in range(WORLD)], env, timeout)
        say(f"  {WORLD} processes (torchrun --standalone, "
            f"{'nccl' if device == 'cuda' else 'gloo'}) ...")
        run_bounded([[*torchrun(WORLD), *worker]], env, timeout)
        for n in worlds:
            say(f"  {n} processes, one untimed step (optimizer state per rank) ...")
            run_bounded([[*torchrun(n), *base, "--warmup", "1", "--reps", "0",
                          "--ns-choices", str(choices), "--tag", f"w{n}"]], env, timeout)
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
        independent = [json.loads((out / f"indep{i}.json").read_text()) for i in range(WORLD)]
        by_world = {n: [json.loads((out / f"w{n}-rank{r}.json").read_text()) for r in range(n)]
                    for n in worlds}
        single_params = torch.load(out / "single.pt")
        rank_params = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    result = summarize(single, ranks, single_params, rank_params, warmup + reps, independent)
    result["ns_dtype_rule"] = (
        "auto: timed once per shape by the 1-process arm, adopted by every arm"
        if ns_dtype == AUTO else f"fixed: {ns_dtype}")
    result["state_by_world"] = [state_figures(single, ranks)] + [
        state_figures(single, by_world[n]) for n in worlds]
    result["quick"] = quick
    result["load_avg_before"] = load
    say(f"  1 process {result['one_proc_ms']:.1f} ms/step, {WORLD} processes "
        f"{result['two_proc_ms_per_rank']:.1f} ms/step per rank: x{result['speedup']:.2f}")
    for row in result["state_by_world"]:
        say(f"  optimizer state at {row['world_size']} ranks: largest rank "
            f"{max(row['state_bytes_per_rank']):,} B of {row['state_bytes_one_process']:,} B "
            f"in one process (x{row['state_bytes_ratio']}, ideal x{row['ideal_ratio']})")
    return result


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"]:
        sys.exit(f"usage: python -m {MODULE} --worker ... (started by `wb bench muon-dist`)")
    _worker(sys.argv[2:])

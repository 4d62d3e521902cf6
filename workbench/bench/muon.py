"""`wb bench muon`: optimizer-step time of our Muon vs torch.optim.Muon vs AdamW.

The matrices are the Muon-routed hidden matrices (q/k/v/o, gate/up/down per block;
``workbench.optim.route``) of a real ``GPT(GPTConfig(...))``:

- CUDA, full: d_model 768, 12 layers (GPT-2 small widths), 84 matrices;
- CUDA --quick and CPU full: d_model 384, 6 layers, 42 matrices;
- CPU --quick: d_model 384, 1 layer, 7 matrices (one block: every shape of the
  6-layer model, once). torch.optim.Muon runs NS in bf16, and a CPU without native
  bf16 matmuls does one 42-matrix torch step in about 50 s, so the full set does
  not fit the 2-minute budget. Every figure of a run uses the same matrix set.

Every optimizer gets its own copy of the same weights and the same (seeded, random)
gradients. Timed: ``opt.step()`` alone (no forward/backward, no zero_grad), after
warm-up steps (momentum / moment buffers allocated, kernels warm, and ``auto``'s
one-time dtype decision made), median over the repeats; ``torch.cuda.synchronize()``
before and after each timed step on CUDA.

torch.optim.Muon always runs Newton-Schulz in bf16 (``_zeropower_via_newtonschulz``
casts with ``grad.bfloat16()``, no option), so the like-for-like comparison is bf16
against bf16; our fp32 NS has no torch counterpart and is reported against torch's bf16.

Figures (ms per ``opt.step()`` unless said otherwise):

- ``ours_ms``: ``workbench.optim.Muon`` with ``ns_dtype="auto"``, as the pretrain recipe
  runs it: per shape, the NS dtype a one-time timing found faster on this machine.
  ``ns_dtype``: what auto chose (``float32``, ``bfloat16`` or ``mixed``);
  ``ns_choice``: per shape the choice and the timings that made it (ms of one NS of
  one matrix per dtype, ``Muon.ns_choice_records``).
- ``auto_decision_ms``: what that one-time decision cost for this matrix set, from a
  cold per-process cache (paid once per process, not per step; not in ``ours_ms``).
- ``ours_bf16_ms`` / ``ours_fp32_ms``: ours with NS fixed to bf16 / fp32. When auto chose
  one dtype for every shape, that figure is ``ours_ms`` (measured once, reported twice).
- ``torch_muon_ms``: ``torch.optim.Muon`` (NS always bf16), same lr / wd /
  ``adjust_lr_fn="match_rms_adamw"``.
- ``adamw_ms``: ``torch.optim.AdamW`` (default foreach implementation) on the same
  matrices, for scale.
- ``ratio_vs_torch`` = ours_ms / torch_muon_ms (target <= 1): ours as the recipe runs
  it (auto) against torch as it runs: what a user of each gets on this machine.
- ``ratio_bf16_vs_torch`` = ours_bf16_ms / torch_muon_ms: the same arithmetic (bf16
  NS), so it isolates the implementation (batched per-shape NS vs one matrix at a time).
- ``ratio_fp32_vs_torch`` = ours_fp32_ms / torch_muon_ms: our fp32 NS against torch's
  bf16 (different arithmetic; fp32 is at least as accurate).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console

from workbench.models.gpt import GPT, GPTConfig
from workbench.optim import Muon, route
from workbench.optim.muon import AUTO, NS_DTYPES, clear_ns_dtype_cache

LR, WD = 3e-3, 0.1


def shapes_config(device: torch.device, quick: bool, tiny: bool = False) -> GPTConfig:
    """The GPT whose hidden matrices are benchmarked (module docstring)."""
    if tiny:  # tests only: a few small matrices
        return GPTConfig(d_model=64, n_layer=1, n_head=4, seq_len=16)
    if device.type == "cuda" and not quick:
        return GPTConfig(d_model=768, n_layer=12, n_head=12, seq_len=64)
    n_layer = 1 if device.type == "cpu" and quick else 6
    return GPTConfig(d_model=384, n_layer=n_layer, n_head=6, seq_len=64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
               weights: list[torch.Tensor], grads: list[torch.Tensor], device: torch.device,
               warmup: int, repeats: int) -> float:
    """Median ms of `repeats` opt.step() calls (after `warmup`) on fresh copies."""
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt = make(params)
    for _ in range(warmup):
        opt.step()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        opt.step()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def decide_auto(weights: list[torch.Tensor]) -> tuple[list[dict[str, Any]], float]:
    """``ns_dtype="auto"``'s per-shape decisions for these matrices and their one-time
    cost in ms, from a cold cache (later Muon instances in this process reuse them)."""
    clear_ns_dtype_cache()
    t0 = time.perf_counter()
    choices = Muon(weights, lr=LR, weight_decay=WD, ns_dtype=AUTO).resolve_ns_dtypes()
    return choices, (time.perf_counter() - t0) * 1e3


def bench_muon(quick: bool = False, progress: Console | None = None,
               tiny: bool = False) -> dict[str, Any]:
    from workbench.recipes.common.parallel import pick_device

    say = progress.print if progress else (lambda *a, **k: None)
    device = pick_device()
    cuda = device.type == "cuda"
    cfg = shapes_config(device, quick, tiny)
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    weights = [p.detach() for _, p in route(model).muon]
    gen = torch.Generator(device=device).manual_seed(1)
    grads = [torch.randn(w.shape, device=device, generator=gen) * 0.01 for w in weights]
    params = sum(w.numel() for w in weights)

    # (warm-up, timed) steps; "slow" is bf16 NS, emulated and slow on a CPU without it
    if cuda:
        fast = slow = (5, 10) if quick else (10, 30)
    elif tiny:
        fast = slow = (1, 2)
    elif quick:
        fast, slow = (1, 3), (1, 2)
    else:
        fast, slow = (2, 7), (1, 3)

    say(f"muon bench on {device}: {len(weights)} matrices, {params:,} params from "
        f"GPT(d_model={cfg.d_model}, n_layer={cfg.n_layer})")
    choices, decision_ms = decide_auto(weights)
    dtypes = {c["dtype"] for c in choices}
    auto = dtypes.pop() if len(dtypes) == 1 else "mixed"
    for c in choices:
        say(f"  auto: {'x'.join(map(str, c['shape']))} -> {c['dtype']} (one NS: "
            + ", ".join(f"{k} {v} ms" for k, v in c["ms"].items()) + ")")
    say(f"  auto decided in {decision_ms:.0f} ms")

    def measure(label: str, make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                reps: tuple[int, int]) -> float:
        say(f"  {label}: {reps[0]} warm-up + {reps[1]} timed steps ...")
        ms = time_steps(make, weights, grads, device, *reps)
        say(f"  {label}: {ms:.2f} ms/step")
        return ms

    def ours(ns_dtype: torch.dtype | str) -> Callable[[list[torch.Tensor]], Muon]:
        return lambda ps: Muon(ps, lr=LR, weight_decay=WD, ns_dtype=ns_dtype)

    ours_auto = measure(f"ours (auto: {auto} NS)", ours(AUTO),
                        fast if auto == "float32" else slow)
    adamw = measure("AdamW", lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD), fast)
    torch_muon = measure("torch.optim.Muon (bf16 NS)", lambda ps: torch.optim.Muon(
        ps, lr=LR, weight_decay=WD, adjust_lr_fn="match_rms_adamw"), slow)
    fixed = {name: ours_auto if auto == name else
             measure(f"ours ({name} NS)", ours(NS_DTYPES[name]),
                     fast if name == "float32" else slow)
             for name in ("bfloat16", "float32")}

    return {
        "ours_ms": round(ours_auto, 3),
        "torch_muon_ms": round(torch_muon, 3),
        "adamw_ms": round(adamw, 3),
        "ratio_vs_torch": round(ours_auto / torch_muon, 4),
        "ours_bf16_ms": round(fixed["bfloat16"], 3),
        "ratio_bf16_vs_torch": round(fixed["bfloat16"] / torch_muon, 4),
        "ours_fp32_ms": round(fixed["float32"], 3),
        "ratio_fp32_vs_torch": round(fixed["float32"] / torch_muon, 4),
        "auto_decision_ms": round(decision_ms, 1),
        "ns_dtype": auto,
        "ns_choice": choices,
        "device": str(device) if not cuda else torch.cuda.get_device_name(device),
        "matrices": len(weights),
        "params": params,
        "d_model": cfg.d_model,
        "n_layer": cfg.n_layer,
        "repeats": fast[1],
        "repeats_bf16": slow[1],
        "quick": quick,
    }

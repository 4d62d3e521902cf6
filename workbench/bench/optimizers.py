"""`wb bench optimizers`: Muon vs AdamW on the stdlib corpus, each at its best swept lr.

Every arm is trained in this process with the pieces the pretrain recipe trains with
(recipes/common/: ``build_model``, ``build_optimizers``, ``forward_backward``,
``apply_update``, ``lr_at``, ``evaluate``), so a step here is a step of ``wb launch``:

- Muon: the built-in ``muon-tiny`` spec (Muon on hidden matrices + AdamW on the rest at
  the same lr, Moonlight lr matching, ns_dtype auto); AdamW: the built-in ``adamw-tiny``.
- Same model config, seed (same initial weights), data stream (BatchLoader seed),
  batch, steps and lr schedule shape (the spec's warm-up + cosine) for every run.
- lr sweep, per arm: the half-decade ladder ``LADDER``, starting from 1e-3, 3e-3 and
  1e-2 (3 runs per arm). When an arm's best lr is at the edge of what it swept, the
  next lr on the ladder past that edge is tried too, up to ``extra`` times (2 in
  --quick and full mode, 0 in the tests' tiny mode); ``best_at_edge_<arm>`` says
  whether the best is still at an edge after that (then the optimum may lie outside).
  The best lr is the one with the lowest final val loss (the argmin of
  ``sweep_<arm>``). Both arms see the same ladder.
- Full mode: muon-tiny's model with 2 layers (d 128, seq 128, batch 16) for 300 steps,
  614k tokens per run, 6-10 runs (~10-15 min on 2 idle cores). --quick: 2 layers of
  d 64, seq 64, 200 steps (205k tokens per run, ~5 min).
- Validation loss on fixed eval batches (``eval_batches`` over the val split) at
  step 0 and at ``evals`` evenly spaced steps up to the end.

Figures:

- ``muon_tokens_to_adamw_loss_ratio``: the tokens Muon (at its best lr) had seen when
  its val loss first reached AdamW's best final val loss (linear interpolation between
  eval points), divided by AdamW's total tokens; null when Muon never reaches it.
  ``token_efficiency`` is its inverse.
- ``muon_flops_to_adamw_loss_ratio`` (compute-matched): the same, in FLOPs. Training
  FLOPs are the model's ``flops_per_token`` (6N over the matmul parameters + the
  12 L d T attention term) per token, for both arms; Muon adds, per optimizer step,
  the Newton-Schulz matmuls of every Muon matrix (``ns_flops``: each of the
  ``ns_steps`` iterations does X X^T, A A and P X on the wide orientation, 4 r^2 s +
  2 r^3 for an r x s matrix, r <= s). Elementwise work (momentum, AdamW's moments,
  NS's normalization and scalings) is left out for both arms: O(params) per step,
  under 0.1% here. ``compute_efficiency`` is its inverse; ``ns_flops_frac`` is NS's
  share of a Muon step's FLOPs.

What this is not: Moonlight's ~2x (Muon needs ~52% of AdamW's training FLOPs for the
same loss) comes from scaling-law fits over models of hundreds of millions to billions
of parameters, each arm with tuned hyper-parameters, and compute-optimal token
budgets. Here: one tiny byte-level model, a budget of a few hundred steps, a 3-5 point
lr grid per arm (other hyper-parameters as the specs set them), one seed, and
selection and report on the same val batches. Caveat: every run's schedule is sized
for the full budget, so Muon's curve at a fraction of it is not a run planned to stop
there (its lr has not decayed yet); that makes both ratios conservative (upper)
estimates of what Muon needs.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from rich.console import Console


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First token count at which the (tokens, loss) curve reaches `target`, by linear
    interpolation between consecutive points; None if it never does."""
    prev: tuple[int, float] | None = None
    for tokens, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(tokens)
            t0, l0 = prev
            return t0 + (l0 - target) / (l0 - loss) * (tokens - t0)
        prev = (tokens, loss)
    return None


LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
START = (1e-3, 3e-3, 1e-2)  # the first three lrs of every arm's sweep


def _spec(name: str, overrides: list[str]) -> Any:
    from workbench.spec import load_spec

    return load_spec(name, overrides).spec


def ns_flops_per_step(optimizers: list[Any]) -> int:
    """Newton-Schulz FLOPs of one step of our Muon optimizers among `optimizers` (every
    Muon matrix, its group's ``ns_steps``); 0 without Muon."""
    from workbench.kernels.newton_schulz import ns_flops
    from workbench.optim.muon import Muon

    total = 0
    for opt in optimizers:
        if isinstance(opt, Muon):
            for group in opt.param_groups:
                for p in group["params"]:
                    total += ns_flops(p.shape[-2], p.shape[-1], group["ns_steps"])
    return total


def best_lr(sweep: dict[float, float]) -> float:
    """The lr with the lowest final val loss (a non-finite loss never wins)."""
    finite = {lr: v for lr, v in sweep.items() if math.isfinite(v)}
    if not finite:
        raise RuntimeError(f"every lr diverged: {sweep}")
    return min(finite, key=lambda lr: finite[lr])


def next_lr(sweep: dict[float, float]) -> float | None:
    """The ladder's next lr past the edge where the best lr sits, or None when the best
    is inside what was swept (or the ladder ends there)."""
    lrs = sorted(sweep)
    best = best_lr(sweep)
    at = LADDER.index(best)
    if best == lrs[0] and at > 0:
        return LADDER[at - 1]
    if best == lrs[-1] and at + 1 < len(LADDER):
        return LADDER[at + 1]
    return None


def efficiency(muon_curve: list[tuple[int, float]], target: float, tokens: int,
               per_step: int, flops_per_token: int, ns_per_step: int) -> dict[str, Any]:
    """Muon's tokens and FLOPs to reach `target` (AdamW's best final val loss, after
    `tokens` tokens) as fractions of AdamW's, and their inverses; None where Muon's
    curve never reaches it. FLOPs: `flops_per_token` per token for both arms, plus
    `ns_per_step` per Muon optimizer step (`per_step` tokens a step; a fractional step
    at an interpolated crossing)."""
    reached = tokens_to_reach(muon_curve, target)
    if reached is None:
        return {"muon_tokens_to_adamw_loss": None, "muon_tokens_to_adamw_loss_ratio": None,
                "token_efficiency": None, "muon_flops_to_adamw_loss_ratio": None,
                "compute_efficiency": None}
    ratio = reached / tokens
    flops_ratio = (reached * flops_per_token + reached / per_step * ns_per_step) / (
        tokens * flops_per_token)
    return {"muon_tokens_to_adamw_loss": round(reached),
            "muon_tokens_to_adamw_loss_ratio": round(ratio, 4),
            "token_efficiency": round(1 / ratio, 3) if ratio > 0 else None,
            "muon_flops_to_adamw_loss_ratio": round(flops_ratio, 4),
            "compute_efficiency": round(1 / flops_ratio, 3) if flops_ratio > 0 else None}


def train_arm(spec: Any, corpus: Any, eval_steps: list[int], say: Any) -> dict[str, Any]:
    """Train one run; val loss at each step in eval_steps (0 = before training)."""
    from workbench.data.loader import BatchLoader, eval_batches
    from workbench.optim import build_optimizers
    from workbench.optim.muon import ns_dtype_summary
    from workbench.recipes.common.builders import build_model, ns_dtype
    from workbench.recipes.common.faults import Faults
    from workbench.recipes.common.parallel import pick_device
    from workbench.recipes.common.schedule import lr_at
    from workbench.recipes.common.seeding import seed_everything
    from workbench.recipes.common.step import apply_update, evaluate, forward_backward

    device = pick_device()
    seed_everything(spec.seed)
    model = build_model(spec, device)
    opts = build_optimizers(model, spec.optim.name, spec.optim.lr, spec.optim.weight_decay,
                            betas=spec.optim.betas, adjust_lr_fn=spec.optim.adjust_lr_fn,
                            ns_dtype=ns_dtype(spec.optim.ns_dtype))
    batch, seq = spec.train.batch_size, spec.model.seq_len
    loader = BatchLoader(corpus.train, batch, seq, seed=spec.seed)
    val_tokens = corpus.val if len(corpus.val) > seq else corpus.train
    val = eval_batches(val_tokens, batch, seq, spec.train.eval_batches)
    faults = Faults()
    curve: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    if 0 in eval_steps:
        curve.append((0, evaluate(model, val, device)))
    for step in range(1, spec.train.steps + 1):
        out = forward_backward(model, opts, loader, spec, step, device, faults)
        apply_update(model, opts, spec, lr_at(spec, step), out.max_logits)
        if step in eval_steps:
            loss = evaluate(model, val, device)
            curve.append((step * batch * seq, loss))
            say(f"  {spec.optim.name} lr {spec.optim.lr:g} step {step}/{spec.train.steps}: "
                f"train loss {out.loss:.4f}, val loss {loss:.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return {"curve": curve, "final": curve[-1][1], "seconds": time.perf_counter() - t0,
            "ns_dtype": ns_dtype_summary(opts), "ns_flops_per_step": ns_flops_per_step(opts),
            "flops_per_token": model.flops_per_token()}


def sweep_arm(name: str, sizes: list[str], corpus: Any, eval_steps: list[int], extra: int,
              say: Any) -> dict[float, dict[str, Any]]:
    """Runs of spec `name` at START's lrs, then up to `extra` more past the edge where
    the best one sits. {lr: train_arm's result}."""
    runs: dict[float, dict[str, Any]] = {}
    todo: list[float] = list(START)
    while todo:
        lr = todo.pop(0)
        say(f"{name}: lr {lr:g} ...")
        runs[lr] = train_arm(_spec(name, [*sizes, f"optim.lr={lr}"]), corpus, eval_steps, say)
        if not todo and extra > 0:
            nxt = next_lr({k: v["final"] for k, v in runs.items()})
            if nxt is not None:
                todo.append(nxt)
                extra -= 1
    return runs


def bench_optimizers(quick: bool = False, progress: Console | None = None,
                     tiny: bool = False) -> dict[str, Any]:
    from workbench.data.corpus import default_cache_dir, open_corpus

    say = progress.print if progress else (lambda *a, **k: None)
    if tiny:  # tests only
        sizes = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
                 "train.batch_size=4", "train.steps=6", "optim.warmup_steps=1",
                 "train.eval_batches=2", "data.max_bytes=200000"]
        evals, extra = 3, 0
    elif quick:
        sizes = ["model.n_layer=2", "model.d_model=64", "model.n_head=2", "model.seq_len=64",
                 "train.steps=200"]
        evals, extra = 10, 2
    else:
        sizes = ["model.n_layer=2", "train.steps=300"]  # muon-tiny's width, 2 layers
        evals, extra = 10, 2
    muon_spec = _spec("muon-tiny", sizes)
    adamw_spec = _spec("adamw-tiny", sizes)
    for a, b in ((muon_spec.model, adamw_spec.model), (muon_spec.train, adamw_spec.train),
                 (muon_spec.data, adamw_spec.data)):
        if a != b:
            raise RuntimeError("muon-tiny and adamw-tiny differ outside [optim]; the "
                               "comparison would not be like for like")
    steps = muon_spec.train.steps
    eval_steps = sorted({0, *(round(steps * i / evals) for i in range(1, evals + 1))})

    d = muon_spec.data
    say(f"optimizers bench: corpus (stdlib, max_bytes={d.max_bytes}) ...")
    corpus = open_corpus(d.path, default_cache_dir(), val_permille=d.val_permille,
                         max_bytes=d.max_bytes)
    m = muon_spec.model
    per_step = muon_spec.train.batch_size * m.seq_len
    tokens = steps * per_step
    say(f"  {len(corpus.train):,} train / {len(corpus.val):,} val tokens; GPT(n_layer="
        f"{m.n_layer}, d_model={m.d_model}, seq_len={m.seq_len}), {steps} steps, "
        f"{tokens:,} tokens per run, lrs {', '.join(f'{lr:g}' for lr in START)} per arm "
        f"(+{extra} past an edge) on {'cuda' if torch.cuda.is_available() else 'cpu'}")

    sweeps = {name: sweep_arm(name, sizes, corpus, eval_steps, extra, say)
              for name in ("muon-tiny", "adamw-tiny")}
    muon_runs, adamw_runs = sweeps["muon-tiny"], sweeps["adamw-tiny"]
    finals = {arm: {lr: r["final"] for lr, r in runs.items()}
              for arm, runs in (("muon", muon_runs), ("adamw", adamw_runs))}
    best = {arm: best_lr(f) for arm, f in finals.items()}
    muon, adamw = muon_runs[best["muon"]], adamw_runs[best["adamw"]]

    target = adamw["final"]
    fpt = muon["flops_per_token"]
    ns_step = muon["ns_flops_per_step"]
    eff = efficiency(muon["curve"], target, tokens, per_step, fpt, ns_step)
    if eff["muon_tokens_to_adamw_loss"] is None:
        say("Muon never reached AdamW's best final val loss: the ratios are null")

    def curve(run: dict[str, Any]) -> list[list[float]]:
        return [[t, round(v, 4)] for t, v in run["curve"]]

    def at_edge(arm: str) -> bool:
        return best[arm] in (min(finals[arm]), max(finals[arm]))

    return {
        "muon_val_loss": round(muon["final"], 4),
        "adamw_val_loss": round(target, 4),
        **eff,
        "best_lr_muon": best["muon"],
        "best_lr_adamw": best["adamw"],
        "best_at_edge_muon": at_edge("muon"),
        "best_at_edge_adamw": at_edge("adamw"),
        "sweep_muon": [[lr, round(v, 4)] for lr, v in sorted(finals["muon"].items())],
        "sweep_adamw": [[lr, round(v, 4)] for lr, v in sorted(finals["adamw"].items())],
        "flops_per_token": fpt,
        "ns_flops_per_step": ns_step,
        "ns_flops_frac": round(ns_step / (ns_step + fpt * per_step), 5),
        "tokens": tokens,
        "steps": steps,
        "batch_size": muon_spec.train.batch_size,
        "n_layer": m.n_layer,
        "d_model": m.d_model,
        "seq_len": m.seq_len,
        "ns_dtype": muon["ns_dtype"],
        "muon_seconds": round(sum(r["seconds"] for r in muon_runs.values()), 1),
        "adamw_seconds": round(sum(r["seconds"] for r in adamw_runs.values()), 1),
        "muon_curve": curve(muon),
        "adamw_curve": curve(adamw),
        "quick": quick,
    }

"""`wb bench optimizers`: Muon vs AdamW on the stdlib corpus for a fixed token budget.

Both arms are trained in this process with the pretrain recipe's own pieces
(``build_model``, ``build_optimizers``, ``forward_backward``, ``apply_update``,
``lr_at``, ``evaluate``), so a step here is a step of ``wb launch``:

- Muon: the built-in ``muon-tiny`` spec (Muon on hidden matrices + AdamW on the rest,
  Moonlight lr matching, ns_dtype auto); AdamW: the built-in ``adamw-tiny`` spec.
  Each arm uses its own spec's lr (``lr_muon``, ``lr_adamw``; both specs say 3e-3,
  and under ``adjust_lr_fn = "match_rms_adamw"`` one lr is meant to suit both). No
  lr sweep: one lr each, in both modes.
- Same model config, seed (same initial weights), data stream (BatchLoader seed),
  batch, steps and lr schedule shape (the spec's warm-up + cosine) for both.
- Full mode: muon-tiny's model and batch (4 layers, d 128, seq 128, batch 16) for
  1000 steps (the spec's 200 is short for an optimizer comparison); 2.05M tokens.
  --quick: the same with 2 layers and 300 steps (614k tokens).
- Validation loss on fixed eval batches (``eval_batches`` over the val split) at
  step 0 and at ``evals`` evenly spaced steps up to the end.

``muon_tokens_to_adamw_loss_ratio``: the tokens Muon had seen when its val loss
first reached AdamW's final val loss (linear interpolation between eval points),
divided by AdamW's total tokens; null when Muon never reaches it. Caveat: both arms
run a schedule sized for the full budget, so Muon's curve at a fraction of the
budget is not a run that was planned to stop there (its lr has not decayed yet);
that makes the ratio a conservative (upper) estimate of the tokens Muon needs.
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


def _spec(name: str, overrides: list[str]) -> Any:
    from workbench.spec import load_spec

    return load_spec(name, overrides).spec


def train_arm(spec: Any, corpus: Any, eval_steps: list[int], say: Any) -> dict[str, Any]:
    """Train one arm; val loss at each step in eval_steps (0 = before training)."""
    from workbench.data.loader import BatchLoader, eval_batches
    from workbench.optim import build_optimizers
    from workbench.optim.muon import ns_dtype_summary
    from workbench.recipes import pretrain as pt

    device = pt.pick_device()
    pt.seed_everything(spec.seed)
    model = pt.build_model(spec, device)
    opts = build_optimizers(model, spec.optim.name, spec.optim.lr, spec.optim.weight_decay,
                            betas=spec.optim.betas, adjust_lr_fn=spec.optim.adjust_lr_fn,
                            ns_dtype=pt.ns_dtype(spec.optim.ns_dtype))
    batch, seq = spec.train.batch_size, spec.model.seq_len
    loader = BatchLoader(corpus.train, batch, seq, seed=spec.seed)
    val_tokens = corpus.val if len(corpus.val) > seq else corpus.train
    val = eval_batches(val_tokens, batch, seq, spec.train.eval_batches)
    faults = pt.Faults()
    curve: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    if 0 in eval_steps:
        curve.append((0, pt.evaluate(model, val, device)))
    for step in range(1, spec.train.steps + 1):
        out = pt.forward_backward(model, opts, loader, spec, step, device, faults)
        pt.apply_update(model, opts, spec, pt.lr_at(spec, step), out.max_logits)
        if step in eval_steps:
            loss = pt.evaluate(model, val, device)
            curve.append((step * batch * seq, loss))
            say(f"  {spec.optim.name} step {step}/{spec.train.steps}: train loss "
                f"{out.loss:.4f}, val loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)")
    return {"curve": curve, "final": curve[-1][1], "seconds": time.perf_counter() - t0,
            "ns_dtype": ns_dtype_summary(opts)}


def bench_optimizers(quick: bool = False, progress: Console | None = None,
                     tiny: bool = False) -> dict[str, Any]:
    from workbench.data.corpus import default_cache_dir, open_corpus

    say = progress.print if progress else (lambda *a, **k: None)
    if tiny:  # tests only
        sizes = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
                 "train.batch_size=4", "train.steps=6", "optim.warmup_steps=1",
                 "train.eval_batches=2", "data.max_bytes=200000"]
        evals = 3
    elif quick:
        sizes = ["model.n_layer=2", "train.steps=300"]
        evals = 12
    else:
        sizes = ["train.steps=1000"]  # muon-tiny's model, 5x its steps
        evals = 20
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
    tokens = steps * muon_spec.train.batch_size * m.seq_len
    say(f"  {len(corpus.train):,} train / {len(corpus.val):,} val tokens; GPT(n_layer="
        f"{m.n_layer}, d_model={m.d_model}, seq_len={m.seq_len}), {steps} steps, "
        f"{tokens:,} tokens per arm on {'cuda' if torch.cuda.is_available() else 'cpu'}")

    arms = {}
    for name, spec in (("muon", muon_spec), ("adamw", adamw_spec)):
        say(f"{name}: lr {spec.optim.lr:g}, {steps} steps ...")
        arms[name] = train_arm(spec, corpus, eval_steps, say)

    target = arms["adamw"]["final"]
    reached = tokens_to_reach(arms["muon"]["curve"], target) if math.isfinite(target) else None
    ratio = None if reached is None else round(reached / tokens, 4)
    if ratio is None:
        say("Muon never reached AdamW's final val loss: ratio is null")

    def curve(arm: str) -> list[list[float]]:
        return [[t, round(v, 4)] for t, v in arms[arm]["curve"]]

    return {
        "muon_val_loss": round(arms["muon"]["final"], 4),
        "adamw_val_loss": round(target, 4),
        "muon_tokens_to_adamw_loss_ratio": ratio,
        "tokens": tokens,
        "lr_muon": muon_spec.optim.lr,
        "lr_adamw": adamw_spec.optim.lr,
        "steps": steps,
        "batch_size": muon_spec.train.batch_size,
        "n_layer": m.n_layer,
        "d_model": m.d_model,
        "seq_len": m.seq_len,
        "ns_dtype": arms["muon"]["ns_dtype"],
        "muon_seconds": round(arms["muon"]["seconds"], 1),
        "adamw_seconds": round(arms["adamw"]["seconds"], 1),
        "muon_curve": curve("muon"),
        "adamw_curve": curve("adamw"),
        "quick": quick,
    }

"""Pretraining on the GPU: 30 steps of muon-small in bf16 with each attention backend.

Why: the kernels can pass their unit comparisons and still break training (a wrong
backward only shows as a loss that will not fall; a max logit read from the wrong
place only shows against the other backend). Two short runs of the real recipe, one
with flex_attention and one with our Triton kernel, from the same seed and data:

- the loss falls in each (mean of the last 5 steps at least 5% below the first 5);
- the max logits of step 1, where both hold the same weights, agree within bf16
  tolerance, the scalar and the layer x head matrix;
- the loss curves stay close (they drift apart by rounding only);
- MFU and tokens/s are reported (the recipe's own ``perf/mfu``), and which of the
  Triton and torch Newton-Schulz Muon chose per matrix shape (its one-time timing).

The runs go through `cpu.run_inline` into a temporary store; `compare_backends` is the
pass/fail logic, which tests/test_selftest.py drives on CPU with the sdpa and naive
backends of muon-tiny.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workbench.selftest import Context, Outcome, check
from workbench.selftest.compare import MAX_LOGIT, add, compare, loss_falls, values_close

if TYPE_CHECKING:
    from workbench.run_record import RunRecord

SPEC = "muon-small"
BACKENDS = ("flex", "triton")
STEPS = 30
FINAL_LOSS_REL = 0.1  # the two backends' last losses: bf16 drift over 30 steps, not a bug


def gpu_overrides(backend: str, quick: bool) -> list[str]:
    """muon-small cut to 30 steps, a max-logit matrix every step, no SVD or evaluation
    beyond the end, and a 4 MB slice of the default corpus (tokenized in a second)."""
    return [f"model.attn_backend={backend}", f"train.steps={STEPS}", "optim.warmup_steps=5",
            f"train.batch_size={8 if quick else 16}", f"train.eval_every={STEPS}",
            "train.eval_batches=2", "train.max_logit_every=1", "train.svd_every=0",
            "train.checkpoint_every=0", "data.max_bytes=4000000"]


@dataclass
class TrainSummary:
    """What a short pretraining run left in its store, for the comparison."""

    backend: str
    status: str
    losses: dict[int, float] = field(default_factory=dict)
    max_logits: dict[int, float] = field(default_factory=dict)
    first_heads: Any = None  # the layer x head max-logit matrix of the first step (numpy)
    mfu: float | None = None  # mean perf/mfu over the second half (compilation excluded)
    tokens_per_s: float | None = None  # the same for perf/tokens_per_s
    ns_choice: Any = None  # the run config's muon_ns_choice


def _late_mean(curve: dict[int, float]) -> float | None:
    steps = sorted(curve)
    late = [curve[s] for s in steps[len(steps) // 2:] if math.isfinite(curve[s])]
    return sum(late) / len(late) if late else None


def summarize(store: Any, row: RunRecord, backend: str) -> TrainSummary:
    from workbench.records import MatrixRecord

    scalars = store.scalars(row.id)

    def curve(key: str) -> dict[int, float]:
        return {s: v for _, s, k, v, _ in scalars if k == key}

    heads = [r for r in store.records(row.id, keys=["attn/max_logit_heads"])
             if isinstance(r, MatrixRecord)]
    return TrainSummary(backend, row.status, curve("train/loss"), curve("attn/max_logit"),
                        min(heads, key=lambda r: r.step or 0).array() if heads else None,
                        _late_mean(curve("perf/mfu")), _late_mean(curve("perf/tokens_per_s")),
                        row.config.get("muon_ns_choice"))


def compare_backends(a: TrainSummary, b: TrainSummary) -> Outcome:
    """Pass/fail of two runs that differ only in the attention backend (see module doc)."""
    import torch

    out = Outcome()
    for s in (a, b):
        out.require(s.status == "finished", f"{s.backend}: the run ended {s.status}")
        losses = [s.losses[k] for k in sorted(s.losses)]
        falls, first, last = loss_falls(losses)
        out.require(falls, f"{s.backend}: the loss did not fall ({first:.3f} -> {last:.3f})")
        out.figures.update({f"{s.backend}_loss_first5": first, f"{s.backend}_loss_last5": last})
        if s.mfu is not None:
            out.figures[f"{s.backend}_mfu"] = s.mfu
        if s.tokens_per_s is not None:
            out.figures[f"{s.backend}_tokens_per_s"] = s.tokens_per_s
    common = sorted(set(a.max_logits) & set(b.max_logits))
    if not out.require(bool(common), "no max logits logged"):
        return out
    step = common[0]
    ma, mb = a.max_logits[step], b.max_logits[step]
    out.figures["max_logit_step1_diff"] = abs(ma - mb)
    out.require(values_close(ma, mb, MAX_LOGIT.rel, MAX_LOGIT.abs or 0.0),
                f"step {step} max logit {a.backend} {ma:.4f} vs {b.backend} {mb:.4f}")
    if a.first_heads is not None and b.first_heads is not None:
        add(out, compare("max_logit_heads_step1", torch.as_tensor(a.first_heads.copy()),
                         torch.as_tensor(b.first_heads.copy()), MAX_LOGIT))
    last = common[-1]
    out.figures["max_logit_last_rel_diff"] = abs(a.max_logits[last] - b.max_logits[last]) / max(
        abs(b.max_logits[last]), 1e-12)
    la, lb = a.losses.get(max(a.losses, default=0)), b.losses.get(max(b.losses, default=0))
    if la is not None and lb is not None:
        rel = abs(la - lb) / max(abs(lb), 1e-12)
        out.figures["final_loss_rel_diff"] = rel
        out.require(rel <= FINAL_LOSS_REL, f"final losses {a.backend} {la:.3f} vs {b.backend} "
                                           f"{lb:.3f} differ by {rel:.1%}")
    return out


def ns_choices() -> list[dict[str, Any]]:
    """Muon's kernel-or-torch decisions so far in this process, per matrix shape (its
    cache of one-time timings; empty off CUDA)."""
    from workbench.optim import muon

    cache = getattr(muon, "_TRITON_NS_FASTER", {}) or {}
    out = []
    for key, faster in cache.items():
        shape = key[0] if isinstance(key, tuple) and key else key
        out.append({"shape": list(shape) if isinstance(shape, tuple) else str(shape),
                    "ns": "triton" if faster else "torch"})
    return out


def pretrain_pair(store: Any, source: str, overrides: dict[str, Sequence[str]],
                  ) -> tuple[Outcome, list[TrainSummary]]:
    """Run ``source`` once per backend (``overrides`` by backend name) and compare."""
    from workbench.selftest.cpu import run_inline

    summaries = []
    for backend, extra in overrides.items():
        row = run_inline(store, source, extra, name=f"selftest-{backend}")
        summaries.append(summarize(store, row, backend))
    a, b = summaries
    return compare_backends(a, b), summaries


@check("train/muon-small", needs=("cuda", "triton"),
       summary="30 bf16 steps of muon-small with flex and with the Triton kernel: loss "
               "falls, max logits agree, MFU")
def pretrain_check(ctx: Context) -> Outcome:
    from workbench.store import Store

    with Store(ctx.tmp / "store") as st:
        ctx.say("  muon-small with flex (compiles first), then with the Triton kernel")
        out, summaries = pretrain_pair(st, SPEC, {b: gpu_overrides(b, ctx.quick)
                                                  for b in BACKENDS})
    choices = ns_choices()
    out.detail.update({"ns_choice": choices, "muon_ns_choice": summaries[0].ns_choice,
                       "overrides": gpu_overrides("BACKEND", ctx.quick)})
    out.figures["ns_shapes_triton"] = float(sum(c["ns"] == "triton" for c in choices))
    out.figures["ns_shapes_torch"] = float(sum(c["ns"] == "torch" for c in choices))
    f = out.figures
    mfu = "/".join(f"{f[k]:.0%}" for k in ("flex_mfu", "triton_mfu") if k in f) or "n/a"
    out.headline = (f"loss {f.get('triton_loss_first5', math.nan):.2f} -> "
                    f"{f.get('triton_loss_last5', math.nan):.2f}; MFU flex/triton {mfu}; "
                    f"Muon NS triton on {int(f['ns_shapes_triton'])}/{len(choices)} shapes")
    return out

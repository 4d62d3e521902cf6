"""What "agrees" means in the selftest: tolerances, error measures, timing.

Why a module of its own: the GPU checks cannot run on the machines this project is
written on, but the rules that decide pass or fail can. Every GPU check produces
tensors on CUDA and hands them to these functions; tests/test_selftest.py runs the
same functions on CPU tensors (including a bf16 rounding of a correct answer, which
must pass, and a wrong answer, which must fail).

Errors are measured as
- ``rel``: the relative Frobenius error ``||got - want|| / ||want||`` (in fp64): the
  right measure for bf16, whose rounding is relative, and for results whose entries
  are small (an orthogonalized 4096 x 4096 matrix has entries near 1/64, so any
  absolute bound meant for O(1) numbers would pass garbage);
- ``max_abs``: the largest elementwise difference, bounded only where the scale of
  the entries is known (log-probs, logits, max logits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.selftest import Outcome

# One bf16 rounding is at most 2^-9 relative (8 significant bits); a result rounded
# once per element therefore has a relative Frobenius error near 2^-10 to 2^-9.
BF16_ROUNDING = 2.0**-9


@dataclass(frozen=True)
class Tolerance:
    rel: float  # bound on the relative Frobenius error
    abs: float | None = None  # bound on the largest elementwise difference, if any

    def describe(self) -> str:
        return f"rel {self.rel:.0e}" + (f", abs {self.abs:.0e}" if self.abs is not None else "")


# Calibrated on CPU (bf16 matmuls accumulate in fp32 there as on GPUs): two bf16
# Newton-Schulz chains that differ only in summation order (an fp64-exact Gram
# product rounded to bf16 vs torch's bf16 matmul) differ by rel 3e-3 to 6e-3 at
# 768 x 3072 and 1024 x 1024; each differs from fp32 NS by ~1e-2. A wrong tile or
# coefficient gives O(1).
NS = Tolerance(rel=3e-2)
# Attention in bf16 with fp32 accumulation: the output is rounded once (rel ~2^-9),
# the gradients are sums over T of rounded terms.
ATTN_OUT = Tolerance(rel=2e-2)
ATTN_GRAD = Tolerance(rel=5e-2)
# Max logits come from the same bf16 q, k with fp32 dot products: differences are
# summation order (~1e-6) unless one side pre-scales q in bf16 (2^-9).
MAX_LOGIT = Tolerance(rel=1e-2, abs=5e-2)
# token_logprobs vs the fp32 reference on the same bf16 inputs: fp32 accumulation
# order only. Log-probs at V = 151,936 are near -12, entropies near 12.
LOGPROBS = Tolerance(rel=1e-4, abs=2e-3)


@dataclass(frozen=True)
class Comparison:
    label: str
    rel: float
    max_abs: float
    tol: Tolerance
    shape_ok: bool = True

    @property
    def ok(self) -> bool:
        if not self.shape_ok or not (math.isfinite(self.rel) and math.isfinite(self.max_abs)):
            return False
        return self.rel <= self.tol.rel and (self.tol.abs is None or self.max_abs <= self.tol.abs)

    def message(self) -> str:
        if not self.shape_ok:
            return f"{self.label}: shapes differ"
        return (f"{self.label}: rel err {self.rel:.2e}, max abs {self.max_abs:.2e} "
                f"(allowed {self.tol.describe()})")

    def figures(self) -> dict[str, float]:
        return {f"{self.label}_rel_err": self.rel, f"{self.label}_max_abs_err": self.max_abs}


def compare(label: str, got: Any, want: Any, tol: Tolerance) -> Comparison:
    """Errors of tensor ``got`` against ``want`` (any devices, any float dtypes)."""
    if tuple(got.shape) != tuple(want.shape):
        return Comparison(label, math.inf, math.inf, tol, shape_ok=False)
    g = got.detach().double()
    w = want.detach().to(g.device).double()
    diff = g - w
    if diff.numel() == 0:
        return Comparison(label, 0.0, 0.0, tol)
    max_abs = float(diff.abs().max())
    scale = float(w.norm())
    rel = float(diff.norm()) / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    if not math.isfinite(float(g.sum())):  # inf - inf hides as nan above; say it plainly
        rel = max_abs = math.inf
    return Comparison(label, rel, max_abs, tol)


def add(outcome: Outcome, comparison: Comparison) -> bool:
    """Put a comparison's figures into ``outcome`` and its failure, if any."""
    outcome.figures.update(comparison.figures())
    return outcome.require(comparison.ok, comparison.message())


def values_close(a: float, b: float, rel: float, abs_: float) -> bool:
    """|a - b| <= abs_ + rel * |b| (one number against its twin)."""
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= abs_ + rel * abs(b)


def loss_falls(losses: Sequence[float], window: int = 5, min_drop: float = 0.05,
               ) -> tuple[bool, float, float]:
    """(the mean of the last ``window`` losses is at least ``min_drop`` (relative) below
    the mean of the first ``window``, first mean, last mean). Fewer than 2 windows of
    losses, or a non-finite loss, is not a fall."""
    if len(losses) < 2 * window or not all(math.isfinite(x) for x in losses):
        return False, math.nan, math.nan
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    return last <= first * (1 - min_drop), first, last


def curves_agree(a: Mapping[int, float], b: Mapping[int, float], first_rel: float,
                 curve_rel: float) -> tuple[list[str], dict[str, float]]:
    """Two loss curves of the same run (1 rank vs N ranks; two attention backends):
    (failures, figures). The first step, where both hold the same weights, must agree
    to ``first_rel``; every step to ``curve_rel`` (they drift apart by rounding)."""
    failures: list[str] = []
    steps = sorted(set(a) & set(b))
    if not steps or set(a) != set(b):
        failures.append(f"the curves cover different steps ({len(a)} vs {len(b)} points)")
        if not steps:
            return failures, {}
    diffs = [abs(a[s] - b[s]) / max(abs(b[s]), 1e-12) for s in steps]
    first, worst = diffs[0], max(diffs)
    if not all(math.isfinite(a[s]) and math.isfinite(b[s]) for s in steps):
        failures.append("a loss is not finite")
    if not first <= first_rel:
        failures.append(f"step {steps[0]} loss differs by {first:.2e} (allowed {first_rel:.0e})")
    if not worst <= curve_rel:
        failures.append(f"the loss curves differ by up to {worst:.2e} (allowed {curve_rel:.0e})")
    return failures, {"first_step_rel_diff": first, "max_rel_diff": worst,
                      "steps": float(len(steps))}


def time_cuda(fn: Callable[[], Any], iters: int = 10, warmup: int = 3) -> float:
    """Median seconds of ``fn`` on the current CUDA stream, by CUDA events after warm-up."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def time_cpu(fn: Callable[[], Any], iters: int = 3) -> float:
    """Median wall seconds of ``fn`` (the CPU twin of ``time_cuda``, for tests)."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def speed(label: str, kernel_s: float, torch_s: float) -> dict[str, float]:
    """Times in ms and the kernel/torch ratio (< 1: the kernel is faster)."""
    return {f"{label}_ms": kernel_s * 1e3, f"{label}_torch_ms": torch_s * 1e3,
            f"{label}_kernel_over_torch": kernel_s / torch_s if torch_s > 0 else math.inf}

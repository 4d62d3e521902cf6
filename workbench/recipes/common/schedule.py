"""The learning-rate schedule: a pure function of the step, so a resume needs no state."""

from __future__ import annotations

import math

from workbench.recipes.common.trained_spec import TrainedSpec


def lr_at(spec: TrainedSpec, step: int) -> float:
    """Learning rate of (1-based) step: linear warm-up, then cosine or WSD to min_lr_ratio."""
    o, total = spec.optim, spec.train.steps
    if step <= o.warmup_steps:
        return o.lr * step / o.warmup_steps
    floor = o.min_lr_ratio
    if o.schedule == "cosine":
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    decay_steps = max(1, round(o.decay_frac * total))
    decay_start = max(o.warmup_steps, total - decay_steps)
    if step <= decay_start:
        return o.lr
    progress = (step - decay_start) / max(1, total - decay_start)
    return o.lr * (1 - (1 - floor) * min(1.0, progress))

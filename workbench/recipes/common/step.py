"""One training step (forward, backward, clip, update) and evaluation, for every kind
trained through recipes/common/trainer.py (pretrain, depth) and the benches that time it.

Model-agnostic: a GPT or a recurrent-depth model (`model_kwargs` draws the latter's
recurrence count), through the same `forward(x, y, track_max_logits=...)`. Test-only
faults come from recipes/common/faults.py, the precision from precision.py."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from workbench.data.loader import BatchLoader
from workbench.models.recurrent_depth import sample_recurrence
from workbench.optim import qk_clip
from workbench.recipes.common.faults import Faults
from workbench.recipes.common.precision import autocast
from workbench.recipes.common.trained_spec import TrainedSpec

if TYPE_CHECKING:
    from workbench.recipes.common.parallel import Parallel


@dataclass
class StepOut:
    loss: float
    grad_norm: float
    max_logits: torch.Tensor  # [n_layer, n_head] float32
    recurrence: float | None = None  # recurrent-depth: mean recurrence count drawn

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def model_kwargs(spec: TrainedSpec, step: int, micro: int) -> dict[str, Any]:
    """Extra forward arguments. A recurrent-depth model gets its recurrence count:
    Huginn's log-normal Poisson draw (`sample_recurrence`), seeded by (seed, step,
    micro-batch) so every rank runs the same count and a resumed run draws the same."""
    if spec.model.arch != "recurrent-depth":
        return {}
    g = torch.Generator().manual_seed((spec.seed * 1_000_003 + step) * 1024 + micro)
    no_grad, with_grad = sample_recurrence(spec.model.mean_recurrence,
                                           spec.model.backprop_depth, g)
    return {"steps": no_grad + with_grad}


def forward_backward(model: nn.Module, optimizers: list[torch.optim.Optimizer],
                     loader: BatchLoader, spec: TrainedSpec, step: int, device: torch.device,
                     faults: Faults, par: Parallel | None = None) -> StepOut:
    """Gradients of one step (grad_accum micro-batches), clipped. No update yet.

    `model` may be DDP-wrapped (`par` distributed): the loss and max logits returned
    are then the global ones, identical on every rank."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    accum = spec.train.grad_accum
    total = torch.zeros((), device=device)
    max_logits = None
    draws: list[int] = []
    for i in range(accum):
        data_step = loader.step // accum + 1  # the step that reads this batch in a plain run
        x, y = faults.batch(data_step, *next(loader), seed=spec.seed)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync = par.sync_grads(model, last=i == accum - 1) if par else contextlib.nullcontext()
        kwargs = model_kwargs(spec, step, i)
        draws += [kwargs["steps"]] if "steps" in kwargs else []
        with sync:
            with autocast(device):
                out = model(x, y, track_max_logits=True, **kwargs)
            loss = out.loss / accum
            if data_step in faults.nan:
                loss = loss * float("nan")
            loss.backward()
        total += loss.detach()
        m = out.max_logits
        max_logits = m if max_logits is None else torch.maximum(max_logits, m)
    if par is not None:
        total, max_logits = par.mean(total), par.max(max_logits)
    clip = spec.optim.grad_clip if spec.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    assert max_logits is not None
    return StepOut(float(total), float(grad_norm), max_logits.float(),
                   sum(draws) / len(draws) if draws else None)


def optimizer_step(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    """Step every optimizer at the scheduled `lr`, times a group's `lr_scale` if it has
    one (Muon's, when optim.muon_lr differs from optim.lr)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        opt.step()


def clip_heads(model: nn.Module, spec: TrainedSpec, max_logits: torch.Tensor):
    """QK-Clip after the step, for muonclip (the ClipResult), else None."""
    if spec.optim.name != "muonclip":
        return None
    return qk_clip(model.attn_layers(), max_logits, tau=spec.optim.tau)


def apply_update(model: nn.Module, optimizers: list[torch.optim.Optimizer], spec: TrainedSpec,
                 lr: float, max_logits: torch.Tensor):
    """Optimizer step at `lr`, then QK-Clip for muonclip. Returns the ClipResult or None."""
    optimizer_step(optimizers, lr)
    return clip_heads(model, spec, max_logits)


def drop_update(optimizers: list[torch.optim.Optimizer]) -> None:
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, par: Parallel | None = None) -> float:
    """Mean loss over fixed batches; with `par`, each rank holds its rows of the same
    global batches and the mean is all-reduced (equal to one process's figure)."""
    model.eval()
    losses = []
    for x, y in batches:
        with autocast(device):
            losses.append(model(x.to(device), y.to(device)).loss.float())
    model.train()
    mean = torch.stack(losses).mean()
    return float(par.mean(mean) if par is not None else mean)

"""Data parallelism for the trained recipes (pretrain, depth), through accelerate; in one
process, a pass-through.

`resources.procs > 1` starts the recipe in one process per rank under torch's elastic
launcher (launch/distributed.py). Each rank then:

- builds the same model from the same seed; accelerate wraps it in DDP (gloo on a
  CPU, NCCL on GPUs), which averages the gradients during backward;
- reads rows rank::world of every global batch (data/loader.py), so the averaged
  gradient is the global batch's gradient, as in one process;
- agrees with the others before every decision: the loss, the max logits and the
  stop flag are all-reduced, so spike handling, QK-Clip and stopping take the same
  branch on every rank and the replicas stay bit-identical (the grad norm already
  is: it is computed from the averaged gradients);
- leaves logging and checkpoint writing to rank 0.

Distributed Muon shards its momentum and Newton-Schulz work over the same ranks
(optim/muon.py); every rank takes its state for a checkpoint
(recipes/common/trainer.py `Trainer.save`).
bf16 autocast is the same in one process and in many (precision.autocast, called by
step.py), so both run the very same forward pass.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from workbench.recipes import Context


class Parallel:
    """This process's place in the data-parallel group, and the few collectives the
    trainer needs. With one process every method is a no-op or the identity."""

    def __init__(self) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.rank: int = self.accelerator.process_index
        self.world: int = self.accelerator.num_processes
        self.device = torch.device(self.accelerator.device.type,
                                   self.accelerator.device.index
                                   if self.accelerator.device.type == "cuda" else None)

    @property
    def main(self) -> bool:
        """Rank 0: logs, prints and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the model when distributed; the model itself otherwise."""
        return self.accelerator.prepare(model) if self.distributed else model

    def sync_grads(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Grad accumulation: all-reduce only on the last micro-batch of a step."""
        if self.distributed and not last:
            return model.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.detach().clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world
        return value

    def max(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.detach().clone()
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a stop seen by one stops all)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_in_parallel(spec: Any, ctx: Context, body: Any) -> None:
    """`body(spec, ctx, par)` with the spec's CPU threads and this process's Parallel
    (torch.distributed under torchrun, else a pass-through), closed afterwards."""
    if spec.train.cpu_threads:
        torch.set_num_threads(spec.train.cpu_threads)
    par = Parallel()
    try:
        body(spec, ctx, par)
    finally:
        par.close()

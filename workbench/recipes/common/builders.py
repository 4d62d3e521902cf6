"""The components of a trained kind, built from its `TrainedSpec` (torchtitan style:
config in, one component out): the model, the optimizers and the loss-spike detector.

Shared by `build_trainer` (recipes/common/trainer.py: pretrain and depth) and the benches
that time a training step the way the recipes run it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from workbench.models.config import GPTConfig
from workbench.models.gpt import GPT
from workbench.models.recurrent_depth import RecurrentDepthGPT
from workbench.optim import Muon, build_optimizers
from workbench.optim.muon import ns_dtype_summary
from workbench.recipes.common.trained_spec import TrainedSpec
from workbench.signals import BucketedSpikeDetector, SpikeDetector


def ns_dtype(choice: str) -> torch.dtype | str:
    """Muon's `ns_dtype` for the spec's `optim.ns_dtype`: a fixed dtype, or "auto", which
    Muon decides per matrix shape by timing fp32 against bf16 NS once on this device
    (whether bf16 is fast is a property of the hardware, not of "CPU" vs "CUDA")."""
    return choice if choice == "auto" else getattr(torch, choice)


def record_ns_dtype(optimizers: list[torch.optim.Optimizer], run_: Any,
                    say: Callable[..., None]) -> None:
    """Decide `ns_dtype = "auto"` now, before step 1 (one timing per matrix shape, or the
    restored checkpoint's decisions, so a resume repeats the arithmetic it started with),
    and record in the config which NS dtype runs (`ns_dtype`) and, per shape, the choice,
    the timings behind it and their source (`muon_ns_choice`). Every rank calls it: under
    several ranks it is a collective (rank 0 decides)."""
    choices = [c for opt in optimizers if isinstance(opt, Muon) for c in opt.resolve_ns_dtypes()]
    summary = ns_dtype_summary(optimizers)
    run_.update_config({"ns_dtype": summary if summary in (None, "mixed") else f"torch.{summary}",
                        "muon_ns_choice": choices or None})
    for c in choices:
        ms = ", ".join(f"{k} {v} ms" for k, v in c["ms"].items())
        say(f"Muon NS dtype (auto) {'x'.join(map(str, c['shape']))} on "
            f"{c['device']}: {c['dtype']} ({c['source']}{': ' + ms if ms else ''})", flush=True)


def build_model(spec: TrainedSpec, device: torch.device) -> GPT | RecurrentDepthGPT:
    """A new model, or the `hf:` checkpoint's (loaded on the CPU, then moved). A resumed
    run loads its own checkpoint over it afterwards (`build_trainer`)."""
    if (folder := spec.model.checkpoint) is not None:
        from workbench.models.hf import load_hf

        return load_hf(folder, seq_len=spec.model.seq_len,
                       attn_backend=spec.model.attn_backend).to(device)
    config = spec.model.build_config()
    if isinstance(config, GPTConfig):
        return GPT(config).to(device)
    return RecurrentDepthGPT(config).to(device)


def build_optimizer_list(spec: TrainedSpec, model: torch.nn.Module, device: torch.device,
                         distributed: bool) -> list[torch.optim.Optimizer]:
    """Muon (+ AdamW) or AdamW; Muon's groups carry `lr_scale` = muon_lr / lr."""
    optimizers = build_optimizers(model, spec.optim.name, spec.optim.lr,
                                  spec.optim.weight_decay, betas=spec.optim.betas,
                                  adjust_lr_fn=spec.optim.adjust_lr_fn,
                                  distributed=distributed,
                                  ns_dtype=ns_dtype(spec.optim.ns_dtype))
    for opt in optimizers:
        if isinstance(opt, Muon):
            for group in opt.param_groups:
                group["lr_scale"] = spec.muon_lr / spec.optim.lr
    return optimizers


def spike_detector(spec: TrainedSpec) -> SpikeDetector | BucketedSpikeDetector:
    """The loss-spike detector for this spec: per recurrence bucket for a recurrent-depth
    model (a short draw's loss is higher by design), else one rolling baseline."""
    config = spec.stability.spike_config()
    if spec.model.arch == "recurrent-depth":
        return BucketedSpikeDetector(config)
    return SpikeDetector(config)

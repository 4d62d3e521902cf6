"""What a `Trainer` checkpoint holds (pretrain and depth): safetensors weights, model.json,
and the optimizer, RNG, data position and spike-detector state an exact resume needs.

model.json is the model's architecture and config (recipes/common/model_record.py):
enough to rebuild the network without the spec (`wb export-model` reads it; checkpoints
from before it was written fall back to the run's spec).

Written by the shared checkpoint module (workbench/recipes/common/checkpoint.py, the RL
recipe's too): a temporary folder, fsynced, renamed into place, so a kill -9 during a
write never leaves a broken latest checkpoint; the newest `keep` are kept. In a
data-parallel run every replica holds the same weights, so rank 0 writes and every rank
reads. Distributed Muon shards its momentum over the ranks, but its state_dict() is the
full one (gathered on every rank), and load_state_dict() keeps each rank's shard: the
checkpoint is the same at any number of ranks and resumes at any other.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from workbench.data.loader import BatchLoader
from workbench.recipes.common.checkpoint import write_checkpoint
from workbench.recipes.common.model_record import MODEL_JSON, model_record
from workbench.recipes.common.schedule import lr_at
from workbench.recipes.common.trained_spec import TrainedSpec
from workbench.signals import SpikeDetector


@dataclass
class TrainState:
    """Everything besides weights and optimizers that a resume must restore."""

    step: int = 0
    rollbacks: int = 0


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                    loader: BatchLoader, detector: SpikeDetector, state: TrainState,
                    spec: TrainedSpec, keep: int,
                    optimizer_states: list[dict[str, Any]] | None = None) -> Path:
    """Write step-NNNNNNNN/ atomically and durably, keeping the newest `keep`
    (workbench/recipes/common/checkpoint.py).

    `optimizer_states`: the optimizers' state dicts when already taken; a data-parallel
    run takes them on every rank (distributed Muon's momentum is sharded, and its
    `state_dict()` gathers it: a collective), then rank 0 alone writes."""
    if optimizer_states is None:
        optimizer_states = [opt.state_dict() for opt in optimizers]

    def write(tmp: Path) -> None:
        save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
        (tmp / MODEL_JSON).write_text(json.dumps(model_record(model), indent=1) + "\n")
        torch.save({
            "step": state.step,
            "rollbacks": state.rollbacks,
            "optimizers": optimizer_states,
            "loader": loader.state_dict(),
            "detector": detector.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python": random.getstate(),
                "numpy": np.random.get_state(),
            },
            "schedule": {"step": state.step, "lr": lr_at(spec, max(1, state.step)),
                         "total_steps": spec.train.steps},
            "optimizer": spec.optim.name,
        }, tmp / "state.pt")

    return write_checkpoint(folder, state.step, write, keep)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                    loader: BatchLoader, detector: SpikeDetector) -> TrainState:
    device = next(model.parameters()).device
    load_model(model, str(path / "model.safetensors"), device=str(device))
    # On the CPU: load_state_dict moves tensors to the parameters' device, except AdamW's
    # step counters, which must stay on the CPU (else one sync per parameter per step).
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    for opt, sd in zip(optimizers, state["optimizers"], strict=True):
        hparams = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        opt.load_state_dict(sd)
        for group, fresh in zip(opt.param_groups, hparams, strict=True):
            group.update(fresh)  # this run's spec and device decide wd, betas, NS dtype
    loader.load_state_dict(state["loader"])
    detector.load_state_dict(state["detector"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return TrainState(step=int(state["step"]), rollbacks=int(state["rollbacks"]))

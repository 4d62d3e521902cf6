"""Recipe registry: each experiment kind names its spec model and its entry point.

Entries are "module:attr" strings imported on demand, so listing recipes or
validating a spec never imports torch.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.spec import SpecBase
    from workbench.tracking import Run


@dataclass(frozen=True)
class Recipe:
    kind: str
    spec: str  # "module:Class", a SpecBase subclass
    entry: str  # "module:function", called as entry(spec, ctx)
    summary: str
    key_metric: str = "train/loss"  # shown in run tables
    # With resources.procs > 1 the worker runs `entry` once per rank under torchrun
    # (launch/distributed.py). False: the recipe starts its own processes (script).
    per_rank: bool = False

    def spec_model(self) -> type[SpecBase]:
        return _load(self.spec)

    def entry_point(self) -> Callable[[SpecBase, Context], None]:
        return _load(self.entry)


@dataclass
class Context:
    """What a recipe gets from the worker besides its spec."""

    run: Run
    run_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    resume_dir: Path | None = None  # the folder of the run this one resumes

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def should_stop(self) -> bool:
        """True once `wb stop` (SIGTERM) arrived: checkpoint and return."""
        return self.stop.is_set()


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.kind] = recipe
    return recipe


def get(kind: str) -> Recipe:
    try:
        return RECIPES[kind]
    except KeyError:
        raise KeyError(f"no recipe for kind {kind!r}") from None


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


register(Recipe(
    kind="script",
    spec="workbench.recipes.script:ScriptSpec",
    entry="workbench.recipes.script:run",
    summary="any Python training script, logging through workbench.init()",
))

register(Recipe(
    kind="pretrain",
    spec="workbench.recipes.pretrain.spec:PretrainSpec",
    entry="workbench.recipes.pretrain.train:run",
    summary="Muon / MuonClip / AdamW GPT pretraining with per-head max logits and QK-Clip",
    key_metric="train/loss",
    per_rank=True,
))

register(Recipe(
    kind="rl",
    spec="workbench.recipes.rl.spec:RLSpec",
    entry="workbench.recipes.rl.trainer:run",
    summary="asynchronous GRPO (Magistral) with generators, verifiers and bounded staleness",
    key_metric="rl/reward",
))

register(Recipe(
    kind="depth",
    spec="workbench.recipes.depth.spec:DepthSpec",
    entry="workbench.recipes.depth.run:run",
    summary="recurrent-depth model on a chain task: accuracy vs recurrences, adaptive exit, "
            "KV sharing, self-speculative decoding",
    key_metric="eval/accuracy",
))

register(Recipe(
    kind="selftest",
    spec="workbench.selftest.recipe:SelftestSpec",
    entry="workbench.selftest.recipe:run",
    summary="acceptance checks of this machine (kernels, bf16 training, NCCL, vLLM, Huginn, "
            "NVML; CPU mode: interpreter, recipes, store); `wb selftest` runs them directly",
    key_metric="selftest/failed",
))

"""The recipe registry: each experiment kind names its spec model and its entry point.

Entries are "module:attr" strings imported on demand, so listing recipes or
validating a spec never imports torch. This module imports no other workbench
module: `spec.py` (which kind validates against which model), `render.py` (a
kind's key metric) and the launchers read it, while the recipes it names import
`spec.py`; the strings keep that one-way (tests/test_layout.py). A new kind is one
`register(Recipe(...))` call below. `workbench.recipes` re-exports these names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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

    def spec_model(self) -> type[Any]:
        """The spec model, a `workbench.spec.SpecBase` subclass (imported now)."""
        return _load(self.spec)

    def entry_point(self) -> Callable[[Any, Any], None]:
        """`entry(spec, ctx)`, ctx a `workbench.recipes.Context` (imported now)."""
        return _load(self.entry)


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

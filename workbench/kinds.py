"""The recipe registry: each experiment kind names its spec model, its entry point, and
how the readers show its runs.

Entries are "module:attr" strings imported on demand, so listing recipes or
validating a spec never imports torch. This module imports no other workbench
module: `spec.py` (which kind validates against which model), `render.py` (a
kind's key metric), `watch.py` (its stats line and chart), the run screen's
Overview and tabs, and the launchers read it, while the recipes it names import
`spec.py`; the strings keep that one-way (tests/test_layout.py). A new kind is one
`register(Recipe(...))` call below: nothing in the readers or the TUI names a kind.
`declared(kind)` answers for any kind, a custom SDK one included (`DEFAULT`).
`workbench.recipes` re-exports these names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """One kind: how to run it (`spec`, `entry`, `per_rank`) and how to show it.

    The display fields are plain metric names and tab ids, so that the readers
    (`render`, `watch`) and the TUI (`screens/tabs/`) decide nothing per kind
    themselves; each falls back to `key_metric` where left empty."""

    kind: str
    spec: str  # "module:Class", a SpecBase subclass
    entry: str  # "module:function", called as entry(spec, ctx)
    summary: str
    key_metric: str = "train/loss"  # the one number of run tables (wb ls, runs screen)
    # With resources.procs > 1 the worker runs `entry` once per rank under torchrun
    # (launch/distributed.py). False: the recipe starts its own processes (script).
    per_rank: bool = False
    # The kind's headline metrics, in order: `wb watch`'s stats line. () = (key_metric,).
    main_metrics: tuple[str, ...] = ()
    # The chart `wb watch` draws without --key. "" = key_metric.
    watch_key: str = ""
    # The Overview's main chart as (key, companion) pairs, in preference: the first
    # whose key has points, else the last. () = chosen from the run's own keys (a
    # script logs what it likes): key_metric when logged, else a common name.
    overview: tuple[tuple[str, str | None], ...] = ()
    # Run-screen tabs every run of the kind shows, by id (the tab's title in lower
    # case: "attention", "rollouts", "depth"). Other optional tabs still appear when a
    # run logs keys under their prefixes (`RunTab.PREFIXES`).
    tabs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Filled here, not by the readers, so every reader sees the same defaults.
        if not self.main_metrics:
            object.__setattr__(self, "main_metrics", (self.key_metric,))
        if not self.watch_key:
            object.__setattr__(self, "watch_key", self.key_metric)

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


# What a kind without a recipe shows (a run logged through the SDK names its own kind):
# its key metric is train/loss, its Overview picks from what it logs, and it has no tab
# of its own. It runs nothing: `spec` and `entry` are empty.
DEFAULT = Recipe(kind="", spec="", entry="", summary="a kind with no recipe (an SDK run)")


def declared(kind: str) -> Recipe:
    """The declaration the readers show `kind` by: its recipe, else `DEFAULT`. Never
    raises (a store may hold kinds this install does not know)."""
    return RECIPES.get(kind, DEFAULT)


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
    main_metrics=("train/loss", "val/loss", "train/lr", "train/grad_norm", "attn/max_logit",
                  "perf/tokens_per_s", "perf/mfu"),
    overview=(("train/loss", "val/loss"),),
    tabs=("attention",),
))

register(Recipe(
    kind="rl",
    spec="workbench.recipes.rl.spec:RLSpec",
    entry="workbench.recipes.rl.trainer:run",
    summary="asynchronous GRPO (Magistral) with generators, verifiers and bounded staleness",
    key_metric="rl/reward",
    main_metrics=("rl/reward", "rl/accuracy", "rollout/len_p99", "staleness/mean",
                  "rl/clip_frac", "perf/gen_tokens_per_s"),
    overview=(("rl/reward", "rl/accuracy"),),
    tabs=("rollouts",),
))

register(Recipe(
    kind="depth",
    spec="workbench.recipes.depth.spec:DepthSpec",
    entry="workbench.recipes.depth.run:run",
    summary="recurrent-depth model on a chain task: accuracy vs recurrences, adaptive exit, "
            "KV sharing, self-speculative decoding",
    key_metric="eval/accuracy",
    main_metrics=("depth/steps_mean", "eval/accuracy", "depth/spec_accept_rate",
                  "perf/tokens_per_s"),
    # A depth run trains first (its evaluation has the Depth tab); one logged through
    # the SDK without training shows its depth curve instead.
    overview=(("train/loss", "val/loss"), ("depth/steps_mean", "eval/accuracy")),
    tabs=("depth",),
))

register(Recipe(
    kind="selftest",
    spec="workbench.selftest.recipe:SelftestSpec",
    entry="workbench.selftest.recipe:run",
    summary="acceptance checks of this machine (kernels, bf16 training, NCCL, vLLM, Huginn, "
            "NVML; CPU mode: interpreter, recipes, store); `wb selftest` runs them directly",
    key_metric="selftest/failed",
))

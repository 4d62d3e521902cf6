"""`wb bench rl`: asynchronous vs synchronous RL, same model, tasks and trainer steps.

Two real runs of the `rl-async-tiny` spec (generators, verifiers and trainer as
processes), launched one after the other into a temporary store, identical but for:
- async: the spec's `rollout.max_staleness = k` (> 0) with in-flight weight updates;
- sync:  `rollout.max_staleness = 0` (generate, train, sync).
Each is timed from its `training` stage event to its `done` event: the policy's
warm start (shared by both, cached) and process start-up are outside the figure.
The speedup comes from two places: generation overlaps training, and continuous
batching keeps generator slots busy with the next groups while a long-tailed
rollout finishes, where sync waits for the batch's longest answer.

The warm start is cached under the default store's `cache/warmstart` (./runs or
$WB_STORE), so a second bench, or a bench after `wb launch rl-async-tiny`, skips it.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from workbench.bench.runs import run_to_end, say

QUICK_STEPS, FULL_STEPS = 24, 60
SPEC = "rl-async-tiny"


def _one(store: Any, overrides: list[str], progress: Console | None, label: str,
         timeout: float) -> dict[str, Any]:
    row = run_to_end(store, SPEC, overrides, progress, label, timeout)
    stages = {e["payload"].get("stage"): e["wall"] for e in store.events(row["id"], kind="stage")}
    seconds = stages["done"] - stages["training"]

    def series(key: str) -> list[float]:
        return [v for *_, v, _ in store.scalars(row["id"], key)]

    return {"seconds": seconds, "staleness_mean": statistics.fmean(series("staleness/mean")),
            "staleness_max": max(series("staleness/max")),
            "trainer_idle_frac": statistics.fmean(series("perf/trainer_idle_frac")),
            "generator_idle_frac": statistics.fmean(series("perf/generator_idle_frac")),
            "gen_tokens_per_s": statistics.fmean(series("perf/gen_tokens_per_s")),
            "len_p50": statistics.fmean(series("rollout/len_p50")),
            "len_max": max(series("rollout/len_max")), "run": row["id"]}


def bench_rl(quick: bool = False, progress: Console | None = None,
             overrides: list[str] | None = None, steps: int | None = None) -> dict[str, Any]:
    """`overrides` (--set style) apply to both runs: tests use them to shrink the policy."""
    from workbench.spec import load_spec
    from workbench.store import Store, resolve_root

    steps = steps or (QUICK_STEPS if quick else FULL_STEPS)
    extra = list(overrides or [])
    staleness = load_spec(SPEC, extra).spec.rollout.max_staleness  # type: ignore[attr-defined]
    if staleness < 1:
        raise ValueError(f"{SPEC} has rollout.max_staleness {staleness}; the async run needs >= 1")
    shared_cache = resolve_root(None) / "cache" / "warmstart"
    shared_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wb-bench-rl-") as tmp:
        root = Path(tmp) / "store"
        store = Store(root)
        (root / "cache").mkdir(exist_ok=True)
        (root / "cache" / "warmstart").symlink_to(shared_cache.resolve())
        base = [*extra, f"grpo.steps={steps}", "grpo.checkpoint_every=0"]
        say(progress, f"rl bench: {steps} trainer steps each; async (max_staleness "
                       f"{staleness}, in-flight) then sync (max_staleness 0)")
        timeout = 900.0
        a = _one(store, [*base, "rollout.inflight=true"], progress, "async", timeout)
        s = _one(store, [*base, "rollout.max_staleness=0"], progress, "sync", timeout)
        store.close()
    return {
        "async_s": a["seconds"], "sync_s": s["seconds"], "speedup": s["seconds"] / a["seconds"],
        "staleness_mean": a["staleness_mean"], "staleness_max": a["staleness_max"],
        "trainer_idle_frac_async": a["trainer_idle_frac"],
        "trainer_idle_frac_sync": s["trainer_idle_frac"],
        "generator_idle_frac_async": a["generator_idle_frac"],
        "generator_idle_frac_sync": s["generator_idle_frac"],
        "gen_tokens_per_s_async": a["gen_tokens_per_s"],
        "gen_tokens_per_s_sync": s["gen_tokens_per_s"],
        "len_p50": a["len_p50"], "len_max": max(a["len_max"], s["len_max"]),
        "trainer_steps": steps, "max_staleness": staleness, "quick": quick,
        "target_speedup": 1.5,
    }

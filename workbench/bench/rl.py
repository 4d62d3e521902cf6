"""`wb bench rl`: asynchronous vs synchronous RL, same model, tasks and trainer steps:
how much faster, and whether the faster run learns as much.

Two real runs of the `rl-async-tiny` spec (generators, verifiers and trainer as
processes), launched one after the other into a temporary store, identical but for:
- async: the spec's `rollout.max_staleness = k` (> 0) with in-flight weight updates;
- sync:  `rollout.max_staleness = 0` (generate, train, sync).
Each is timed from its `training` stage event: the policy's warm start (shared by
both, cached) and process start-up are outside every figure.

Speed (fixed steps):
- `async_s`, `sync_s`: wall time from `training` to `done`; `speedup` = sync_s / async_s.
  AReaL's 2.77x is at matched accuracy; this one is at matched trainer steps, and a
  staler run can learn less per step, hence the quality figures below.

Quality, per mode (`_async`, `_sync`), from the trainer's per-step scalars:
- `accuracy_final`, `reward_final`: `rl/accuracy` and `rl/reward` of the last step;
  `accuracy_last20`, `reward_last20`: their mean over the last `last_n` (20, or every
  step of a shorter run) steps. Each step's figure is over its batch's
  groups_per_step x group_size rollouts (64 here), scored by the verifier: the accuracy
  of the policy that *generated* the batch, which in the async run is up to
  max_staleness versions older than the one being trained.
- `time_to_target_s`: seconds from the `training` event to the wall time of the first
  step at which the mean `rl/accuracy` of the last `TARGET_WINDOW` (20) steps reaches
  `TARGET_ACCURACY` (0.28); `steps_to_target` is that step. Null when the run never
  gets there. The target is fixed, not taken from the runs being compared: the warm
  start's sampled accuracy is about 0.20 over the first 40 steps and the trailing
  mean levels off near 0.28-0.30 after about 60-70 steps (a 200-step bench of both
  modes crossed 0.28 at step 63 and peaked near 0.35). `speedup_to_target` = sync /
  async time to target (null unless both reach it).
- Both runs draw the same problem for the same group id (a pure function of the seed
  and the id), so their per-step curves (`accuracy_curve`) are paired: most of the
  step-to-step noise is which problems were drawn, and it is common to both.

Where the gain comes from:
- `slot_occupancy` (`perf/slot_occupancy`, mean over the steps that have it; null if
  none): the fraction of the generator's `rollout.slots` decoding, averaged over its
  decode steps weighted by their duration (idle time excluded). With max_staleness 0
  only one batch may be in flight, groups_per_step x group_size sequences
  (`sync_slot_bound`, 64 / 128 = 0.5 here), and fewer while its long tail finishes.
  The async run may admit up to max_staleness batches ahead, which fills the slots
  while the generator is the bottleneck; when the trainer is (async
  `trainer_idle_frac` near 0), the generator waits at the staleness bound decoding
  the admitted batches' tails, and its occupancy falls toward sync's.
- `generator_idle_frac`: time the generator had nothing to decode (sync: while the
  trainer trains); `trainer_idle_frac`: time the trainer waited for a batch. Falling
  idle fractions are the overlap of generation with training; a higher async
  occupancy is the fuller decode steps. The two together are the speedup's sources.

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

QUICK_STEPS, FULL_STEPS = 80, 200
SPEC = "rl-async-tiny"
LAST_N = 20  # accuracy_last20 / reward_last20 average this many final steps
TARGET_ACCURACY = 0.28
TARGET_WINDOW = 20  # steps in the trailing mean that must reach TARGET_ACCURACY
MODES = ("async", "sync")


def time_to_target(points: list[tuple[int, float, float]], start: float, target: float,
                   window: int) -> tuple[float, int] | None:
    """(seconds from `start`, step) at the first of the (step, value, wall) `points`
    (in step order) where the mean value of the last `window` points reaches `target`;
    None if it never does."""
    for i in range(window - 1, len(points)):
        if statistics.fmean(v for _, v, _ in points[i - window + 1:i + 1]) >= target:
            step, _, wall = points[i]
            return wall - start, step
    return None


def _one(store: Any, overrides: list[str], progress: Console | None, label: str,
         timeout: float, target: float, window: int) -> dict[str, Any]:
    row = run_to_end(store, SPEC, overrides, progress, label, timeout)
    stages = {e.payload.get("stage"): e.wall for e in store.events(row.id, kind="stage")}
    seconds = stages["done"] - stages["training"]

    def points(key: str) -> list[tuple[int, float, float]]:
        return sorted((step, v, wall) for _, step, _, v, wall in store.scalars(row.id, key))

    def series(key: str) -> list[float]:
        return [v for _, v, _ in points(key)]

    acc, reward = series("rl/accuracy"), series("rl/reward")
    last = min(LAST_N, len(acc))
    reached = time_to_target(points("rl/accuracy"), stages["training"], target, window)
    return {"seconds": seconds, "staleness_mean": statistics.fmean(series("staleness/mean")),
            "staleness_max": max(series("staleness/max")),
            "trainer_idle_frac": statistics.fmean(series("perf/trainer_idle_frac")),
            "generator_idle_frac": statistics.fmean(series("perf/generator_idle_frac")),
            "slot_occupancy": statistics.fmean(occ) if (occ := series("perf/slot_occupancy"))
            else None,
            "gen_tokens_per_s": statistics.fmean(series("perf/gen_tokens_per_s")),
            "accuracy_final": acc[-1], "accuracy_last20": statistics.fmean(acc[-last:]),
            "reward_final": reward[-1], "reward_last20": statistics.fmean(reward[-last:]),
            "time_to_target_s": None if reached is None else reached[0],
            "steps_to_target": None if reached is None else reached[1],
            "last_n": last, "accuracy_curve": [round(v, 4) for v in acc],
            "len_p50": statistics.fmean(series("rollout/len_p50")),
            "len_max": max(series("rollout/len_max")), "run": row.id}


def bench_rl(quick: bool = False, progress: Console | None = None,
             overrides: list[str] | None = None, steps: int | None = None,
             target_accuracy: float = TARGET_ACCURACY,
             window: int = TARGET_WINDOW, remote: str | None = None) -> dict[str, Any]:
    """`overrides` (--set style) apply to both runs: tests use them to shrink the policy,
    and `target_accuracy` / `window` to have a random one reach a target in 3 steps.
    `remote`: a configured host; then the two runs are both async, two generators
    each, both here against one here and one on that host (`bench_rl_remote`)."""
    if remote is not None:
        return bench_rl_remote(remote, quick, progress, overrides, steps)
    from workbench.spec import load_spec
    from workbench.store import Store, resolve_root

    steps = steps or (QUICK_STEPS if quick else FULL_STEPS)
    extra = list(overrides or [])
    spec = load_spec(SPEC, extra).spec
    staleness = spec.rollout.max_staleness  # type: ignore[attr-defined]
    if staleness < 1:
        raise ValueError(f"{SPEC} has rollout.max_staleness {staleness}; the async run needs >= 1")
    grpo, slots = spec.grpo, spec.rollout.slots  # type: ignore[attr-defined]
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
        runs = {
            "async": _one(store, [*base, "rollout.inflight=true"], progress, "async", timeout,
                          target_accuracy, window),
            "sync": _one(store, [*base, "rollout.max_staleness=0"], progress, "sync", timeout,
                         target_accuracy, window),
        }
        store.close()
    a, s = runs["async"], runs["sync"]
    per_mode = {f"{key}_{mode}": runs[mode][key] for key in (
        "accuracy_final", "accuracy_last20", "reward_final", "reward_last20",
        "time_to_target_s", "steps_to_target", "slot_occupancy", "trainer_idle_frac",
        "generator_idle_frac", "gen_tokens_per_s", "accuracy_curve") for mode in MODES}
    both = a["time_to_target_s"] is not None and s["time_to_target_s"] is not None
    return {
        "async_s": a["seconds"], "sync_s": s["seconds"], "speedup": s["seconds"] / a["seconds"],
        **per_mode,
        "speedup_to_target": (s["time_to_target_s"] / a["time_to_target_s"]
                              if both and a["time_to_target_s"] > 0 else None),
        "target_accuracy": target_accuracy, "target_window": window,
        "last_n": a["last_n"],
        "sync_slot_bound": min(1.0, grpo.groups_per_step * grpo.group_size / slots),
        "slots": slots,
        "staleness_mean": a["staleness_mean"], "staleness_max": a["staleness_max"],
        "len_p50": a["len_p50"], "len_max": max(a["len_max"], s["len_max"]),
        "trainer_steps": steps, "max_staleness": staleness, "quick": quick,
        "target_speedup": 1.5,
    }


def bench_rl_remote(host: str, quick: bool = False, progress: Console | None = None,
                    overrides: list[str] | None = None,
                    steps: int | None = None) -> dict[str, Any]:
    """rl-async-tiny with two generators, its slots split between them: both here, then
    one here and one on `host` (over ssh, rollouts over ZeroMQ, weights over gloo across
    the hosts). On one machine reached through ssh this measures the transport's
    overhead, not a speedup. Reports wall time, trainer idle fraction, weight broadcast
    time (`sync/seconds`) and accuracy for each placement."""
    from workbench.spec import load_spec
    from workbench.store import Store, resolve_root

    steps = steps or (QUICK_STEPS if quick else FULL_STEPS)
    extra = list(overrides or [])
    placed = f'rollout.hosts=[{{host = "{host}", generators = 1}}]'
    # both placements validated first: an unknown host is refused before any run
    load_spec(SPEC, [*extra, "rollout.generators=2", placed])
    slots = load_spec(SPEC, extra).spec.rollout.slots  # type: ignore[attr-defined]
    half = max(1, slots // 2)
    shared_cache = resolve_root(None) / "cache" / "warmstart"
    shared_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wb-bench-rl-") as tmp:
        root = Path(tmp) / "store"
        store = Store(root)
        (root / "cache").mkdir(exist_ok=True)
        (root / "cache" / "warmstart").symlink_to(shared_cache.resolve())
        base = [*extra, f"grpo.steps={steps}", "grpo.checkpoint_every=0",
                "rollout.generators=2", f"rollout.slots={half}"]
        say(progress, f"rl bench: {steps} trainer steps each, 2 generators x {half} slots; "
                       f"both here, then one here and one on {host}")
        timeout = 900.0
        runs = {
            "local": _one(store, base, progress, "local", timeout, TARGET_ACCURACY,
                          TARGET_WINDOW),
            "remote": _one(store, [*base, placed], progress, f"remote-{host}", timeout,
                           TARGET_ACCURACY, TARGET_WINDOW),
        }
        sync = {mode: _mean_of(store, runs[mode]["run"], "sync/seconds") for mode in runs}
        store.close()
    out: dict[str, Any] = {"host": host, "trainer_steps": steps, "slots_each": half,
                           "local_s": runs["local"]["seconds"],
                           "remote_s": runs["remote"]["seconds"],
                           "overhead": runs["remote"]["seconds"] / runs["local"]["seconds"]}
    for mode in runs:
        for key in ("trainer_idle_frac", "generator_idle_frac", "gen_tokens_per_s",
                    "accuracy_last20", "staleness_max"):
            out[f"{key}_{mode}"] = runs[mode][key]
        out[f"weight_sync_s_{mode}"] = sync[mode]
    return out


def _mean_of(store: Any, run_id: str, key: str) -> float | None:
    values = [v for _, _, _, v, _ in store.scalars(run_id, key)]
    return statistics.fmean(values) if values else None

"""Checks that run on any machine (the CPU mode CI runs, with kernels/interpreter in
selftest/kernels.py): one short run of each recipe through the recipe's own code, and
the store's write/read round trip.

Why these: they are what a fresh install on any host can get wrong before a GPU is
involved (a missing dependency, a broken recipe, a store that loses NaNs), and on a
machine without a GPU they are all the selftest can vouch for.

The recipe runs call each kind's entry point in this process (as tests/test_pretrain.py
does), into a temporary store, at tiny sizes: `run_inline`. The GPU pretraining check
(selftest/train.py) uses the same function at GPU sizes.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.selftest import Context, Outcome, check

if TYPE_CHECKING:
    from workbench.records import Record
    from workbench.run_record import RunRecord

# Tiny sizes: each run takes a few seconds on 2 CPU cores, and every code path of the
# kind (data, model, optimizer, logging, evaluation, roles) still runs.
RECIPES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # kind: (built-in spec, overrides, metrics the run must have logged)
    "pretrain": ("muon-tiny", (
        "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
        "train.steps=4", "train.batch_size=2", "train.eval_every=2", "train.eval_batches=1",
        "train.max_logit_every=2", "train.svd_every=2", "train.checkpoint_every=0",
        "optim.warmup_steps=1", "data.max_bytes=50000", "train.cpu_threads=1"),
        ("train/loss", "val/loss", "attn/max_logit")),
    "rl": ("rl-async-tiny", (
        "policy.init=random", "policy.n_layer=1", "policy.d_model=32", "policy.seq_len=64",
        "rollout.generators=1", "rollout.slots=4", "rollout.l_max=16", "rollout.l_cache=4",
        "grpo.steps=2", "grpo.group_size=2", "grpo.groups_per_step=1",
        "grpo.checkpoint_every=0", "verifier.procs=1"),
        ("rl/reward", "rl/accuracy")),
    "depth": ("depth-tiny", (
        "model.d_model=32", "model.n_head=2", "model.seq_len=48", "train.steps=4",
        "optim.warmup_steps=1", "train.batch_size=4", "train.eval_every=4",
        "train.eval_batches=1", "train.checkpoint_every=0", "train.cpu_threads=1",
        "task.max_ops=4", "eval.recurrences=[1, 2]", "eval.sequences=2",
        "eval.adaptive_sequences=1", "eval.draft_steps=1", "eval.verify_steps=2",
        "eval.decode_tokens=4"),
        ("train/loss", "eval/accuracy")),
    "script": ("charlm", ("config.steps=5", "config.eval_every=5", "config.corpus_mb=1"),
               ("train/loss", "val/loss")),
}


def run_inline(store: Any, source: str, overrides: Sequence[str] = (),
               name: str | None = None) -> RunRecord:
    """Run spec ``source`` (a built-in name or a file) with ``overrides`` through its
    kind's entry point in this process, into ``store``; returns the run's final row.

    A script kind's process attaches to the run through WB_RUN_ID / WB_STORE in its
    environment, as under the worker. Torch's thread count is restored afterwards (the
    RL trainer sets it to 1 for its process)."""
    import torch

    from workbench.recipes import Context as RecipeContext
    from workbench.recipes import get
    from workbench.spec import dump_toml, load_spec
    from workbench.tracking import Run

    spec = load_spec(source, list(overrides)).spec.for_launch()
    row = store.create_run(kind=spec.kind, name=name, base=None if name else spec.kind,
                           status="running", spec=dump_toml(spec), config=spec.run_config(),
                           total_steps=getattr(spec, "total_steps", None), pid=os.getpid(),
                           launcher="selftest")
    if spec.kind == "script":
        spec.script.env = {**spec.script.env, "WB_RUN_ID": row.id,
                           "WB_STORE": str(Path(store.root).resolve())}
    run = Run(store, row, owner=True)
    threads = torch.get_num_threads()
    try:
        get(spec.kind).entry_point()(spec, RecipeContext(run=run, run_dir=store.run_dir(row.id)))
    except BaseException:
        run.finish("failed", exit_code=1)
        raise
    finally:
        torch.set_num_threads(threads)
    run.finish("finished", exit_code=0)
    return store.get_run(row.id)


def log_tail(store: Any, run_id: str, chars: int = 600) -> str:
    path = store.run_dir(run_id) / "stdout.log"
    return path.read_text()[-chars:] if path.exists() else ""


def judge_recipe_run(row: RunRecord, keys: set[str], expected: Sequence[str],
                     ) -> list[str]:
    """Failures of a finished recipe run: its status, and the metrics it must log."""
    failures = []
    if row.status != "finished":
        failures.append(f"the run ended {row.status}")
    missing = [k for k in expected if k not in keys]
    if missing:
        failures.append(f"it logged no {', '.join(missing)}")
    return failures


def recipe_check(kind: str, ctx: Context) -> Outcome:
    from workbench.store import Store

    source, overrides, expected = RECIPES[kind]
    out = Outcome(detail={"spec": source, "overrides": list(overrides)})
    with Store(ctx.tmp / "store") as st:
        row = run_inline(st, source, overrides)
        scalars = st.scalars(row.id)
        keys = {k for _, _, k, _, _ in scalars}
        for failure in judge_recipe_run(row, keys, expected):
            out.require(False, failure)
        last = {k: v for _, _, k, v, _ in scalars}
        metric = expected[0]
        out.figures.update({"metrics": float(len(keys)), "points": float(len(scalars))})
        if metric in last and math.isfinite(last[metric]):
            out.figures[metric.replace("/", "_")] = last[metric]
        out.headline = (f"{source}: {len(scalars)} points, {metric} "
                        f"{last.get(metric, float('nan')):.3g}")
        if out.failures:
            out.detail["log_tail"] = log_tail(st, row.id)
    return out


@check("recipes/pretrain", summary="a few steps of muon-tiny, tiny sizes, via the recipe")
def pretrain_recipe(ctx: Context) -> Outcome:
    return recipe_check("pretrain", ctx)


@check("recipes/rl", summary="2 GRPO steps with a generator and a verifier, tiny policy")
def rl_recipe(ctx: Context) -> Outcome:
    return recipe_check("rl", ctx)


@check("recipes/depth", summary="a few steps of depth-tiny and its evaluation")
def depth_recipe(ctx: Context) -> Outcome:
    return recipe_check("depth", ctx)


@check("recipes/script", summary="charlm for 5 steps as a script run (SDK attach)")
def script_recipe(ctx: Context) -> Outcome:
    return recipe_check("script", ctx)


# -- the store -----------------------------------------------------------------------------


def write_sample(run: Any) -> dict[str, Any]:
    """Log one of every record kind, NaN and inf included; returns what was written."""
    values = [0.5, math.nan, math.inf, -math.inf, 1e-300, -2.5]
    for step, v in enumerate(values):
        run.log({"a/x": v, "b": float(step)}, step=step)
    run.log_dist("d/len", [1.0, 2.0, 3.0, 100.0], step=1)
    run.log_matrix("m/heads", [[1.0, 2.0], [3.0, math.nan]], step=2)
    run.event("note", step=3, severity="warning", text="héllo", n=3)
    return {"a/x": values, "b": [float(i) for i in range(len(values))]}


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def comparable(records: Sequence[Record]) -> list[tuple[Any, ...]]:
    """Records without store-specific ids, NaN made comparable."""
    out = []
    for r in records:
        items: list[tuple[str, str]] = [("type", r.type)]
        for f in fields(r):
            v = getattr(r, f.name)
            if f.name == "id":
                continue
            if isinstance(v, float) and math.isnan(v):
                v = "nan"
            items.append((f.name, repr(v)))
        out.append(tuple(items))
    return out


@check("store/roundtrip", summary="every record kind written through the SDK reads back "
                                  "exactly, and survives wb export | wb import")
def store_check(ctx: Context) -> Outcome:
    from workbench.export import export_run
    from workbench.io.jsonl_import import import_jsonl
    from workbench.store import Store
    from workbench.tracking import Run

    out = Outcome()
    with Store(ctx.tmp / "a") as st:
        row = st.create_run(kind="custom", name="roundtrip", status="running")
        run = Run(st, row, owner=True)
        written = write_sample(run)
        run.finish()
        for key, values in written.items():
            got = [v for _, _, _, v, _ in st.scalars(row.id, key)]
            out.require(len(got) == len(values) and all(
                same_float(a, b) for a, b in zip(got, values, strict=False)),
                f"scalars {key}: wrote {values}, read {got}")
        records = list(st.records(row.id))
        types = sorted({r.type for r in records})
        out.require(types == ["dist", "event", "matrix", "scalar"],
                    f"record kinds read back: {types}")
        events = st.events(row.id, kind="note")
        out.require(len(events) == 1 and events[0].payload == {"text": "héllo", "n": 3},
                    f"the event read back as {events}")
        buf = io.StringIO()
        export_run(st, st.get_run(row.id), buf)
        with Store(ctx.tmp / "b") as other:
            imported = import_jsonl(other, io.BytesIO(buf.getvalue().encode()),
                                    source="selftest")
            again = list(other.records(imported.id))
        out.require(comparable(again) == comparable(records),
                    "wb export | wb import changed the records")
        out.figures.update({"records": float(len(records)),
                            "export_bytes": float(len(buf.getvalue()))})
    out.headline = f"{len(records)} records, NaN/inf kept, export/import exact"
    return out

"""Helpers for the tests of continued pretraining from a Hugging Face checkpoint and of
`wb export-model`: tiny specs, an in-process run, store checks."""

from __future__ import annotations

from pathlib import Path

from workbench.run_record import RunRecord
from workbench.store import Store

# A few steps of a tiny continued-pretraining run: seq_len 32, two sequences a step,
# 20 kB of the stdlib, a checkpoint every `ckpt` steps.
CPT = """
kind = "pretrain"
seed = 1
[model]
init = "{init}"
seq_len = 32
[optim]
name = "{opt}"
lr = 1e-3
[train]
steps = {steps}
batch_size = 2
eval_every = {steps}
eval_batches = 1
max_logit_every = 1
svd_every = 0
checkpoint_every = {ckpt}
keep_checkpoints = 2
cpu_threads = 1
[data]
max_bytes = 20000
"""

# The same at byte level: a model from scratch.
BYTES = CPT.replace('init = "{init}"\n', "n_layer = 1\nn_head = 2\nd_model = 32\n")


def cpt_spec(init: str, opt: str = "muon", steps: int = 2, ckpt: int = 1) -> str:
    return CPT.format(init=init, opt=opt, steps=steps, ckpt=ckpt)


def bytes_spec(steps: int = 2, ckpt: int = 1) -> str:
    return BYTES.format(opt="muon", steps=steps, ckpt=ckpt)


def run_inline(store: Store, text: str, resume_dir: Path | None = None) -> RunRecord:
    """A pretrain run in this process (no worker): the recipe's own code path, faster."""
    from workbench.recipes import Context
    from workbench.recipes import pretrain as pt
    from workbench.spec import dump_toml, parse_spec
    from workbench.tracking import Run

    spec = parse_spec(text).for_launch()
    row = store.create_run(kind="pretrain", base="cpt", status="running", spec=dump_toml(spec),
                           config=spec.run_config(), total_steps=spec.total_steps)
    run = Run(store, row, owner=True)
    try:
        pt.run(spec, Context(run=run, run_dir=store.run_dir(row.id), resume_dir=resume_dir))
    finally:
        run.finish()
    return store.get_run(row.id)


def checkpoint(store: Store, run_id: str, step: int) -> Path:
    return store.run_dir(run_id) / "checkpoints" / f"step-{step:08d}"


def losses(store: Store, run_id: str, key: str = "train/loss") -> dict[int, float]:
    return {step: value for _, step, _, value, _ in store.scalars(run_id, key)}

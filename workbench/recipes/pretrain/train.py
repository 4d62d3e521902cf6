"""Pretraining's entry point: the corpus and tokenizer from the spec, then the shared
training loop (recipes/common/trainer.py: `build_trainer`, `train`).

`run(spec, ctx)` is the entry point of the `pretrain` kind; see the package docstring
for what a run does and logs. What is pretraining's own is here and in data.py: the
tokenizer, the corpora (one rank tokenizes, the others read its cache), the per-rank
loader and validation batches, and the `TrainData` the Trainer reports mixture shares
and bits per byte from.
"""

from __future__ import annotations

from workbench.data.tokenizer import info
from workbench.recipes import Context
from workbench.recipes.common.parallel import Parallel, run_in_parallel
from workbench.recipes.common.seeding import seed_everything
from workbench.recipes.common.trainer import build_trainer, train
from workbench.recipes.pretrain.data import build_data, build_tokenizer
from workbench.recipes.pretrain.spec import PretrainSpec


def run(spec: PretrainSpec, ctx: Context) -> None:
    """Entry point of the `pretrain` kind (see the package docstring)."""
    run_in_parallel(spec, ctx, _run)


def _run(spec: PretrainSpec, ctx: Context, par: Parallel) -> None:
    seed_everything(spec.seed)
    run_ = ctx.run
    run_.set_total_steps(spec.train.steps)
    say = print if par.main else (lambda *_a, **_k: None)

    cache = ctx.run.root / "cache"
    tokenizer = build_tokenizer(spec, cache, say=lambda text: say(text, flush=True))
    run_.update_config({"model_init": spec.model.init, "tokenizer": info(tokenizer)})
    if par.main:  # one process tokenizes; the others then read its cache
        data = build_data(spec, cache, tokenizer, say=lambda text: say(text, flush=True),
                          stage=lambda done, total: run_.event(
                              "stage", step=0, stage="tokenizing", done=done, total=total))
    par.barrier()
    if not par.main:
        data = build_data(spec, cache, tokenizer)
    micro = spec.train.batch_size // spec.train.grad_accum // par.world  # per rank
    loader = data.loader(micro, spec.model.seq_len, spec.seed, par.rank, par.world)
    val_tokens = []
    for src in data.sources:
        if len(src.val) > spec.model.seq_len:
            val_tokens.append(src.val)
            continue
        val_tokens.append(src.train)  # too small a split: say so, don't hide it
        run_.event("data_warning", step=0, severity="warning",
                   message=f"validation split of {src.name} has {len(src.val)} tokens, fewer "
                   f"than one window of {spec.model.seq_len + 1}; val/loss is measured on "
                   "training data — raise data.val_permille or use more data")
        say(f"pretrain: warning: the validation split of {src.name} ({len(src.val)} tokens) "
            "is shorter than one window; val/loss uses training data (raise "
            "data.val_permille)", flush=True)
    val = data.eval(val_tokens, micro, spec.model.seq_len, spec.train.eval_batches,
                    par.rank, par.world)
    run_.event("stage", step=0, stage="data_ready", train_tokens=data.train_tokens,
               val_tokens=data.val_tokens, cache=", ".join(s.where for s in data.sources))
    for src in data.sources:
        share = f" weight {src.weight:g}" if data.mixture else ""
        say(f"pretrain: data {src.name}{share}: {len(src.train):,} train / {len(src.val):,} "
            f"val tokens ({src.where})", flush=True)

    trainer = build_trainer(spec, ctx, par, loader, val)
    trainer.data = data
    train(trainer)

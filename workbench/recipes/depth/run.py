"""Entry point of the `depth` kind: train on the task, then evaluate (see the package
docstring for the stages and what each logs)."""

from __future__ import annotations

from workbench.recipes import Context
from workbench.recipes.common.parallel import Parallel, run_in_parallel
from workbench.recipes.common.seeding import seed_everything
from workbench.recipes.common.trainer import build_trainer, train
from workbench.recipes.depth.evaluate import DepthEval, evaluate
from workbench.recipes.depth.spec import DepthSpec
from workbench.recipes.depth.task import ChainTask, TaskLoader
from workbench.tracking import Run

VAL_SEED_OFFSET = 2_000_000_011  # validation batches: a stream training never reads


def run(spec: DepthSpec, ctx: Context) -> None:
    run_in_parallel(spec, ctx, _run)


def _run(spec: DepthSpec, ctx: Context, par: Parallel) -> None:
    seed_everything(spec.seed)
    ctx.run.set_total_steps(spec.train.steps)
    task = ChainTask(spec.task.max_ops, spec.model.seq_len)
    micro = spec.train.batch_size // spec.train.grad_accum
    loader = TaskLoader(task, micro, spec.seed)
    val = [task.batch(task.sequences(spec.seed + VAL_SEED_OFFSET, i * micro, micro, "eval"))
           for i in range(spec.train.eval_batches)]  # held-out problems, as evaluated
    trainer = build_trainer(spec, ctx, par, loader, val)
    if not train(trainer, last_stage=False):
        return
    step = trainer.state.step
    ctx.run.event("stage", step=step, stage="evaluating")
    result = evaluate(trainer.model, task, spec.eval, spec.seed,
                      say=lambda text: print(text, flush=True), stop=ctx.should_stop)
    if result is None:
        print("depth: stopped during evaluation; `wb resume` evaluates again", flush=True)
        return
    log_eval(ctx.run, result, step, spec)
    ctx.run.event("stage", step=step, stage="done")


def log_eval(run: Run, e: DepthEval, step: int, spec: DepthSpec) -> None:
    """The evaluation under the depth names of docs/ARCHITECTURE.md (package docstring). It
    is logged at the last training step, so nothing here may reuse a training key: decoding
    speed is `depth/decode_tokens_per_s`, `perf/tokens_per_s` stays the training throughput."""
    metrics = {f"eval/accuracy/r{r}": a for r, a in e.accuracy_by_r.items()}
    metrics |= {f"perf/tokens_per_s/r{r}": v for r, v in e.tokens_per_s_by_r.items()}
    metrics |= {
        "eval/accuracy": e.adaptive_acc, "eval/accuracy_fixed": e.fixed_acc,
        "eval/accuracy_fixed_shared": e.fixed_shared_acc, "eval/accuracy_seen": e.seen_acc,
        "depth/steps_mean": e.adaptive_steps_mean, "depth/steps_fixed": e.fixed_steps_mean,
        "depth/steps_ratio": e.steps_ratio, "depth/steps_mean_answers": e.answer_steps_mean,
        "depth/compute_ratio": e.compute_ratio, "depth/readouts_mean": e.readouts_mean,
        "depth/kv_bytes": e.kv_bytes_shared, "depth/kv_bytes_unshared": e.kv_bytes_unshared,
        "depth/spec_accept_rate": e.spec_accept_rate,
        "depth/decode_tokens_per_s": e.adaptive_tok_s,
        "depth/decode_tokens_per_s_fixed": e.fixed_shared_tok_s,
        "perf/spec_tokens_per_s": e.spec_tok_s, "perf/plain_tokens_per_s": e.plain_tok_s,
    }
    run.log(metrics, step=step)
    run.log_dist("depth/steps_per_token", e.adaptive_steps, step=step)
    run.event("depth_sample", step=step, tokens=e.sample_tokens, depths=e.sample_depths,
              rule=spec.eval.exit)
    run.event("depth_eval", step=step, **e.summary())

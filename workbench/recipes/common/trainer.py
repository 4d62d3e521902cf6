"""The training loop of every kind that trains a model from a `TrainedSpec` (pretrain,
depth): the `Trainer`, `build_trainer` and `train`.

Torchtitan style, config in and components out: `build_trainer` takes the spec and the
recipe's data (`loader`, `val`: anything with BatchLoader's interface) and builds the
model, optimizers and spike detector (builders.py); the loop drives one step
(step.py), the schedule (schedule.py), the metrics (train_metrics.py), spike policies
and checkpoints (trainer_checkpoint.py). What is a recipe's own stays in the recipe:
pretrain builds its corpora and tokenizer (recipes/pretrain/train.py) and hands the
Trainer its `Corpus`; depth builds its task loader and evaluates after `train`.

It lives here, not in recipes/pretrain, so that depth trains through the same loop
without importing another recipe. Steps are 1-based; see recipes/pretrain/__init__.py
for what a run logs, the spike policies and exact resume.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from workbench.data.loader import BatchLoader
from workbench.models.gpt import GPT
from workbench.models.recurrent_depth import RecurrentDepthGPT
from workbench.optim import route
from workbench.recipes import Context
from workbench.recipes.common.builders import (
    build_model,
    build_optimizer_list,
    record_ns_dtype,
    spike_detector,
)
from workbench.recipes.common.checkpoint import checkpoints_in, clean_tmp
from workbench.recipes.common.faults import Faults
from workbench.recipes.common.parallel import Parallel
from workbench.recipes.common.schedule import lr_at
from workbench.recipes.common.step import (
    StepOut,
    clip_heads,
    drop_update,
    evaluate,
    forward_backward,
    optimizer_step,
)
from workbench.recipes.common.train_metrics import (
    Snapshot,
    param_groups,
    peak_flops,
    svd_entropy,
    svd_params,
)
from workbench.recipes.common.trained_spec import TrainedSpec
from workbench.recipes.common.trainer_checkpoint import (
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from workbench.signals import BucketedSpikeDetector, Spike, SpikeDetector, recurrence_bucket


class Corpus(Protocol):
    """What the Trainer reads from the corpus behind its loader, when a recipe has one
    (pretrain's `TrainData`): whether it mixes sources (then the loader's `fractions`
    give each step's rows per source) and the validation loss in bits per byte."""

    @property
    def mixture(self) -> bool: ...

    def val_bits_per_byte(self, loss: float) -> float | None: ...


@dataclass
class Trainer:
    """The pieces `run` builds, and the loop over them. One method per idea.

    `model` is the plain model, a GPT or a recurrent-depth one (QK-Clip, metrics and
    checkpoints read it); `ddp` is what the forward pass goes through: the same model,
    DDP-wrapped when distributed. `loader` and `val` are any batch source with
    BatchLoader's interface (the depth kind passes its task's); `data`, when the recipe
    sets it, adds per-source shares and bits per byte to the logs."""

    spec: TrainedSpec
    ctx: Context
    par: Parallel
    model: GPT | RecurrentDepthGPT
    ddp: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]
    loader: BatchLoader
    val: list[tuple[torch.Tensor, torch.Tensor]]
    detector: SpikeDetector | BucketedSpikeDetector  # `spike_detector(spec)`
    groups: dict[str, list[torch.nn.Parameter]]
    faults: Faults
    state: TrainState = field(default_factory=TrainState)
    saved_step: int = -1
    print_every: int = 1
    data: Corpus | None = None  # the corpus behind `loader`, if any (pretrain's TrainData)

    @property
    def device(self) -> torch.device:
        return self.par.device

    def say(self, text: str) -> None:
        """Print to the run's output, once (rank 0)."""
        if self.par.main:
            print(text, flush=True)

    # -- checkpoints ------------------------------------------------------------------

    def save(self, reason: str) -> None:
        """Rank 0 writes (replicas are identical); everyone waits until it is on disk.

        Every rank takes the optimizer state first: distributed Muon's momentum is
        sharded, and its state_dict() gathers the full state (a collective)."""
        if self.saved_step == self.state.step:
            return
        states = [opt.state_dict() for opt in self.optimizers]
        if self.par.main:
            path = save_checkpoint(self.ctx.checkpoint_dir, self.model, self.optimizers,
                                   self.loader, self.detector, self.state, self.spec,
                                   self.spec.train.keep_checkpoints, optimizer_states=states)
            self.ctx.run.event("checkpoint", step=self.state.step, path=str(path),
                               reason=reason)
        self.par.barrier()
        self.saved_step = self.state.step

    def latest_checkpoint(self) -> Path | None:
        sources = [self.ctx.checkpoint_dir]
        if self.ctx.resume_dir is not None:
            sources.append(self.ctx.resume_dir / "checkpoints")
        for folder in sources:
            found = checkpoints_in(folder)
            if found:
                return found[-1]
        return None

    def restore(self, path: Path) -> None:
        self.state = load_checkpoint(path, self.model, self.optimizers, self.loader,
                                     self.detector)

    # -- spikes -----------------------------------------------------------------------

    def on_bad_step(self, step: int, out: StepOut) -> str:
        """Record a spike / NaN and return the action: "apply", "skip" or "rollback"."""
        run, policy = self.ctx.run, self.spec.stability.spike_policy
        if not out.finite:
            action = "skip" if policy == "alert" else policy
            action = self._limit_rollbacks(action)
            run.event("nan", step=step, severity="warning", key="train/loss", value=out.loss,
                      grad_norm=out.grad_norm, policy=policy, action=action)
            return action
        spike = self._detect(step, out)
        if spike is None:
            return "apply"
        action = self._limit_rollbacks("apply" if policy == "alert" else policy)
        run.event("loss_spike", step=step, severity="warning", value=spike.value,
                  baseline=spike.baseline, score=spike.score, rel_jump=spike.rel_jump,
                  policy=policy, action=action)
        return action

    def _detect(self, step: int, out: StepOut) -> Spike | None:
        """Feed the loss to the detector; a recurrent-depth step with its draw's bucket, so
        each draw length is compared with its own level (package docstring)."""
        if isinstance(self.detector, BucketedSpikeDetector):
            bucket = recurrence_bucket(out.recurrence if out.recurrence is not None else 1.0)
            return self.detector.update(step, out.loss, bucket)
        return self.detector.update(step, out.loss)

    def _limit_rollbacks(self, action: str) -> str:
        if action == "rollback" and self.state.rollbacks >= self.spec.stability.max_rollbacks:
            return "skip"
        return action

    def rollback(self, step: int) -> None:
        """Restore the latest checkpoint; continue with the data after the spike's batch."""
        past_window = self.loader.step + self.spec.stability.rollback_skip_batches * \
            self.spec.train.grad_accum
        path = self.latest_checkpoint()
        if path is None:
            raise RuntimeError("rollback: no checkpoint to roll back to")
        rollbacks = self.state.rollbacks
        self.restore(path)
        self.par.barrier()  # every rank has read it before rank 0 re-saves that step
        skipped = past_window - self.loader.step
        self.loader.step = past_window
        self.state.rollbacks = rollbacks + 1
        self.saved_step = -1
        self.save("rollback")  # a resume must not replay the offending window
        self.ctx.run.event("rollback", step=step, severity="warning", from_step=step,
                           to_step=self.state.step, checkpoint=str(path),
                           skipped_batches=skipped)
        self.say(f"pretrain: rollback from step {step} to {self.state.step}, skipping "
                 f"{skipped} batches")

    # -- one step, metrics -----------------------------------------------------------

    def step(self) -> None:
        spec, run = self.spec, self.ctx.run
        step = self.state.step + 1
        t0 = time.perf_counter()
        out = forward_backward(self.ddp, self.optimizers, self.loader, spec, step,
                               self.device, self.faults, self.par)
        action = self.on_bad_step(step, out)
        if action == "rollback":
            if out.finite:  # the spike stays visible in the curve
                run.log({"train/loss": out.loss}, step=step)
            self.rollback(step)
            return
        lr = lr_at(spec, step)
        log_now = step % spec.train.log_every == 0 or step == spec.train.steps
        clip = None
        metrics: dict[str, float] = {}
        if action == "skip":
            drop_update(self.optimizers)
            run.event("skip", step=step, severity="warning", loss=out.loss,
                      reason="nan" if not out.finite else "loss_spike")
        else:
            snap = Snapshot(self.groups) if log_now and self.par.main else None
            t_opt = time.perf_counter()
            optimizer_step(self.optimizers, lr)
            if log_now:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                metrics["perf/optim_step_ms"] = (time.perf_counter() - t_opt) * 1000
            if snap is not None:  # the optimizer's update, before QK-Clip rescales heads
                metrics.update(snap.metrics())
            clip = clip_heads(self.model, spec, out.max_logits)
        if self.faults.sleep_s:
            time.sleep(self.faults.sleep_s)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.state.step = step

        if log_now:
            tokens = spec.train.batch_size * spec.model.seq_len  # global: all ranks
            metrics.update({"train/lr": lr, "train/grad_norm": out.grad_norm,
                            "perf/tokens_per_s": tokens / dt,
                            "attn/max_logit": float(out.max_logits.max())})
            if out.finite:  # a NaN step is described by its `nan` event, not the curves
                metrics["train/loss"] = out.loss
            else:
                metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
            if (peak := peak_flops(self.device)) is not None:
                flops = self.model.flops_per_token() * tokens / dt
                metrics["perf/mfu"] = flops / (peak * self.par.world)
            if spec.optim.name == "muonclip":
                metrics["qkclip/clipped_heads"] = clip.clipped if clip is not None else 0
            if out.recurrence is not None:
                metrics["train/recurrence"] = out.recurrence
            if self.data is not None and self.data.mixture:  # this step's rows per source
                accum = spec.train.grad_accum
                shares = self.loader.fractions(self.loader.step - accum, accum)
                metrics.update({f"train/source_frac/{k}": v for k, v in shares.items()})
            run.log(metrics, step=step)
        if clip is not None and clip.clipped:
            detail = clip.to_event()  # which heads, their gamma, QK-norm layers scaled
            run.event("qk_clip", step=step, count=clip.clipped, min_gamma=detail["min_gamma"],
                      tau=spec.optim.tau, heads=detail["heads"], gamma=detail["gamma"],
                      norm_layers=detail["norm_layers"])
        if step % spec.train.max_logit_every == 0:
            run.log_matrix("attn/max_logit_heads", out.max_logits, step=step)
        if spec.train.svd_every and step % spec.train.svd_every == 0 and self.par.main:
            run.log({f"svd/entropy/{name}": svd_entropy(p)
                     for name, p in svd_params(self.model).items()}, step=step)
        if step % spec.train.eval_every == 0 or step == spec.train.steps:
            loss = evaluate(self.model, self.val, self.device, self.par)
            scores = {"val/loss": loss}
            if self.data is not None and (bpb := self.data.val_bits_per_byte(loss)) is not None:
                scores["val/bits_per_byte"] = bpb
            run.log(scores, step=step)
        if step % self.print_every == 0 or step == spec.train.steps:
            self.say(f"step {step}/{spec.train.steps} loss {out.loss:.4f} lr {lr:.2e} "
                     f"max_logit {float(out.max_logits.max()):.1f} {dt * 1000:.0f} ms")
        if spec.train.checkpoint_every and step % spec.train.checkpoint_every == 0:
            self.save("periodic")

    def fit(self) -> bool:
        """Train to the last step; False when stopped early (after checkpointing)."""
        while self.state.step < self.spec.train.steps:
            if self.par.any(self.ctx.should_stop()):  # every rank stops at the same step
                self.save("stop")
                self.say(f"{self.spec.kind}: stopped at step {self.state.step}")
                return False
            self.step()
        self.save("end")
        return True


def build_trainer(spec: TrainedSpec, ctx: Context, par: Parallel, loader: Any,
                  val: list[tuple[torch.Tensor, torch.Tensor]]) -> Trainer:
    """Model, optimizers and the Trainer over `loader` / `val`, restored from the latest
    checkpoint (this run's, else the resumed run's) when there is one."""
    device, run_ = par.device, ctx.run
    say = print if par.main else (lambda *_a, **_k: None)
    model = build_model(spec, device)
    routing = route(model)
    say(routing.format_table(), flush=True)
    optimizers = build_optimizer_list(spec, model, device, distributed=par.distributed)
    variant = None if spec.optim.name == "adamw" else spec.optim.adjust_lr_fn
    run_.update_config({"routing": routing.table(), "muon_variant": variant,
                        "muon_lr": None if variant is None else spec.muon_lr,
                        "device": str(device), "world_size": par.world,
                        "params": model.num_params(),
                        "flops_per_token": model.flops_per_token()})
    say(f"{spec.kind}: {spec.model.arch}, {spec.optim.name} (muon variant {variant}), "
        f"{model.num_params():,} params on {device}"
        + (f" x {par.world} processes" if par.distributed else ""), flush=True)

    trainer = Trainer(spec=spec, ctx=ctx, par=par, model=model, ddp=par.wrap(model),
                      optimizers=optimizers, loader=loader, val=val,
                      detector=spike_detector(spec),
                      groups=param_groups(spec, routing),
                      faults=Faults.from_env(model.config.vocab_size),
                      print_every=max(1, spec.train.steps // 50))
    if par.main:
        clean_tmp(ctx.checkpoint_dir)
    par.barrier()
    source = trainer.latest_checkpoint()
    if source is not None:
        trainer.restore(source)
        trainer.saved_step = trainer.state.step if source.parent == ctx.checkpoint_dir else -1
        run_.event("checkpoint", step=trainer.state.step, action="resumed", path=str(source))
        say(f"{spec.kind}: resumed from {source} at step {trainer.state.step}", flush=True)
    elif ctx.resume_dir is not None:
        say(f"{spec.kind}: no checkpoint in {ctx.resume_dir}; starting from scratch",
            flush=True)
    record_ns_dtype(optimizers, run_, say)  # after the restore: a resume keeps its choice
    if source is None and spec.stability.spike_policy == "rollback":
        trainer.save("initial")  # something to roll back to before the first checkpoint
    return trainer


def train(trainer: Trainer, last_stage: bool = True) -> bool:
    """Train to the last step with `stage` events (`done` at the end when training is
    the run's last stage); False when stopped early."""
    run_ = trainer.ctx.run
    run_.event("stage", step=trainer.state.step, stage="training",
               start_step=trainer.state.step)
    done = trainer.fit()
    if done and last_stage:
        run_.event("stage", step=trainer.state.step, stage="done")
    return done

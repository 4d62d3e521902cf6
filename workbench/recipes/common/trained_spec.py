"""`TrainedSpec`: the sections every kind that trains a model through
`recipes/common/trainer.py` has (model, optim, train, stability), and their checks.

pretrain adds its `data` section, depth its `task` and `eval`. Free of torch, like
every spec module: `wb launch` refuses a bad spec before anything heavy is imported.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from workbench.recipes.common.model_spec import ModelSection
from workbench.signals.spikes import SpikeConfig
from workbench.spec import Section, SpecBase

ORIGINAL_MUON_LR = 0.02  # Keller Jordan's Muon lr, the default under adjust_lr_fn=original
_SPIKE = SpikeConfig()  # the spike detector's defaults, StabilitySection's too


class OptimSection(Section):
    """Optimizer, learning-rate schedule and clipping."""

    name: Literal["muon", "muonclip", "adamw"] = Field(
        "muon", description="muon (Muon + AdamW for non-matrix params), muonclip "
        "(muon + QK-Clip after every step) or adamw (AdamW everywhere).")
    lr: float = Field(3e-3, gt=0, le=10, description="Peak learning rate (shared by Muon and "
                      "AdamW under adjust_lr_fn=match_rms_adamw).")
    weight_decay: float = Field(0.1, ge=0, le=10, description="Decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas, each in [0, 1).")
    adjust_lr_fn: Literal["match_rms_adamw", "original"] = Field(
        "match_rms_adamw", description="Muon variant: match_rms_adamw (Moonlight, reuses "
        "AdamW's lr) or original (Keller Jordan, lr about 0.02; its lr is not interchangeable).")
    muon_lr: float | None = Field(
        None, gt=0, le=10, description="Muon's peak lr; unset = optim.lr under "
        f"match_rms_adamw, {ORIGINAL_MUON_LR} under original. The schedule scales it with lr.")
    ns_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Newton-Schulz precision: auto = per matrix shape, whichever of "
        "float32 and bfloat16 a one-time timing on this device found faster (bf16 needs a "
        "10% lead; CPUs without native bf16 run it ~40x slower, with AVX-512 BF16/AMX ~30x "
        "faster); recorded in the run config (muon_ns_choice), kept on resume.")
    tau: float = Field(100.0, gt=0, description="QK-Clip threshold on the max attention logit "
                       "(muonclip clips heads above it; other optimizers only log).")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global grad norm to this; 0 = off.")
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine", description="After warm-up: cosine decay, or WSD (constant, then linear "
        "decay over the last decay_frac of the steps).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final lr / peak lr.")
    decay_frac: float = Field(0.2, gt=0, le=1,
                              description="WSD only: fraction of the steps spent decaying.")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("each beta must be in [0, 1), e.g. [0.9, 0.95]")
        return betas


class TrainSection(Section):
    """Length, batch and the cadence of evals, expensive metrics and checkpoints."""

    steps: int = Field(500, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Sequences per optimizer step (global).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per step; must divide "
                            "batch_size.")
    eval_every: int = Field(100, ge=1, description="Validation every N steps (and at the end).")
    eval_batches: int = Field(4, ge=1, description="Validation batches (of batch_size // "
                              "grad_accum sequences) per evaluation.")
    log_every: int = Field(1, ge=1, description="Scalar metrics every N steps.")
    max_logit_every: int = Field(10, ge=1, description="Log the layer x head max-logit matrix "
                                 "attn/max_logit_heads every N steps.")
    svd_every: int = Field(100, ge=0, description="SVD entropy of a few hidden matrices every "
                           "N steps; 0 = off.")
    checkpoint_every: int = Field(100, ge=0, description="Checkpoint every N steps (also at the "
                                  "end and on stop); 0 = only at the end and on stop.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk (newest).")
    cpu_threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads; unset "
                                    "= torch's default (one per core). Fewer helps on a busy "
                                    "machine; a resumed run uses the same value.")


class StabilitySection(Section):
    """Loss-spike detection and what to do about a spike (see the module docstring)."""

    spike_policy: Literal["alert", "skip", "rollback"] = Field(
        "alert", description="alert (record only), skip (drop the update) or rollback "
        "(restore the last checkpoint and skip the data window).")
    # Defaults: SpikeConfig's, chosen with `wb bench spikes` (bench/spikes.py).
    window: int = Field(_SPIKE.window, ge=1, description="Spike detector: rolling window of "
                        "losses (step noise and trend slope).")
    threshold: float = Field(_SPIKE.threshold, gt=0, description="Spike detector: robust "
                             "sigmas of step noise (1.4826 x MAD of successive differences "
                             "/ sqrt 2) above the level (median of the last 10 losses "
                             "carried along the trend).")
    min_rel_jump: float = Field(_SPIKE.min_rel_jump, ge=0, description="Spike detector: the "
                                "loss must also be this fraction above the level (a floor "
                                "for very quiet curves; raise it for a loss near 0).")
    warmup: int = Field(_SPIKE.warmup, ge=1, description="Spike detector: steps seen before "
                        "any detection.")
    persist: int = Field(_SPIKE.persist, ge=1, description="Spike detector: elevated steps "
                         "that count as a level shift (no further events).")
    rollback_skip_batches: int = Field(0, ge=0, description="After a rollback, skip this many "
                                       "more steps' worth of data past the offending batch.")
    max_rollbacks: int = Field(5, ge=0, description="Rollbacks per run; later spikes are skipped.")

    def spike_config(self) -> SpikeConfig:
        return SpikeConfig(window=self.window, threshold=self.threshold,
                           min_rel_jump=self.min_rel_jump, warmup=self.warmup,
                           persist=self.persist)


class TrainedSpec(SpecBase):
    """The sections a kind trained by `recipes.common.trainer.Trainer` has."""

    model: ModelSection = Field(default_factory=ModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    stability: StabilitySection = Field(default_factory=StabilitySection)

    @property
    def muon_lr(self) -> float:
        """Muon's peak lr (optim.muon_lr, else the variant's default)."""
        o = self.optim
        if o.muon_lr is not None:
            return o.muon_lr
        return ORIGINAL_MUON_LR if o.adjust_lr_fn == "original" else o.lr

    @property
    def total_steps(self) -> int:
        """Read by the launcher for progress and ETA."""
        return self.train.steps

    @model_validator(mode="after")
    def _consistent_training(self) -> TrainedSpec:
        try:
            self.model.build_config()
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith("model.") else f"model: {msg}") from None
        if self.train.batch_size % self.train.grad_accum:
            raise ValueError(
                f"train.grad_accum ({self.train.grad_accum}) must divide train.batch_size "
                f"({self.train.batch_size}) — change one of them")
        micro = self.train.batch_size // self.train.grad_accum
        procs, nodes = self.resources.procs, self.resources.nodes
        if micro % procs:
            raise ValueError(
                f"resources.procs ({procs}) must divide the micro-batch "
                f"train.batch_size / train.grad_accum ({micro}): each process takes an equal "
                "share — change train.batch_size or resources.procs")
        if micro % (procs * nodes):  # every rank of every node takes an equal share
            raise ValueError(
                f"resources.nodes * resources.procs ({nodes} * {procs}) must divide the "
                f"micro-batch train.batch_size / train.grad_accum ({micro}): each rank takes "
                "an equal share — change train.batch_size, resources.nodes or resources.procs")
        if self.stability.spike_policy == "rollback" and self.train.checkpoint_every == 0:
            raise ValueError(
                "stability.spike_policy = rollback needs checkpoints to roll back to — set "
                "train.checkpoint_every > 0")
        if self.optim.warmup_steps >= self.train.steps:
            raise ValueError(
                f"optim.warmup_steps ({self.optim.warmup_steps}) must be less than train.steps "
                f"({self.train.steps}) — lower it")
        return self

"""The `pretrain` spec: model, optimizer, training, data and stability sections.

`TrainedSpec` holds the sections every trained kind shares (model, optim, train,
stability); the `depth` kind subclasses it with its task and evaluation sections and
trains through the same `Trainer`.

Free of torch (the model configs live in models/config.py), so `wb launch` validates a
spec and refuses a bad one before anything heavy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from workbench.data.corpus import VOCAB_SIZE
from workbench.models.config import GPTConfig, RecurrentDepthConfig, ffn_hidden
from workbench.models.hf_config import HF_PREFIX, CheckpointError, hf_folder, load_gpt_config
from workbench.recipes.pretrain.data_spec import DataSection as DataSection
from workbench.recipes.pretrain.data_spec import SourceSection as SourceSection
from workbench.recipes.pretrain.data_spec import check_data
from workbench.signals.spikes import SpikeConfig
from workbench.spec import Section, SpecBase

ORIGINAL_MUON_LR = 0.02  # Keller Jordan's Muon lr, the default under adjust_lr_fn=original
_SPIKE = SpikeConfig()  # the spike detector's defaults, StabilitySection's too


RD_ONLY = ("n_prelude", "n_core", "n_coda", "mean_recurrence", "backprop_depth")
GPT_ONLY = ("n_layer", "n_kv_head", "attn_backend")  # n_layer: ignored by recurrent-depth
# Keys a checkpoint (model.init = "hf:...") decides; setting one is refused, not ignored.
CHECKPOINT_FIXED = ("n_layer", "n_head", "n_kv_head", "d_model", "ffn_mult",
                    "tie_embeddings")


class ModelSection(Section):
    """The network: a GPT, or a recurrent-depth model (Huginn: prelude, a core looped
    r times, coda; models/recurrent_depth.py)."""

    init: str = Field(
        "scratch", description="Initial weights: 'scratch' (random, byte-level tokenizer) or "
        "'hf:<folder>' (a Llama / Qwen2 / Qwen3 checkpoint folder; its config fixes the "
        "shape and its tokenizer tokenizes the corpus).")
    arch: Literal["gpt", "recurrent-depth"] = Field(
        "gpt", description="Architecture: 'gpt' (decoder-only GPT) or 'recurrent-depth' "
        "(prelude + looped core + coda, Huginn-style).")
    n_layer: int = Field(4, ge=1, le=1024, description="Transformer blocks (gpt; recurrent-depth "
                         "has n_prelude / n_core / n_coda instead).")
    n_head: int = Field(4, ge=1, description="Query heads; must divide d_model.")
    n_kv_head: int | None = Field(
        None, ge=1, description="Key/value heads for GQA (must divide n_head); unset = MHA.")
    d_model: int = Field(128, ge=2, description="Residual width.")
    seq_len: int = Field(128, ge=2, description="Context length in tokens (bytes for a model "
                         "from scratch).")
    ffn_mult: float = Field(8 / 3, gt=0, le=64,
                            description="SwiGLU hidden size / d_model (rounded up to 64).")
    tie_embeddings: bool = Field(True, description="Share the input embedding and LM head.")
    attn_backend: Literal["auto", "flex", "sdpa", "naive", "triton"] = Field(
        "auto", description="Attention (gpt): auto (flex on CUDA, sdpa elsewhere), flex, sdpa, "
        "naive, triton (our flash kernel with max logits; CUDA only).")
    n_prelude: int = Field(1, ge=0, le=1024, description="recurrent-depth: blocks before the "
                           "loop (run once).")
    n_core: int = Field(2, ge=1, le=1024, description="recurrent-depth: blocks in the looped "
                        "core.")
    n_coda: int = Field(1, ge=0, le=1024, description="recurrent-depth: blocks after the loop.")
    mean_recurrence: int = Field(8, ge=1, le=1024, description="recurrent-depth: mean of the "
                                 "training draw (log-normal Poisson) and the eval default.")
    backprop_depth: int = Field(4, ge=1, le=1024, description="recurrent-depth: iterations "
                                "with gradient (truncated backprop through the last k).")

    # The embedding's rows for a model from scratch: the data tokenizer's vocabulary
    # (PretrainSpec sets it from data.tokenizer; bytes by default).
    _vocab_size: int = PrivateAttr(VOCAB_SIZE)

    @field_validator("init")
    @classmethod
    def _init_form(cls, init: str) -> str:
        if init == "scratch" or (init.startswith(HF_PREFIX) and init[len(HF_PREFIX):].strip()):
            return init
        raise ValueError("use 'scratch' or 'hf:<folder>' (a Hugging Face checkpoint folder)")

    @property
    def checkpoint(self) -> Path | None:
        """The folder of `init = "hf:<folder>"`, else None (a model from scratch)."""
        return hf_folder(self.init)

    def build_config(self) -> GPTConfig | RecurrentDepthConfig:
        """The config of `arch` (raises ValueError naming the problem; messages that
        name their key in full start with "model.")."""
        if self.checkpoint is not None:
            return self.checkpoint_config()
        fields = type(self).model_fields
        changed = [k for k in (*RD_ONLY, *GPT_ONLY) if getattr(self, k) != fields[k].default]
        if self.arch == "gpt":
            if wrong := [k for k in changed if k in RD_ONLY]:
                raise ValueError(f"{wrong[0]} applies to arch 'recurrent-depth' — set "
                                 "model.arch = \"recurrent-depth\" or drop it")
            return self.gpt_config()
        if wrong := [k for k in changed if k in GPT_ONLY[1:]]:
            raise ValueError(f"{wrong[0]} applies to arch 'gpt'; a recurrent-depth model has "
                             "MHA and sdpa attention — drop it")
        return RecurrentDepthConfig(
            vocab_size=self._vocab_size, seq_len=self.seq_len, d_model=self.d_model,
            n_head=self.n_head, n_prelude=self.n_prelude, n_core=self.n_core,
            n_coda=self.n_coda, mean_recurrence=self.mean_recurrence,
            backprop_depth=self.backprop_depth,
            ffn_hidden=ffn_hidden(self.d_model, self.ffn_mult),
            tie_embeddings=self.tie_embeddings)

    def checkpoint_config(self) -> GPTConfig:
        """The GPTConfig of the `hf:` checkpoint at this seq_len and attention backend.

        The checkpoint decides the shape, so a shape key set here would be silently
        ignored: it is refused instead. Reads config.json only (no torch)."""
        folder = self.checkpoint
        assert folder is not None
        if self.arch != "gpt":
            raise ValueError(f"model.init = {self.init!r} loads a gpt checkpoint; arch "
                             f"{self.arch!r} cannot start from one — use init = 'scratch'")
        fields = type(self).model_fields
        changed = [k for k in (*CHECKPOINT_FIXED, *RD_ONLY)
                   if getattr(self, k) != fields[k].default]
        if changed:
            raise ValueError(f"model.{changed[0]} is fixed by the checkpoint model.init = "
                             f"{self.init!r} — drop it (set only seq_len and attn_backend)")
        try:
            return load_gpt_config(folder, seq_len=self.seq_len, attn_backend=self.attn_backend)
        except CheckpointError as exc:
            key = "model.seq_len" if str(exc).startswith("seq_len ") else "model.init"
            raise ValueError(f"{key}: {exc}") from None

    def gpt_config(self) -> GPTConfig:
        """The GPT of this section: the checkpoint's with `init = "hf:..."`."""
        if self.checkpoint is not None:
            return self.checkpoint_config()
        return GPTConfig(vocab_size=self._vocab_size, seq_len=self.seq_len, n_layer=self.n_layer,
                         n_head=self.n_head, n_kv_head=self.n_kv_head, d_model=self.d_model,
                         ffn_mult=self.ffn_mult, tie_embeddings=self.tie_embeddings,
                         attn_backend=self.attn_backend)


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
    """The sections a kind trained by `recipes.pretrain.train.Trainer` has."""

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


def _pin(path: str | None) -> str | None:
    """A relative path (or glob) as an absolute one; keywords stay as they are."""
    if path in (None, "", "stdlib", "bytes", "gpt2-bin") or path.startswith("bpe:"):
        return path
    p = Path(os.path.expanduser(path))
    return str(p.resolve() if p.exists() else p.absolute())


def pinned_paths(data: DataSection) -> dict[str, object]:
    """data's paths pinned to where `wb launch` ran."""
    out: dict[str, object] = {"path": _pin(data.path), "val_path": _pin(data.val_path),
                              "tokenizer": _pin(data.tokenizer)}
    if data.sources:
        out["sources"] = [s.model_copy(update={"path": _pin(s.path),
                                               "val_path": _pin(s.val_path)})
                          for s in data.sources]
    return out


class PretrainSpec(TrainedSpec):
    kind: Literal["pretrain"]
    data: DataSection = Field(default_factory=DataSection)

    def for_launch(self) -> PretrainSpec:
        """A relative data.path or model.init folder is pinned to where `wb launch` ran."""
        spec = self.model_copy(deep=True)
        spec.data = spec.data.model_copy(update=pinned_paths(self.data))
        if (folder := self.model.checkpoint) is not None:
            spec.model.init = f"{HF_PREFIX}{folder.resolve()}"
        return spec

    @model_validator(mode="after")
    def _consistent(self) -> PretrainSpec:
        vocab = check_data(self.data, checkpoint=self.model.checkpoint is not None)
        if self.model.checkpoint is None:
            self.model._vocab_size = padded_vocab(vocab)
        elif self.data.tokenizer is not None:
            embedding = self.model.build_config().vocab_size
            if vocab > embedding:
                raise ValueError(f"data.tokenizer has {vocab:,} ids, more than the embedding "
                                 f"of model.init ({embedding:,}) — use that checkpoint's own "
                                 "tokenizer (unset data.tokenizer)")
        return self


def padded_vocab(n: int) -> int:
    """Embedding rows for a tokenizer of n ids: our 260 bytes as they are, anything
    else rounded up to a multiple of 64 (nanoGPT's 50,257 -> 50,304; faster matmuls)."""
    return n if n == VOCAB_SIZE else -(-n // 64) * 64

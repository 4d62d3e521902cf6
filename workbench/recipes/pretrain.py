"""The `pretrain` kind: GPT pretraining with Muon, MuonClip (Muon + QK-Clip) or AdamW.

Read top to bottom, torchtitan style: the spec, then one small component per idea
(data, model, optimizers, schedule, train step, eval, metrics, checkpoints, spike
policy), then `run`, which wires them together. Single process for now
(`resources.procs = 1`); data-parallel training comes later. Validating a pretrain spec
imports this module and so torch (about 2 s): the model section is checked by building
a GPTConfig, which lives in models/gpt.py next to torch.

Steps are 1-based: step s is the s-th optimizer update, `train/loss` at step s is the
loss of the batch that update s was computed from, and a checkpoint "at step s" holds
the state after s updates (training resumes with step s + 1).

Metrics (names from DESIGN.md): every `train.log_every` steps `train/loss`, `train/lr`,
`train/grad_norm`, `perf/tokens_per_s`, `perf/mfu` (CUDA only), `attn/max_logit`,
`qkclip/clipped_heads` (muonclip), `optim/update_rms/<group>` and
`optim/weight_rms/<group>` (group = "muon" / "adamw", the optimizer that owns the
parameters; the update is the parameter change made by the optimizer step, weight
decay included, QK-Clip excluded); `val/loss` every `train.eval_every` steps and at
the end; `svd/entropy/<param>` every `train.svd_every` steps for a few hidden matrices
(q_proj and up_proj of the first and last layers); the matrix `attn/max_logit_heads`
[n_layer, n_head] every `train.max_logit_every` steps.

Max logits are tracked in every forward pass, for every optimizer: QK-Clip needs them
every step, and the scalar `attn/max_logit` is what people watch. On CUDA they come
nearly free from flex_attention's `max_scores`; on the CPU (sdpa path) they cost one
extra Q.K^T matmul per layer in the forward pass, no backward (see models/gpt.py).
With grad accumulation the max is taken over the micro-batches.

Loss spikes (`stability.spike_policy`), from a SpikeDetector on train/loss:
- alert: record a `loss_spike` event and apply the update anyway;
- skip: record `loss_spike` and `skip`; the update is not applied (grads dropped);
- rollback: record `loss_spike` and `rollback`; restore the latest checkpoint (model,
  optimizers, data position, detector, RNG) and move the data past the offending
  window: training continues from the checkpoint step with the batches that come after
  the spike's batch, plus `stability.rollback_skip_batches` more steps' worth. After
  `stability.max_rollbacks` rollbacks in one run, further spikes are skipped instead.
A non-finite loss (or gradient norm) gives a `nan` event and the same policy, except
that `alert` never applies a NaN update: it is treated as `skip` (the event says so).

Exact resume: a checkpoint holds the weights (model.safetensors; tied weights saved
once) and state.pt (optimizer states, torch / CUDA / Python / NumPy RNG states, the
loader position, the spike detector, the step and the rollback count). The data stream
is a pure function of (seed, batch index) and the schedule a pure function of the step,
so a resumed run reproduces the uninterrupted loss curve bit for bit on the CPU.
Checkpoints are written to a temporary folder and renamed into place, so a kill -9
during a write never leaves a broken latest checkpoint.

Test-only fault hooks (environment variables, read at start; never set them in real
runs): WB_FAULT_CORRUPT_STEPS="12,30" replaces the batches of those steps with random
input tokens and a constant target token that never occurs in the data (id 259), so
the loss is genuinely high; WB_FAULT_NAN_STEPS="15" makes the loss of those steps NaN;
WB_FAULT_SLEEP_S="0.05" sleeps that long every step (lets a test kill a run mid-way).
Steps name *data positions*: the batches step s reads in a run without rollbacks. So a
corrupted batch behaves like bad data: a rollback that skips past it does not meet it
again.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from safetensors.torch import load_model, save_model

from workbench.data.corpus import VOCAB_SIZE, CachedCorpus, open_corpus
from workbench.data.loader import BatchLoader, eval_batches
from workbench.models.gpt import GPT, GPTConfig
from workbench.optim import Routing, build_optimizers, qk_clip, route
from workbench.recipes import Context
from workbench.signals import SpikeConfig, SpikeDetector
from workbench.spec import Section, SpecBase

# ----------------------------------------------------------------------------- spec


class ModelSection(Section):
    """The network. Only the GPT architecture so far."""

    arch: Literal["gpt"] = Field("gpt", description="Architecture: 'gpt' (decoder-only GPT).")
    n_layer: int = Field(4, ge=1, le=1024, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, description="Query heads; must divide d_model.")
    n_kv_head: int | None = Field(
        None, ge=1, description="Key/value heads for GQA (must divide n_head); unset = MHA.")
    d_model: int = Field(128, ge=2, description="Residual width.")
    seq_len: int = Field(128, ge=2, description="Context length in tokens (bytes).")
    ffn_mult: float = Field(8 / 3, gt=0, le=64,
                            description="SwiGLU hidden size / d_model (rounded up to 64).")
    tie_embeddings: bool = Field(True, description="Share the input embedding and LM head.")
    attn_backend: Literal["auto", "flex", "sdpa", "naive"] = Field(
        "auto", description="Attention: auto (flex on CUDA, sdpa elsewhere), flex, sdpa, naive.")

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(vocab_size=VOCAB_SIZE, seq_len=self.seq_len, n_layer=self.n_layer,
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
    ns_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Newton-Schulz precision: auto = bfloat16 on CUDA, float32 on a "
        "CPU (CPUs without native bf16 matmul run it about 35x slower).")
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


class DataSection(Section):
    """The corpus: the Python stdlib's source by default."""

    path: str | None = Field(None, description="Text file, directory or JSONL; unset = the "
                             "Python standard library's source files.")
    text_field: str = Field("text", min_length=1, description="JSONL field holding the text.")
    val_permille: int = Field(10, ge=0, lt=1000, description="Documents held out for "
                              "validation, per thousand.")
    max_bytes: int | None = Field(None, ge=1, description="Read at most this many bytes of "
                                  "input (whole files, in order); for tiny runs.")


class StabilitySection(Section):
    """Loss-spike detection and what to do about a spike (see the module docstring)."""

    spike_policy: Literal["alert", "skip", "rollback"] = Field(
        "alert", description="alert (record only), skip (drop the update) or rollback "
        "(restore the last checkpoint and skip the data window).")
    window: int = Field(100, ge=1, description="Spike detector: rolling window of losses.")
    threshold: float = Field(6.0, gt=0, description="Spike detector: robust sigmas above the "
                             "rolling median.")
    min_rel_jump: float = Field(0.25, ge=0, description="Spike detector: the loss must also be "
                                "this fraction above the median.")
    warmup: int = Field(50, ge=1, description="Spike detector: steps seen before any detection.")
    persist: int = Field(10, ge=1, description="Spike detector: elevated steps that count as a "
                         "level shift (no further events).")
    rollback_skip_batches: int = Field(0, ge=0, description="After a rollback, skip this many "
                                       "more steps' worth of data past the offending batch.")
    max_rollbacks: int = Field(5, ge=0, description="Rollbacks per run; later spikes are skipped.")

    def spike_config(self) -> SpikeConfig:
        return SpikeConfig(window=self.window, threshold=self.threshold,
                           min_rel_jump=self.min_rel_jump, warmup=self.warmup,
                           persist=self.persist)


class PretrainSpec(SpecBase):
    kind: Literal["pretrain"]
    model: ModelSection = Field(default_factory=ModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    data: DataSection = Field(default_factory=DataSection)
    stability: StabilitySection = Field(default_factory=StabilitySection)

    @property
    def total_steps(self) -> int:
        """Read by the launcher for progress and ETA."""
        return self.train.steps

    def for_launch(self) -> PretrainSpec:
        """A relative data.path is pinned to where `wb launch` ran."""
        if self.data.path in (None, "", "stdlib"):
            return self
        spec = self.model_copy(deep=True)
        spec.data.path = str(Path(self.data.path).expanduser().resolve())
        return spec

    @model_validator(mode="after")
    def _consistent(self) -> PretrainSpec:
        if self.resources.procs != 1:
            raise ValueError(
                f"resources.procs = {self.resources.procs}: multi-process pretraining is not "
                "available in this version — set resources.procs=1")
        try:
            self.model.gpt_config()
        except ValueError as exc:
            raise ValueError(f"model: {exc}") from None
        if self.train.batch_size % self.train.grad_accum:
            raise ValueError(
                f"train.grad_accum ({self.train.grad_accum}) must divide train.batch_size "
                f"({self.train.batch_size}) — change one of them")
        if self.stability.spike_policy == "rollback" and self.train.checkpoint_every == 0:
            raise ValueError(
                "stability.spike_policy = rollback needs checkpoints to roll back to — set "
                "train.checkpoint_every > 0")
        if self.data.path not in (None, "", "stdlib") and \
                not Path(self.data.path).expanduser().exists():
            raise ValueError(f"data.path: no such file or directory {self.data.path!r} — "
                             "point it at a text file, a directory or a JSONL file")
        if self.optim.warmup_steps >= self.train.steps:
            raise ValueError(
                f"optim.warmup_steps ({self.optim.warmup_steps}) must be less than train.steps "
                f"({self.train.steps}) — lower it")
        return self


# ----------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full fp32 on the CPU (where bf16 matmuls are slow)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_data(spec: PretrainSpec, ctx: Context) -> CachedCorpus:
    """Tokenize (or reuse) the corpus; the cache lives in the store, shared by runs."""
    d = spec.data
    options: dict[str, Any] = {"val_permille": d.val_permille, "max_bytes": d.max_bytes}
    if d.path not in (None, "", "stdlib"):
        options["text_field"] = d.text_field
    return open_corpus(d.path, ctx.run.root / "cache" / "data", **options)


def build_model(spec: PretrainSpec, device: torch.device) -> GPT:
    return GPT(spec.model.gpt_config()).to(device)


def param_groups(spec: PretrainSpec, routing: Routing) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters per optimizer group, for update / weight RMS."""
    if spec.optim.name == "adamw":
        return {"adamw": [p for _, p in routing.muon + routing.adamw]}
    return {name: [p for _, p in params]
            for name, params in (("muon", routing.muon), ("adamw", routing.adamw)) if params}


def svd_params(model: GPT) -> dict[str, torch.nn.Parameter]:
    """A few hidden matrices to track SVD entropy on: q_proj and up_proj, first/last layer."""
    layers = sorted({0, len(model.blocks) - 1})
    named = dict(model.named_parameters())
    return {name: named[name] for i in layers
            for name in (f"blocks.{i}.attn.q_proj.weight", f"blocks.{i}.mlp.up_proj.weight")}


# ----------------------------------------------------------------------------- schedule


def lr_at(spec: PretrainSpec, step: int) -> float:
    """Learning rate of (1-based) step: linear warm-up, then cosine or WSD to min_lr_ratio."""
    o, total = spec.optim, spec.train.steps
    if step <= o.warmup_steps:
        return o.lr * step / o.warmup_steps
    floor = o.min_lr_ratio
    if o.schedule == "cosine":
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    decay_steps = max(1, round(o.decay_frac * total))
    decay_start = max(o.warmup_steps, total - decay_steps)
    if step <= decay_start:
        return o.lr
    progress = (step - decay_start) / max(1, total - decay_start)
    return o.lr * (1 - (1 - floor) * min(1.0, progress))


# ----------------------------------------------------------------------------- faults


@dataclass
class Faults:
    """Test-only fault injection (module docstring): never set these in real runs."""

    corrupt: set[int] = field(default_factory=set)
    nan: set[int] = field(default_factory=set)
    sleep_s: float = 0.0

    @classmethod
    def from_env(cls) -> Faults:
        def steps(name: str) -> set[int]:
            raw = os.environ.get(name, "")
            return {int(s) for s in raw.split(",") if s.strip()}

        return cls(steps("WB_FAULT_CORRUPT_STEPS"), steps("WB_FAULT_NAN_STEPS"),
                   float(os.environ.get("WB_FAULT_SLEEP_S") or 0))

    def batch(self, step: int, x: torch.Tensor, y: torch.Tensor, seed: int,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        if step not in self.corrupt:
            return x, y
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return (torch.randint(0, 256, x.shape, generator=gen, dtype=x.dtype),
                torch.full_like(y, VOCAB_SIZE - 1))  # id 259: a spare that never occurs


# ----------------------------------------------------------------------------- train step


@dataclass
class StepOut:
    loss: float
    grad_norm: float
    max_logits: torch.Tensor  # [n_layer, n_head] float32

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def forward_backward(model: GPT, optimizers: list[torch.optim.Optimizer], loader: BatchLoader,
                     spec: PretrainSpec, step: int, device: torch.device,
                     faults: Faults) -> StepOut:
    """Gradients of one step (grad_accum micro-batches), clipped. No update yet."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    accum = spec.train.grad_accum
    total = torch.zeros((), device=device)
    max_logits = None
    for _ in range(accum):
        data_step = loader.step // accum + 1  # the step that reads this batch in a plain run
        x, y = faults.batch(data_step, *next(loader), seed=spec.seed)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            out = model(x, y, track_max_logits=True)
        loss = out.loss / accum
        if data_step in faults.nan:
            loss = loss * float("nan")
        loss.backward()
        total += loss.detach()
        m = out.max_logits
        max_logits = m if max_logits is None else torch.maximum(max_logits, m)
    clip = spec.optim.grad_clip if spec.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    assert max_logits is not None
    return StepOut(float(total), float(grad_norm), max_logits.float())


def optimizer_step(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()


def clip_heads(model: GPT, spec: PretrainSpec, max_logits: torch.Tensor):
    """QK-Clip after the step, for muonclip (the ClipResult), else None."""
    if spec.optim.name != "muonclip":
        return None
    return qk_clip([block.attn for block in model.blocks], max_logits, tau=spec.optim.tau)


def apply_update(model: GPT, optimizers: list[torch.optim.Optimizer], spec: PretrainSpec,
                 lr: float, max_logits: torch.Tensor):
    """Optimizer step at `lr`, then QK-Clip for muonclip. Returns the ClipResult or None."""
    optimizer_step(optimizers, lr)
    return clip_heads(model, spec, max_logits)


def drop_update(optimizers: list[torch.optim.Optimizer]) -> None:
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- eval


@torch.no_grad()
def evaluate(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device) -> float:
    model.eval()
    losses = []
    for x, y in batches:
        with autocast(device):
            losses.append(model(x.to(device), y.to(device)).loss.float())
    model.train()
    return float(torch.stack(losses).mean())


# ----------------------------------------------------------------------------- metrics


PEAK_BF16_FLOPS = {  # dense bf16 tensor-core peak, FLOP/s; matched against the device name
    "H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10": 125e12, "4090": 165e12,
    "3090": 71e12, "V100": 125e12, "B200": 2250e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


@torch.no_grad()
def rms(params: list[torch.Tensor]) -> float:
    numel = sum(p.numel() for p in params)
    if not numel:
        return 0.0
    norms = torch._foreach_norm([p.detach().float() for p in params])
    return float(torch.sqrt(torch.stack(norms).square().sum() / numel))


@torch.no_grad()
def svd_entropy(w: torch.Tensor) -> float:
    """-sum p log p / log n with p_i = s_i^2 / sum s^2: 1 for a flat spectrum, 0 for rank 1."""
    s = torch.linalg.svdvals(w.detach().float())
    p = s.square() / s.square().sum().clamp_min(1e-30)
    h = -(p * p.clamp_min(1e-30).log()).sum()
    return float(h / math.log(max(2, s.numel())))


class Snapshot:
    """Parameters before an optimizer step, to measure the update it makes."""

    def __init__(self, groups: dict[str, list[torch.nn.Parameter]]):
        self.groups = groups
        self.before = {g: [p.detach().clone() for p in ps] for g, ps in groups.items()}

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        out = {}
        for g, ps in self.groups.items():
            deltas = torch._foreach_sub([p.detach() for p in ps], self.before[g])
            out[f"optim/update_rms/{g}"] = rms(deltas)
            out[f"optim/weight_rms/{g}"] = rms(ps)
        return out


# ----------------------------------------------------------------------------- checkpoints

STEP_PREFIX = "step-"


def checkpoints_in(folder: Path | None) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first (temporary folders are ignored)."""
    if folder is None or not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(STEP_PREFIX)
             and (p / "state.pt").is_file() and (p / "model.safetensors").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(STEP_PREFIX)))


@dataclass
class TrainState:
    """Everything besides weights and optimizers that a resume must restore."""

    step: int = 0
    rollbacks: int = 0


def save_checkpoint(folder: Path, model: GPT, optimizers: list[torch.optim.Optimizer],
                    loader: BatchLoader, detector: SpikeDetector, state: TrainState,
                    spec: PretrainSpec, keep: int) -> Path:
    """Write step-NNNNNNNN/ atomically (temporary folder, then rename) and prune old ones."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{STEP_PREFIX}{state.step:08d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
    torch.save({
        "step": state.step,
        "rollbacks": state.rollbacks,
        "optimizers": [opt.state_dict() for opt in optimizers],
        "loader": loader.state_dict(),
        "detector": detector.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        },
        "schedule": {"step": state.step, "lr": lr_at(spec, max(1, state.step)),
                     "total_steps": spec.train.steps},
        "optimizer": spec.optim.name,
    }, tmp / "state.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if final.exists():  # re-saving a step (after a rollback): keep the old one until done
        old = folder / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints_in(folder)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: GPT, optimizers: list[torch.optim.Optimizer],
                    loader: BatchLoader, detector: SpikeDetector) -> TrainState:
    device = next(model.parameters()).device
    load_model(model, str(path / "model.safetensors"), device=str(device))
    # On the CPU: load_state_dict moves tensors to the parameters' device, except AdamW's
    # step counters, which must stay on the CPU (else one sync per parameter per step).
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    for opt, sd in zip(optimizers, state["optimizers"], strict=True):
        hparams = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        opt.load_state_dict(sd)
        for group, fresh in zip(opt.param_groups, hparams, strict=True):
            group.update(fresh)  # this run's spec and device decide wd, betas, NS dtype
    loader.load_state_dict(state["loader"])
    detector.load_state_dict(state["detector"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return TrainState(step=int(state["step"]), rollbacks=int(state["rollbacks"]))


def clean_tmp(folder: Path) -> None:
    """Remove half-written checkpoints left by a killed process."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- run


@dataclass
class Trainer:
    """The pieces `run` builds, and the loop over them. One method per idea."""

    spec: PretrainSpec
    ctx: Context
    device: torch.device
    model: GPT
    optimizers: list[torch.optim.Optimizer]
    loader: BatchLoader
    val: list[tuple[torch.Tensor, torch.Tensor]]
    detector: SpikeDetector
    groups: dict[str, list[torch.nn.Parameter]]
    faults: Faults
    state: TrainState = field(default_factory=TrainState)
    saved_step: int = -1
    print_every: int = 1

    # -- checkpoints ------------------------------------------------------------------

    def save(self, reason: str) -> None:
        if self.saved_step == self.state.step:
            return
        path = save_checkpoint(self.ctx.checkpoint_dir, self.model, self.optimizers,
                               self.loader, self.detector, self.state, self.spec,
                               self.spec.train.keep_checkpoints)
        self.saved_step = self.state.step
        self.ctx.run.event("checkpoint", step=self.state.step, path=str(path), reason=reason)

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
        spike = self.detector.update(step, out.loss)
        if spike is None:
            return "apply"
        action = self._limit_rollbacks("apply" if policy == "alert" else policy)
        run.event("loss_spike", step=step, severity="warning", value=spike.value,
                  baseline=spike.baseline, score=spike.score, rel_jump=spike.rel_jump,
                  policy=policy, action=action)
        return action

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
        skipped = past_window - self.loader.step
        self.loader.step = past_window
        self.state.rollbacks = rollbacks + 1
        self.saved_step = -1
        self.save("rollback")  # a resume must not replay the offending window
        self.ctx.run.event("rollback", step=step, severity="warning", from_step=step,
                           to_step=self.state.step, checkpoint=str(path),
                           skipped_batches=skipped)
        print(f"pretrain: rollback from step {step} to {self.state.step}, skipping {skipped} "
              "batches", flush=True)

    # -- one step, metrics -----------------------------------------------------------

    def step(self) -> None:
        spec, run = self.spec, self.ctx.run
        step = self.state.step + 1
        t0 = time.perf_counter()
        out = forward_backward(self.model, self.optimizers, self.loader, spec, step,
                               self.device, self.faults)
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
            snap = Snapshot(self.groups) if log_now else None
            optimizer_step(self.optimizers, lr)
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
            tokens = spec.train.batch_size * spec.model.seq_len
            metrics.update({"train/lr": lr, "train/grad_norm": out.grad_norm,
                            "perf/tokens_per_s": tokens / dt,
                            "attn/max_logit": float(out.max_logits.max())})
            if out.finite:  # a NaN step is described by its `nan` event, not the curves
                metrics["train/loss"] = out.loss
            else:
                metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
            if (peak := peak_flops(self.device)) is not None:
                metrics["perf/mfu"] = self.model.flops_per_token() * tokens / dt / peak
            if spec.optim.name == "muonclip":
                metrics["qkclip/clipped_heads"] = clip.clipped if clip is not None else 0
            run.log(metrics, step=step)
        if clip is not None and clip.clipped:
            run.event("qk_clip", step=step, count=clip.clipped,
                      min_gamma=float(clip.gamma.min()), tau=spec.optim.tau)
        if step % spec.train.max_logit_every == 0:
            run.log_matrix("attn/max_logit_heads", out.max_logits, step=step)
        if spec.train.svd_every and step % spec.train.svd_every == 0:
            run.log({f"svd/entropy/{name}": svd_entropy(p)
                     for name, p in svd_params(self.model).items()}, step=step)
        if step % spec.train.eval_every == 0 or step == spec.train.steps:
            run.log({"val/loss": evaluate(self.model, self.val, self.device)}, step=step)
        if step % self.print_every == 0 or step == spec.train.steps:
            print(f"step {step}/{spec.train.steps} loss {out.loss:.4f} lr {lr:.2e} "
                  f"max_logit {float(out.max_logits.max()):.1f} {dt * 1000:.0f} ms", flush=True)
        if spec.train.checkpoint_every and step % spec.train.checkpoint_every == 0:
            self.save("periodic")

    def fit(self) -> None:
        while self.state.step < self.spec.train.steps:
            if self.ctx.should_stop():
                self.save("stop")
                print(f"pretrain: stopped at step {self.state.step}", flush=True)
                return
            self.step()
        self.save("end")


def ns_dtype(choice: str, device: torch.device) -> torch.dtype:
    """bf16 Newton-Schulz where it is fast (CUDA), fp32 elsewhere."""
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, choice)


def run(spec: PretrainSpec, ctx: Context) -> None:
    """Entry point of the `pretrain` kind (see the module docstring)."""
    seed_everything(spec.seed)
    if spec.train.cpu_threads:
        torch.set_num_threads(spec.train.cpu_threads)
    device = pick_device()
    run_ = ctx.run
    run_.set_total_steps(spec.train.steps)

    corpus = build_data(spec, ctx)
    micro = spec.train.batch_size // spec.train.grad_accum
    loader = BatchLoader(corpus.train, micro, spec.model.seq_len, seed=spec.seed)
    val = eval_batches(corpus.val if len(corpus.val) > spec.model.seq_len else corpus.train,
                       micro, spec.model.seq_len, spec.train.eval_batches)
    run_.event("stage", step=0, stage="data_ready", train_tokens=len(corpus.train),
               val_tokens=len(corpus.val), cache=str(corpus.path))
    print(f"pretrain: data {len(corpus.train):,} train / {len(corpus.val):,} val tokens "
          f"({corpus.path})", flush=True)

    model = build_model(spec, device)
    routing = route(model)
    print(routing.format_table(), flush=True)
    optimizers = build_optimizers(model, spec.optim.name, spec.optim.lr,
                                  spec.optim.weight_decay, betas=spec.optim.betas,
                                  adjust_lr_fn=spec.optim.adjust_lr_fn,
                                  ns_dtype=ns_dtype(spec.optim.ns_dtype, device))
    variant = None if spec.optim.name == "adamw" else spec.optim.adjust_lr_fn
    run_.update_config({"routing": routing.table(), "muon_variant": variant,
                        "ns_dtype": str(ns_dtype(spec.optim.ns_dtype, device)),
                        "device": str(device), "params": model.num_params(),
                        "flops_per_token": model.flops_per_token()})
    print(f"pretrain: {spec.optim.name} (muon variant {variant}), "
          f"{model.num_params():,} params on {device}", flush=True)

    trainer = Trainer(spec=spec, ctx=ctx, device=device, model=model, optimizers=optimizers,
                      loader=loader, val=val,
                      detector=SpikeDetector(spec.stability.spike_config()),
                      groups=param_groups(spec, routing), faults=Faults.from_env(),
                      print_every=max(1, spec.train.steps // 50))
    clean_tmp(ctx.checkpoint_dir)
    source = trainer.latest_checkpoint()
    if source is not None:
        trainer.restore(source)
        trainer.saved_step = trainer.state.step if source.parent == ctx.checkpoint_dir else -1
        run_.event("checkpoint", step=trainer.state.step, action="resumed", path=str(source))
        print(f"pretrain: resumed from {source} at step {trainer.state.step}", flush=True)
    elif ctx.resume_dir is not None:
        print(f"pretrain: no checkpoint in {ctx.resume_dir}; starting from scratch", flush=True)
    if source is None and spec.stability.spike_policy == "rollback":
        trainer.save("initial")  # something to roll back to before the first checkpoint
    run_.event("stage", step=trainer.state.step, stage="training",
               start_step=trainer.state.step)
    trainer.fit()
    if not ctx.should_stop():
        run_.event("stage", step=trainer.state.step, stage="done")


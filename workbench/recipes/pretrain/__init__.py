"""The `pretrain` kind: GPT pretraining with Muon, MuonClip (Muon + QK-Clip) or AdamW.

`model.arch = "recurrent-depth"` trains a Huginn-style recurrent-depth model instead
(models/recurrent_depth.py) with the same optimizers, metrics and checkpoints:
- each micro-batch's forward runs a recurrence count drawn from Huginn's log-normal
  Poisson (mean `model.mean_recurrence`), seeded by (seed, step, micro-batch) so ranks
  agree and a resumed run draws the same counts; the gradient flows through the last
  `model.backprop_depth` iterations only. `train/recurrence` logs the count drawn (the
  mean over micro-batches with grad accumulation);
- QK stats are AGGREGATED over iterations: `attn/max_logit_heads` has one row per
  distinct layer (prelude, then core, then coda), and a core layer's row is its max
  over every iteration of the step. QK-Clip rescales the core's shared weights from
  that max, which bounds every iteration's logit;
- the spike detector compares each step with its own draw's level: a short draw's loss
  is higher by design (fewer iterations), so one baseline over all draws flagged dozens
  of false spikes in depth-tiny (41 in 800 steps, 32 on draws of 1 to 4), and watching
  only draws at or above the mean left short ones unwatched (and still fired 47 times
  in 1,500 steps once the task loss neared 1e-4). A `BucketedSpikeDetector`
  (signals/spikes.py) keeps a rolling median per quarter-octave bucket of r and watches
  the loss divided by it, on a log scale (9 events on the same curve, 2 since the
  detector forecasts a trend-following level; `wb bench spikes`). NaN handling is
  unchanged.

Continued pretraining (`model.init = "hf:<folder>"`): the model starts from a Llama /
Qwen2 / Qwen3 checkpoint folder (models/hf.py), whose config.json fixes its shape
(only model.seq_len and model.attn_backend may be set), and the corpus is tokenized with
the checkpoint's own tokenizer (each document followed by its EOS; the cache is keyed
by the tokenizer). Everything else (Muon routing, QK-Clip, max logits, spikes,
checkpoints, resume) is the same; a resumed run loads its checkpoint over the
checkpoint folder's weights. The run config records `model_init` and `tokenizer`, and
each checkpoint's model.json lets `wb export-model` write a Hugging Face folder.

Components, torchtitan style (config in, one small module per idea). Pretraining's
own are here:
- spec.py: `PretrainSpec`, the shared sections plus `data` (no torch: a bad spec is
  refused before torch loads); data_spec.py: the `data` section;
- data.py: tokenizer, corpora, token caches, loaders (one source or a mixture);
- train.py: `run`, which builds the data, then trains through the shared loop.
The rest is the kit every trained kind shares (the depth kind trains through it too),
in recipes/common/:
- model_spec.py, trained_spec.py: the model, optim, train and stability sections;
- schedule.py: warm-up then cosine or WSD, a pure function of the step;
- step.py: one step (forward, backward, clip), the update, evaluation; faults.py: the
  test faults; precision.py: bf16 autocast on CUDA;
- train_metrics.py: update / weight RMS, SVD entropy, MFU;
- builders.py: model, optimizers, spike detector from the spec;
- trainer.py: the `Trainer` loop, `build_trainer`, `train`;
- trainer_checkpoint.py: what a checkpoint holds and exact resume, written through
  checkpoint.py (atomic, fsynced, keep-last-N); model_record.py: model.json, torch-free;
- parallel.py: data parallelism through accelerate (a pass-through in one process).

Data parallel (`resources.procs = N`): the run's worker starts N ranks under torch's
elastic launcher; they split every global batch (train.batch_size stays the global
batch, so the loss curve matches one process's), all-reduce gradients through DDP,
shard Muon's momentum and Newton-Schulz work (each rank owns some matrices), and
agree on every spike / clip / stop decision.
Rank 0 logs and checkpoints; the run has one row. See recipes/common/parallel.py. With
`resources.nodes = M` there are M * N ranks (torchrun on each node, launch/
distributed.py): the split is by global rank and world size, so M nodes of N ranks
see the very batches of one node with M * N ranks. Only node 0 (global rank 0)
writes checkpoints, in its own store: a resume or rollback on several machines needs
node 0's checkpoint folder visible on every node.

Steps are 1-based: step s is the s-th optimizer update, `train/loss` at step s is the
loss of the batch that update s was computed from, and a checkpoint "at step s" holds
the state after s updates (training resumes with step s + 1).

Metrics (names in docs/ARCHITECTURE.md): every `train.log_every` steps `train/loss`, `train/lr`,
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

Test-only fault hooks (recipes/common/faults.py; environment variables, read at
start; never set them in real runs): WB_FAULT_CORRUPT_STEPS="12,30" replaces the
batches of those steps with random input tokens and a constant target token, the
model's last id (259 for bytes, a spare that never occurs in the data), so the loss is
genuinely high; WB_FAULT_NAN_STEPS="15" makes the loss of those steps NaN;
WB_FAULT_SLEEP_S="0.05" sleeps that long every step (lets a test kill a run mid-way).
Steps name *data positions*: the batches step s reads in a run without rollbacks. So a
corrupted batch behaves like bad data: a rollback that skips past it does not meet it
again.
"""

from __future__ import annotations

from typing import Any

# Names load on first use: the registry imports `spec` alone, which keeps torch out of
# spec validation. `pretrain.lr_at` etc. still work for callers and tests; the shared
# training kit they name lives in recipes/common/ (the package docstring lists where).
_EXPORTS = {
    "pretrain.spec": ("PretrainSpec", "DataSection"),
    "common.model_spec": ("ModelSection",),
    "common.trained_spec": ("OptimSection", "TrainSection", "StabilitySection",
                            "ORIGINAL_MUON_LR"),
    "common.schedule": ("lr_at",),
    "common.precision": ("autocast",),
    "common.faults": ("Faults",),
    "common.step": ("StepOut", "forward_backward", "optimizer_step", "clip_heads",
                    "apply_update", "drop_update", "evaluate"),
    "common.train_metrics": ("param_groups", "svd_params", "peak_flops", "rms",
                             "svd_entropy", "Snapshot", "PEAK_BF16_FLOPS"),
    "common.checkpoint": ("checkpoints_in", "clean_tmp", "STEP_PREFIX"),
    "common.model_record": ("MODEL_JSON", "model_record", "read_model_record"),
    "common.trainer_checkpoint": ("TrainState", "save_checkpoint", "load_checkpoint"),
    "pretrain.data": ("TrainData", "build_data", "build_tokenizer", "check_data",
                      "train_bpe"),
    "common.builders": ("build_model", "build_optimizer_list", "ns_dtype",
                        "record_ns_dtype"),
    "common.trainer": ("Trainer",),
    "pretrain.train": ("run",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'workbench.recipes.pretrain' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"workbench.recipes.{module}"), name)

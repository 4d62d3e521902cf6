"""The `depth` kind: a recurrent-depth model (Huginn, Geiping et al. 2025) trained where
depth matters, then measured at inference.

Stages (events `stage`: training, evaluating, done):
1. Training, through the shared `Trainer` (recipes/common/trainer.py, the pretrain
   kind's too: same optimizers, QK-Clip, spike policies, checkpoints, metrics; see
   recipes/pretrain for what they log): the built-in chain task
   (task.py: a digit and up to `task.max_ops` operations, mod 10), loss on the answer
   digits only. Each step draws its recurrence count (log-normal Poisson, mean
   `model.mean_recurrence`) and backpropagates through the last
   `model.backprop_depth` iterations. Logs `train/loss`, `train/recurrence`,
   `val/loss`, `attn/max_logit_heads` (core rows: max over iterations), ...
2. Evaluation (evaluate.py), logged at the last training step, on held-out problems
   (task.py: a hash split keeps about 1 problem in 8 out of training; `val/loss` reads
   them too):
   - `eval/accuracy/r<N>` for N in `eval.recurrences` (fixed recurrence count) and
     `perf/tokens_per_s/r<N>` (greedy decoding speed, shared cache);
     `eval/accuracy_seen`: at the largest N on training-split problems, to compare;
   - adaptive exit by `eval.exit`, every token of the evaluation sequences decoded
     with it: `eval/accuracy` (adaptive), `eval/accuracy_fixed_shared` (same answers
     at the largest N, decoded the same way on the shared cache: the gap is the exit
     rule's), `eval/accuracy_fixed` (largest N, full cache: the gap adds cache
     sharing), `depth/steps_mean` (per token), `depth/steps_mean_answers` (on the
     tokens that give answers), `depth/steps_fixed`, `depth/steps_ratio` (core
     iterations, adaptive / fixed), `depth/compute_ratio` (FLOPs, adaptive / fixed,
     counting the coda + LM head at every readout: `RecurrentDepthGPT.decode_flops`),
     `depth/readouts_mean`, distribution `depth/steps_per_token` (one value per
     decoded token), `depth/decode_tokens_per_s` (adaptive-exit decoding) and
     `depth/decode_tokens_per_s_fixed` (the same tokens at the largest N);
   - `depth/kv_bytes` (shared cache: one KV per token per core layer) and
     `depth/kv_bytes_unshared` (full cache at the largest N);
   - self-speculative decoding: `depth/spec_accept_rate`, `perf/spec_tokens_per_s`,
     `perf/plain_tokens_per_s`. `perf/tokens_per_s` is only ever the training
     throughput;
   - event `depth_sample` {tokens, depths, rule}: an evaluation sequence decoded with
     adaptive exit, each token with the recurrences behind it (the model's own digit
     at each answer), for the dashboard's colored text; event `depth_eval` holds
     every figure.

`wb stop` during training checkpoints; during evaluation it stops between two
measurements, and `wb resume` goes straight to evaluating the last checkpoint.
"""

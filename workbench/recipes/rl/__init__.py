"""Asynchronous RL for reasoning (issue 5): generators, trainer, verifiers, GRPO, tasks.

- `spec`: `RLSpec` (torch-free); `trainer`: `run`, the trainer and the roles it starts;
- `generator`: `generator_main`, one generator process; `remote`: a generator on another
  host (`rollout.hosts`), started over ssh;
- `transport`: the ZeroMQ hub and links, HMAC-sealed; `messages`: what the roles send;
- `verifier`: the verifier pool and the built-in checks; `tasks`: the built-in tasks and
  JSONL sets; `problem`: `Problem` and the completion format they share;
- `grpo`: advantages and the clipped token loss; `update`: log-probs and the gradient;
  `warmstart`: the built-in supervised warm start.

See docs/ARCHITECTURE.md (after Magistral, PipelineRL and AReaL). Submodules are imported
explicitly (no imports here), so that a verifier process or a spec check pulls in only
what it needs.
"""

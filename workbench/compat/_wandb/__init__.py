"""The parts of `workbench.compat.wandb`, one job per module (import that module, not these).

  - `errors`: `Error` and its subclasses, `CompatWarning`, `_warn`, the refused calls.
  - `media`: `Image`, `Table`, ... and `plot`, accepted and skipped when logged.
  - `values`: `Histogram`, `Settings`, `AlertLevel`; classifying and converting values.
  - `config`: `Config`, `Summary` and the stand-ins used before `wandb.init()`.
  - `run`: `Metric` and `Run`, where W&B's step and summary rules live.

Each imports only those above it in this list, so the imports stay acyclic;
`workbench.compat.wandb` holds the module state and re-exports the public names.
"""

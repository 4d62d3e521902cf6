"""Log a Hugging Face `Trainer` into the workbench: one changed line.

    from workbench.integrations.transformers import WorkbenchCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[WorkbenchCallback()])             # the one line
    trainer.train()                                                # status "finished"

`WorkbenchCallback("my-run")` names the run; otherwise `TrainingArguments.run_name`
does (when set to something other than the output dir), else the store calls it
custom-N. Under `wb launch` (WB_RUN_ID set) it attaches to the launched run instead.
Pass `report_to=[]` (or "none") to keep the Trainer from also starting its own trackers.

Trainer log keys become the workbench's metric names (docs/ARCHITECTURE.md): loss ->
train/loss, learning_rate -> train/lr, grad_norm -> train/grad_norm, eval_loss -> val/loss
(drawn with train/loss), other eval_X / test_X -> eval/X / test/X, any other key -> train/KEY;
a key that already holds a "/" is kept. The end-of-training totals (train_runtime,
train_loss = mean loss, total_flos, ...) are one value each, not a series: like W&B's
summary they go to the run's config under "summary". Only world process zero writes.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from workbench.integrations import RunSink
from workbench.tracking import Run

__all__ = ["WorkbenchCallback", "metric_name"]

_RENAMED = {"loss": "train/loss", "learning_rate": "train/lr", "grad_norm": "train/grad_norm",
            "eval_loss": "val/loss"}
_SUMMARY = frozenset({"train_runtime", "train_samples_per_second", "train_steps_per_second",
                      "train_loss", "total_flos"})


def metric_name(key: str) -> str:
    """The workbench metric name for a Trainer log key."""
    if key in _RENAMED:
        return _RENAMED[key]
    if "/" in key:
        return key
    for split in ("eval", "test"):
        if key.startswith(f"{split}_"):
            return f"{split}/{key[len(split) + 1:]}"
    return f"train/{key}"


class WorkbenchCallback(TrainerCallback):
    """A `TrainerCallback` that records the training run in the workbench store."""

    def __init__(self, run_name: str | None = None, *, kind: str = "custom",
                 store: str | os.PathLike[str] | None = None) -> None:
        """`run_name`: the run's name (default: args.run_name). `kind`: the run kind shown
        in `wb ls`. `store`: the store folder (default: WB_STORE, else ./runs)."""
        self.run_name = run_name
        self.kind = kind
        self.store = store
        self._sink = RunSink()

    @property
    def run(self) -> Run | None:
        """The workbench `Run` while training, for logging extra records to it."""
        return self._sink.run

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self._sink.run is not None:
            return
        config: dict[str, Any] = {"trainer": args.to_dict()}  # to_dict() masks hub tokens
        model_config = getattr(model, "config", None)
        if hasattr(model_config, "to_dict"):
            config["model"] = model_config.to_dict()
        name = self.run_name or (args.run_name if args.run_name != args.output_dir else None)
        run = self._sink.open(name, config, kind=self.kind,
                              store=None if self.store is None else os.fspath(self.store))
        if state.max_steps and state.max_steps > 0:
            run.set_total_steps(state.max_steps)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        summary = {k: v for k, v in logs.items() if k in _SUMMARY}
        series = {metric_name(k): v for k, v in logs.items() if k not in _SUMMARY}
        if series:
            self._sink.log(series, step=state.global_step)
        if summary:
            self._sink.update_config({"summary": summary})

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self._sink.finish("finished")

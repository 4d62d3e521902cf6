"""One-line adapters that make existing training scripts log into the workbench.

- accelerate: ``Accelerator(log_with=WorkbenchTracker())``
  (see `workbench.integrations.accelerate`)
- Hugging Face Trainer: ``Trainer(..., callbacks=[WorkbenchCallback()])``
  (see `workbench.integrations.transformers`)

This package imports neither library (each adapter module imports its own), so that
`import workbench` stays light. What both adapters share lives here: `RunSink`, which
opens the run lazily, turns whatever a training loop hands over into what the store
takes, and never lets an odd value type crash the loop.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping
from typing import Any

from workbench.store import Store, name_from
from workbench.tracking import Run, init

__all__ = ["RunSink", "run_name"]

logger = logging.getLogger("workbench.integrations")


def run_name(candidate: Any) -> str | None:
    """A valid run name made from `candidate` (a project name, an output dir), or None
    (the store then names it KIND-N): "my project/v2" becomes "my-project-v2"."""
    return name_from(str(candidate)) if candidate else None


class RunSink:
    """A lazily opened `Run` that accepts the values training loops log.

    Frameworks hand over tensors, numpy scalars, strings, nested dicts and the odd
    object. `Run.log` takes numbers only and refuses the whole call otherwise, which
    is right for the SDK but would crash someone's training loop here. So:
    - numbers (bool, int, float, numpy/torch scalars and one-element tensors) are scalars;
    - nested dicts are flattened to ``key/sub`` (TensorBoard's add_scalars does the same);
    - strings become a ``text`` event when they change (W&B keeps them as history, the
      store's scalars cannot; an event keeps the step and shows in ``wb events``);
    - anything else is skipped with one warning per key.
    """

    def __init__(self) -> None:
        self.run: Run | None = None
        self._finished: Run | None = None  # kept to reopen for metrics after finish()
        self._texts: dict[str, str] = {}
        self._warned: set[str] = set()

    @property
    def opened(self) -> bool:
        """Whether a run was opened (it may be finished since)."""
        return self.run is not None or self._finished is not None

    def open(self, name: str | None = None, config: Mapping[str, Any] | None = None, *,
             kind: str = "custom", store: str | None = None) -> Run:
        """Start the run, or attach to the launched one (WB_RUN_ID; workbench.init)."""
        if self.run is None:
            self.run = init(name=run_name(name), config=config, kind=kind, store=store)
            self._finished = None
        return self.run

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Merge into the run's config; in a launched run the spec's values win, as in init()."""
        run = self._current()
        run.update_config(dict(values), keep_existing=not run.owner)

    def log(self, values: Mapping[str, Any], step: Any = None) -> None:
        """Log a dict of mixed values at `step` (None: the run's next step)."""
        run = self._current()
        at = self._step(step)
        scalars: dict[str, float] = {}
        texts: dict[str, str] = {}
        self._flatten(values, "", scalars, texts)
        if scalars:
            run.log(scalars, step=at)
        for key, text in texts.items():
            if self._texts.get(key) != text:
                self._texts[key] = text
                run.event("text", step=at, key=key, value=text)

    def finish(self, status: str = "finished") -> None:
        """Flush and close; an owned run records `status` (a launched run keeps its own)."""
        if self.run is not None:
            self.run.finish(status)
            self._finished, self.run = self.run, None

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("workbench: %s", message)

    # -- internals ----------------------------------------------------------------------

    def _current(self) -> Run:
        return self.run or self._reopen() or self.open()

    def _reopen(self) -> Run | None:
        """A writer on the finished run, for `trainer.evaluate()` after `train()` and the
        like: the metrics belong to that run. It does not own the status (already
        recorded) and is closed at exit."""
        done = self._finished
        if done is None:
            return None
        st = Store(done.root)
        self.run = Run(st, st.get_run(done.id), owner=False, own_store=True)
        self._finished = None
        return self.run

    def _step(self, step: Any) -> int | None:
        if step is None:
            return None
        try:
            return operator.index(step)
        except TypeError:
            if isinstance(step, float) and step.is_integer():
                return int(step)
            self.warn_once("<step>", f"step {step!r} is not an integer; using the run's next step")
            return None

    def _flatten(self, values: Mapping[str, Any], prefix: str,
                 scalars: dict[str, float], texts: dict[str, str]) -> None:
        for k, v in values.items():
            key = f"{prefix}{k}"
            if isinstance(v, str):
                texts[key] = v
            elif isinstance(v, Mapping):
                self._flatten(v, f"{key}/", scalars, texts)
            elif v is None:
                continue  # "no value this time": nothing to say
            else:
                try:
                    scalars[key] = float(v)
                except (TypeError, ValueError, RuntimeError):  # RuntimeError: big tensors
                    self.warn_once(key, f"skipping {key!r}: cannot log a "
                                        f"{type(v).__name__} as a scalar")

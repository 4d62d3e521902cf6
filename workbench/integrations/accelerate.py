"""Log an accelerate training loop into the workbench: one changed line.

    from workbench.integrations.accelerate import WorkbenchTracker

    accelerator = Accelerator(log_with=WorkbenchTracker())        # the one line
    accelerator.init_trackers("my-project", config={"lr": 3e-4})   # run named "my-project"
    accelerator.log({"train/loss": loss.item()}, step=step)
    accelerator.end_training()                                     # status "finished"

`WorkbenchTracker("my-run")` names the run; otherwise the project name does (made
valid for the store, else the run is called custom-N). Under `wb launch` (WB_RUN_ID
set) the tracker attaches to the launched run instead, and the spec's config wins.
Importing this module also registers the tracker by name where accelerate supports it
(`register_tracker_class`), so `Accelerator(log_with="workbench")` works as well.

Only the main process writes: accelerate calls `init_trackers` and `log` on the main
process alone, and the methods here are guarded the same way in case they are called
directly. For what happens to strings, dicts and odd values see `RunSink`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, on_main_process

from workbench.integrations import RunSink
from workbench.tracking import Run

__all__ = ["WorkbenchTracker"]


class WorkbenchTracker(GeneralTracker):
    """An accelerate tracker that writes into the workbench run store."""

    name = "workbench"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_name: str | None = None, *, kind: str = "custom",
                 store: str | os.PathLike[str] | None = None) -> None:
        """`run_name`: the run's name (default: the project name). `kind`: the run kind
        shown in `wb ls`. `store`: the store folder (default: WB_STORE, else ./runs)."""
        super().__init__()
        self.run_name = run_name
        self.kind = kind
        self.store = store
        self._sink = RunSink()

    @property
    def tracker(self) -> Run | None:
        """The workbench `Run` (None before `init_trackers`), for `run.log_dist` and co."""
        return self._sink.run

    @on_main_process
    def start(self) -> None:
        self._open()

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self._open()
        self._sink.update_config(values)

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        if not self._sink.opened:
            self._open()  # accelerate versions without start()
        self._sink.log(values, step)

    @on_main_process
    def finish(self) -> None:
        self._sink.finish("finished")

    def _open(self) -> None:
        if self._sink.run is None:
            self._sink.open(self.run_name or _project_name(), kind=self.kind,
                            store=None if self.store is None else os.fspath(self.store))


def _project_name() -> str | None:
    """The project name given to `Accelerator.init_trackers`.

    accelerate passes it to the trackers it builds from a name, but never to a tracker
    instance, so read it from the `init_trackers` frame up the stack (None if absent).
    """
    frame = sys._getframe(1)
    for _ in range(12):  # start() <- on_main_process wrappers <- init_trackers
        if frame is None:
            break
        if frame.f_code.co_name == "init_trackers" and "project_name" in frame.f_locals:
            name = frame.f_locals["project_name"]
            return name if isinstance(name, str) else None
        frame = frame.f_back
    return None


# Where accelerate has register_tracker_class, log_with="workbench" builds the tracker as
# WorkbenchTracker(project_name, **init_kwargs.get("workbench", {})).
if LOGGER_TYPE_TO_CLASS.get(WorkbenchTracker.name) is not WorkbenchTracker:
    try:
        from accelerate.tracking import register_tracker_class
    except ImportError:  # older accelerate: pass an instance to log_with
        pass
    else:
        register_tracker_class(WorkbenchTracker)

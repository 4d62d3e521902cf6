"""Recipes: one package per experiment kind, each entered as `entry(spec, ctx)`.

The registry of kinds (`Recipe`, `RECIPES`, `register`, `get`) lives in
workbench/kinds.py, below spec.py, and is re-exported here; this module adds the
`Context` a recipe gets from the worker.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.kinds import RECIPES as RECIPES
from workbench.kinds import Recipe as Recipe
from workbench.kinds import get as get
from workbench.kinds import register as register

if TYPE_CHECKING:
    from workbench.tracking import Run


@dataclass
class Context:
    """What a recipe gets from the worker besides its spec."""

    run: Run
    run_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    resume_dir: Path | None = None  # the folder of the run this one resumes

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def should_stop(self) -> bool:
        """True once `wb stop` (SIGTERM) arrived: checkpoint and return."""
        return self.stop.is_set()

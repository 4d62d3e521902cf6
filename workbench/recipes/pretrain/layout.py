"""The checkpoint folder layout, without torch: `wb export-model` finds a run's
checkpoints and refuses bad input before anything heavy loads.

A run's checkpoints live in `<run dir>/checkpoints/step-NNNNNNNN/` (pretrain and RL
alike): model.safetensors and state.pt, plus model.json (pretrain: the model's arch and
config). Temporary folders (`.tmp-*`, `.old-*`) are never complete checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STEP_PREFIX = "step-"
MODEL_JSON = "model.json"


def checkpoints_in(folder: Path | None) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first (temporary folders are ignored)."""
    if folder is None or not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(STEP_PREFIX)
             and (p / "state.pt").is_file() and (p / "model.safetensors").is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    """The step of a `step-NNNNNNNN` folder."""
    return int(path.name.removeprefix(STEP_PREFIX))


def read_model_record(path: Path) -> dict[str, Any] | None:
    """model.json of a checkpoint folder, or None for one written before it existed."""
    file = path / MODEL_JSON
    return json.loads(file.read_text()) if file.is_file() else None

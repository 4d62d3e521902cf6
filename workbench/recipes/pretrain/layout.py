"""The checkpoint folder layout, without torch: `wb export-model` finds a run's
checkpoints and refuses bad input before anything heavy loads.

A run's checkpoints live in `<run dir>/checkpoints/step-NNNNNNNN/` (pretrain and RL
alike; the listing and the write are workbench/recipes/common/checkpoint.py's, shared by
every recipe): model.safetensors and state.pt, plus model.json (pretrain: the model's
arch and config). Temporary folders (`.tmp-*`) are never complete checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.recipes.common.checkpoint import (  # noqa: F401 - re-exported for callers
    STEP_PREFIX,
    checkpoint_step,
    checkpoints_in,
)

MODEL_JSON = "model.json"


def read_model_record(path: Path) -> dict[str, Any] | None:
    """model.json of a checkpoint folder, or None for one written before it existed."""
    file = path / MODEL_JSON
    return json.loads(file.read_text()) if file.is_file() else None

"""model.json: the architecture and config of a trained model's checkpoint, enough to
rebuild the network without the run's spec.

Every checkpoint a `Trainer` writes (pretrain and depth; recipes/common/
trainer_checkpoint.py) holds one, and `wb export-model` reads it to write a Hugging
Face folder. Torch-free, like the folder layout it sits in (recipes/common/
checkpoint.py): `wb export-model` finds a run's checkpoints and refuses bad input
before anything heavy loads. Checkpoints written before model.json existed have none,
and fall back to the run's spec.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

MODEL_JSON = "model.json"


def model_record(model: Any) -> dict[str, Any]:
    """{"arch", "config"} of a GPT or recurrent-depth model (what model.json holds)."""
    from workbench.models.config import GPTConfig

    config = model.config
    arch = "gpt" if isinstance(config, GPTConfig) else "recurrent-depth"
    return {"arch": arch, "config": dataclasses.asdict(config)}


def read_model_record(path: Path) -> dict[str, Any] | None:
    """model.json of a checkpoint folder, or None for one written before it existed."""
    file = path / MODEL_JSON
    return json.loads(file.read_text()) if file.is_file() else None

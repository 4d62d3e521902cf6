"""The arithmetic precision of a training or evaluation forward pass, one rule for every
recipe step and bench that must match it: bf16 autocast on CUDA, fp32 on the CPU."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full fp32 on the CPU (where bf16 matmuls are slow)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

"""Test-only fault injection for the training step (recipes/common/step.py), read from
the environment at start; never set these in real runs.

WB_FAULT_CORRUPT_STEPS="12,30" replaces the batches of those steps with random input
tokens and a constant target token, the model's last id (259 for bytes, a spare that
never occurs in the data), so the loss is genuinely high; WB_FAULT_NAN_STEPS="15" makes
the loss of those steps NaN; WB_FAULT_SLEEP_S="0.05" sleeps that long every step (lets
a test kill a run mid-way). Steps name data positions: the batches step s reads in a
run without rollbacks, so a corrupted batch behaves like bad data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from workbench.data.corpus import VOCAB_SIZE


@dataclass
class Faults:
    """Test-only fault injection (module docstring): never set these in real runs."""

    corrupt: set[int] = field(default_factory=set)
    nan: set[int] = field(default_factory=set)
    sleep_s: float = 0.0
    vocab_size: int = VOCAB_SIZE  # the model's: a corrupted batch stays within its ids

    @classmethod
    def from_env(cls, vocab_size: int = VOCAB_SIZE) -> Faults:
        def steps(name: str) -> set[int]:
            raw = os.environ.get(name, "")
            return {int(s) for s in raw.split(",") if s.strip()}

        return cls(steps("WB_FAULT_CORRUPT_STEPS"), steps("WB_FAULT_NAN_STEPS"),
                   float(os.environ.get("WB_FAULT_SLEEP_S") or 0), vocab_size)

    def batch(self, step: int, x: torch.Tensor, y: torch.Tensor, seed: int,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random inputs and one constant target, the model's last id: for the byte
        vocabulary id 259, a spare that never occurs; for a checkpoint's vocabulary a
        padding row or a rare token. Either way the loss is genuinely high."""
        if step not in self.corrupt:
            return x, y
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return (torch.randint(0, min(256, self.vocab_size), x.shape, generator=gen,
                              dtype=x.dtype),
                torch.full_like(y, self.vocab_size - 1))

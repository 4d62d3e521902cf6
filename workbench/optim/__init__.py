"""Optimizers for the pretraining recipe: parameter routing, Muon, QK-Clip.

- :func:`route` splits a model's parameters: Muon for 2-D hidden matrices, AdamW for
  embeddings, the LM head, norms, biases and every 1-D parameter.
- :class:`Muon` is numerically torch.optim.Muon (same NS, momentum, lr adjustment
  and weight-decay order), with batched Newton-Schulz per shape and an optional
  distributed mode that splits the NS work over data-parallel ranks.
- :func:`build_optimizers` builds the optimizers for ``"muon"``, ``"muonclip"`` or
  ``"adamw"``.
- :func:`qk_clip` is Kimi K2's QK-Clip, applied after the optimizer step
  (MuonClip = Muon + QK-Clip).
"""

from .muon import (
    ADJUST_LR_FNS,
    IMPLS,
    NS_COEFFICIENTS,
    OPTIMIZER_NAMES,
    Muon,
    adjust_lr,
    build_optimizers,
    newton_schulz,
)
from .qkclip import ClipResult, qk_clip
from .routing import Routing, route

__all__ = [
    "ADJUST_LR_FNS",
    "IMPLS",
    "NS_COEFFICIENTS",
    "OPTIMIZER_NAMES",
    "ClipResult",
    "Muon",
    "Routing",
    "adjust_lr",
    "build_optimizers",
    "newton_schulz",
    "qk_clip",
    "route",
]

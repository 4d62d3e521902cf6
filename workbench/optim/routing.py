"""Parameter routing: which optimizer owns which parameter.

Muon is only for 2-D *hidden* matrices. Everything else goes to AdamW:

- embeddings (any ``nn.Embedding``'s weight), even though they are 2-D;
- the LM head (the output projection: a module named in ``head_names``, or what
  ``model.get_output_embeddings()`` returns), even though it is 2-D;
- norms, biases (also 2-D per-head ones named ``*_bias``, like q_bias) and every
  other parameter that is not 2-D.

Weights tied across modules (``lm_head.weight is embed.weight``) appear once, under
the first name ``named_parameters()`` gives, and the reason mentions the other names.
Frozen parameters (``requires_grad=False``) go to neither list; they get a table row
with optimizer ``"none"`` so the printed table accounts for every tensor.

The table (``Routing.table()``) is printed at the start of a run and stored with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = ["Routing", "route"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
)


@dataclass
class Routing:
    """The result of :func:`route`: ``(name, param)`` pairs per optimizer, plus a table."""

    muon: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    adamw: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """One row per distinct tensor: {name, shape, numel, optimizer, reason}."""
        return [dict(row, shape=list(row["shape"])) for row in self.rows]

    def summary(self) -> dict[str, dict[str, int]]:
        """{optimizer: {"tensors": n, "numel": total}} over the table."""
        out: dict[str, dict[str, int]] = {}
        for row in self.rows:
            entry = out.setdefault(row["optimizer"], {"tensors": 0, "numel": 0})
            entry["tensors"] += 1
            entry["numel"] += row["numel"]
        return out

    def format_table(self) -> str:
        """The table as aligned plain text, with a totals line per optimizer."""
        header = ("name", "shape", "numel", "optimizer", "reason")
        cells = [
            (r["name"], "x".join(str(s) for s in r["shape"]) or "scalar", f"{r['numel']:,}",
             r["optimizer"], r["reason"])
            for r in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
                  for i, h in enumerate(header)]
        right = {2}  # numbers right-aligned

        def fmt(row: Sequence[str]) -> str:
            parts = [c.rjust(w) if i in right else c.ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            return "  ".join(parts).rstrip()

        lines = [fmt(header), fmt(["-" * w for w in widths])]
        lines += [fmt(c) for c in cells]
        totals = ", ".join(f"{opt}: {s['tensors']} tensors, {s['numel']:,} params"
                           for opt, s in self.summary().items())
        lines.append(f"total: {totals}" if totals else "total: no parameters")
        return "\n".join(lines)


def route(model: nn.Module, head_names: Sequence[str] = ("lm_head",)) -> Routing:
    """Split ``model``'s trainable parameters between Muon and AdamW.

    ``head_names`` matches a module by its full dotted name or its last component.
    """
    embed_ids: set[int] = set()
    head_ids: set[int] = set()
    norm_ids: set[int] = set()
    for mod_name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False)]
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            embed_ids.update(id(p) for p in own)
        if mod_name in head_names or mod_name.rsplit(".", 1)[-1] in head_names:
            head_ids.update(id(p) for p in own)
        if isinstance(module, _NORM_TYPES) or type(module).__name__.lower().endswith("norm"):
            norm_ids.update(id(p) for p in own)
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            out = get_out()
        except (NotImplementedError, AttributeError):
            out = None
        if isinstance(out, nn.Module):
            head_ids.update(id(p) for p in out.parameters(recurse=False))

    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)

    routing = Routing()
    for name, p in model.named_parameters():
        others = [n for n in aliases[id(p)] if n != name]
        optimizer, reason = _decide(name, p, embed_ids, head_ids, norm_ids)
        if others:
            reason += f"; tied with {', '.join(others)}"
        if not p.requires_grad:
            optimizer, reason = "none", "frozen (requires_grad=False)"
        elif optimizer == "muon":
            routing.muon.append((name, p))
        else:
            routing.adamw.append((name, p))
        routing.rows.append({"name": name, "shape": tuple(p.shape), "numel": p.numel(),
                             "optimizer": optimizer, "reason": reason})
    return routing


def _decide(name: str, p: Tensor, embed_ids: set[int], head_ids: set[int],
            norm_ids: set[int]) -> tuple[str, str]:
    if id(p) in embed_ids:
        return "adamw", "embedding (nn.Embedding)"
    if id(p) in head_ids:
        return "adamw", "LM head (output projection)"
    if id(p) in norm_ids:
        return "adamw", "norm"
    if name.rsplit(".", 1)[-1].endswith("bias"):  # also per-head q_bias / k_bias [H, D]
        return "adamw", "bias"
    if p.ndim == 2:
        return "muon", "2-D hidden matrix"
    return "adamw", f"{p.ndim}-D parameter (not a matrix)"

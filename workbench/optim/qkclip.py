"""QK-Clip (Kimi K2): hold each attention head's max logit at or below tau.

With Muon, the largest pre-softmax attention logit S_max^h of a head tends to grow
without bound, which causes loss spikes. QK-Clip leaves the forward and backward
passes untouched and instead rescales weights *after* each optimizer step:

1. The model records, per layer and head, S_max^h = the largest logit
   ``q_i . k_j / sqrt(head_dim)`` of head h over the whole batch (the signed max, as
   flex_attention's ``max_scores`` gives it; a max of ``|q . k|`` works the same way,
   since the rescaling is by a positive factor).
2. gamma_h = min(1, tau / S_max^h); K2 used tau = 100.
3. Only heads with S_max^h > tau are touched:

   - MHA (``n_kv_head == n_head``): the head's query rows of ``q_proj.weight`` and its
     key rows of ``k_proj.weight`` are each scaled by sqrt(gamma_h), so the logit
     q . k scales by gamma_h and that head's max logit becomes tau.
   - GQA (``n_kv_head < n_head``; a key head is shared by ``n_head // n_kv_head``
     query heads). **Our rule: scale the clipped head's QUERY rows by gamma_h alone
     and leave the shared key head untouched.** The logit of head h still scales by
     exactly gamma_h, while the other query heads sharing that key head keep their
     logits bit for bit. (The alternative, scaling the shared key by the min gamma of
     its group, would also shrink heads that were within bounds.)

   - QK-norm (Qwen3: ``attn.q_norm`` / ``attn.k_norm``, an RMSNorm over head_dim
     applied to q and k after the projections, before RoPE). Rescaling the projection
     rows does nothing there: the norm divides the scale away. The logit is linear in
     the norms' weights instead, but each norm is ONE weight vector shared by every
     head of the layer. **Our rule: scale the layer's q_norm and k_norm weights each by
     sqrt(gamma_min), gamma_min being the smallest gamma among the layer's clipped
     heads.** The layer's largest logit lands exactly on tau; every other head of that
     layer is scaled by the same factor, so it ends further below tau. Heads cannot be
     clipped one by one without untying the norm, which the checkpoint format has no
     room for. ``ClipResult.norm_layers`` lists the layers treated this way.

Biases (Qwen2's q/k biases, Llama's attention_bias) sit inside the projection, before
RoPE, so each head's bias rows are scaled with its weight rows and the rule stays exact.

Layout assumed (workbench.models.gpt): ``attn.q_proj`` / ``attn.k_proj`` are
``nn.Linear`` (bias or not); rows ``[h*head_dim:(h+1)*head_dim]`` of ``q_proj.weight``
belong to query head h, rows ``[g*head_dim:(g+1)*head_dim]`` of ``k_proj.weight`` to
kv head g, and query head h uses kv head ``h // (n_head // n_kv_head)``. RoPE is a
rotation applied equally to the scaled rows, so it does not change the rule. (With a
QK-norm after the projections, rescaling these weights would have no effect.)

``qk_clip`` runs in place under ``torch.no_grad()``; rows of heads that are not clipped
are left bit-identical (they are never written). ``log_only=True`` computes gamma and
the mask and changes nothing, like Megatron-LM's ``qk_clip`` reference.

Under data parallelism every rank must clip with the same numbers: pass
``distributed=True`` to all-reduce (MAX) ``max_logits`` over the default group first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClipResult", "qk_clip"]


@dataclass
class ClipResult:
    """What one ``qk_clip`` call did (or would do, with ``log_only``)."""

    clipped: int  # number of heads with max logit > tau
    gamma: Tensor  # [n_layer, n_head] float32, min(1, tau / S); 1 where not clipped
    mask: Tensor  # [n_layer, n_head] bool, S > tau
    tau: float = 100.0
    log_only: bool = False
    norm_layers: list[int] | None = None  # QK-norm layers scaled whole (see the module doc)

    def to_event(self) -> dict[str, Any]:
        """A JSON-able payload for a ``qk_clip`` event."""
        heads = self.mask.nonzero().tolist()
        return {
            "clipped": self.clipped,
            "tau": self.tau,
            "log_only": self.log_only,
            "heads": [[layer, head] for layer, head in heads],
            "gamma": [float(self.gamma[layer, head]) for layer, head in heads],
            "min_gamma": float(self.gamma.min()) if self.gamma.numel() else 1.0,
            "norm_layers": list(self.norm_layers or []),
        }


@torch.no_grad()
def qk_clip(
    attn_modules: Sequence[Any],
    max_logits: Tensor,
    tau: float = 100.0,
    log_only: bool = False,
    distributed: bool = False,
) -> ClipResult:
    """Rescale q/k projection rows of heads whose max logit exceeds ``tau``.

    ``attn_modules[l]`` is layer l's attention module (with ``q_proj``, ``k_proj``,
    ``n_head``, ``n_kv_head``, ``head_dim``); ``max_logits`` is ``[n_layer, n_head]``.
    Call it after ``optimizer.step()``.
    """
    if tau <= 0:
        raise ValueError(f"qk_clip tau must be > 0, got {tau}")
    if max_logits.ndim != 2 or max_logits.shape[0] != len(attn_modules):
        raise ValueError(
            f"max_logits must be [n_layer={len(attn_modules)}, n_head], "
            f"got {tuple(max_logits.shape)}"
        )
    S = max_logits.detach().float()
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            S = S.clone()
            dist.all_reduce(S, op=dist.ReduceOp.MAX)
    mask = S > tau
    gamma = torch.where(mask, tau / S.clamp(min=tau), torch.ones_like(S))
    clipped = int(mask.sum())
    result = ClipResult(clipped=clipped, gamma=gamma, mask=mask, tau=float(tau),
                        log_only=log_only)
    if log_only or clipped == 0:
        return result

    mask_cpu, gamma_cpu = mask.cpu(), gamma.cpu()  # one device sync for the whole call
    result.norm_layers = []
    for layer, attn in enumerate(attn_modules):
        n_head = int(attn.n_head)
        n_kv_head = int(getattr(attn, "n_kv_head", n_head))
        head_dim = int(attn.head_dim)
        if S.shape[1] != n_head:
            raise ValueError(
                f"max_logits has {S.shape[1]} heads but layer {layer} has n_head={n_head}"
            )
        heads = mask_cpu[layer].nonzero().flatten().tolist()
        if heads and getattr(attn, "q_norm", None) is not None:
            g = float(gamma_cpu[layer, heads].min())
            attn.q_norm.weight.mul_(g**0.5)
            attn.k_norm.weight.mul_(g**0.5)
            result.norm_layers.append(layer)
            continue
        for h in heads:
            g = float(gamma_cpu[layer, h])
            rows = slice(h * head_dim, (h + 1) * head_dim)
            if n_kv_head == n_head:
                _scale_head(attn, "q", h, rows, g**0.5)
                _scale_head(attn, "k", h, rows, g**0.5)
            else:
                _scale_head(attn, "q", h, rows, g)
    return result


def _scale_head(attn: Any, which: str, head: int, rows: slice, factor: float) -> None:
    """One head's q or k: its projection rows, and a separate per-head bias [n_head,
    head_dim] where the module keeps one (Huginn's qk_bias). The bias is added before
    RoPE, which is linear, so scaling both scales the logit exactly."""
    _scale_rows(getattr(attn, f"{which}_proj"), rows, factor)
    bias = getattr(attn, f"{which}_bias", None)
    if isinstance(bias, Tensor):
        bias[head].mul_(factor)


def _scale_rows(linear: Any, rows: slice, factor: float) -> None:
    """Scale one head's output rows of a projection (and its bias, if it has one)."""
    linear.weight[rows].mul_(factor)
    bias = getattr(linear, "bias", None)
    if bias is not None:
        bias[rows].mul_(factor)

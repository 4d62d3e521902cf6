"""Muon: momentum + Newton-Schulz orthogonalization for 2-D hidden matrices.

This is the workbench's own Muon. It is numerically the same algorithm as
``torch.optim.Muon`` (torch >= 2.9, ``torch/optim/_muon.py``), so runs made with
either can be compared step for step:

- momentum is the EMA form torch uses, ``B <- lerp(B, G, 1 - mu)``; with Nesterov the
  update is ``lerp(G, B, mu)``. (The textbook form ``M <- mu M + G`` differs only by a
  positive scale, which the Frobenius normalization inside Newton-Schulz removes.)
- ``O = newton_schulz(update)``: quintic NS, (a, b, c) = (3.4445, -4.7750, 2.0315),
  5 steps in bf16, Frobenius-normalized (+1e-7), transposed when rows > cols;
- decoupled weight decay with the *unadjusted* lr first, ``W <- W (1 - lr wd)``,
  then ``W <- W - lr' O`` with the shape-adjusted lr':
  - ``"match_rms_adamw"`` (Moonlight, our default): ``lr' = 0.2 sqrt(max(A, B)) lr``.
    The update then has about AdamW's RMS (0.2), so Muon can reuse AdamW's lr and wd;
  - ``"original"`` (Keller Jordan): ``lr' = sqrt(max(1, A / B)) lr``, lr about 0.02, wd 0.
  The two lrs are NOT interchangeable: record which variant a run used.

What ours adds:

- ``step()`` buckets same-shape matrices and runs one batched NS per shape
  (``torch.baddbmm``). That is where a GPU gains; on a 2-core CPU it is a wash.
  On this CPU the batched result is bit-identical to the per-matrix one.
- a distributed mode (Moonlight's distributed Muon idea). NS needs a whole matrix,
  so the *work* is split instead of the matrices: every rank updates its momentum
  buffers (gradients are assumed already averaged, e.g. by DDP), then each rank
  orthogonalizes only its share of the matrices (round-robin within each shape
  bucket of the shape-sorted list), and the bf16 results are exchanged with one
  ``all_gather`` per shape. Every rank then applies the identical update, so the
  replicas stay bit-identical. All distributed concerns live in this file.
- ``ns_dtype``: the dtype NS runs in, bf16 by default (as torch.optim.Muon). On a
  CPU without native bf16 matmuls (AVX2 only, e.g. the 2-core dev machine) a bf16
  384x384 matmul is ~40x slower than fp32, so ``ns_dtype=torch.float32`` is the
  practical choice there; fp32 NS is at least as accurate.

``build_optimizers`` pairs Muon (on :func:`workbench.optim.routing.route`'s hidden
matrices) with AdamW on everything else.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from workbench.kernels.newton_schulz import NS_COEFFICIENTS, newton_schulz_ref
from workbench.kernels.newton_schulz import newton_schulz as triton_ns

from .routing import route

__all__ = [
    "ADJUST_LR_FNS",
    "IMPLS",
    "NS_COEFFICIENTS",
    "OPTIMIZER_NAMES",
    "Muon",
    "adjust_lr",
    "build_optimizers",
    "newton_schulz",
]

ADJUST_LR_FNS = ("match_rms_adamw", "original")
OPTIMIZER_NAMES = ("muon", "muonclip", "adamw")
IMPLS = ("ours", "torch")


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """Quintic Newton-Schulz orthogonalization, in bf16; returns a bf16 tensor.

    (``dtype`` overrides bf16, e.g. ``torch.float32`` on CPUs without bf16 matmuls.)

    ``G`` is one matrix ``[A, B]`` or a stack ``[..., A, B]`` of same-shape matrices,
    each normalized and orthogonalized on its own (one batched matmul chain for all).
    The result approximates ``U V^T`` of each matrix's SVD with singular values of
    roughly 0.5 to 1.5, not exactly 1. For a single matrix this performs exactly the
    operations of ``torch.optim.Muon`` (``addmm`` chain); a stack uses ``baddbmm``.
    The input is never modified.

    On CUDA it may instead run ``workbench.kernels.newton_schulz`` (symmetric Triton
    Gram products), when that was measured faster for this shape (see
    :func:`_triton_ns_faster`); it agrees to bf16 rounding, not bit for bit. CPU
    tensors always take the torch path below.
    """
    if G.is_cuda and _triton_ns_faster(G, steps, eps, coefficients, dtype):
        return triton_ns(G, steps, eps, coefficients, dtype, backend="triton")
    return newton_schulz_ref(G, steps, eps, coefficients, dtype)


# (shape, input dtype, NS dtype, device, steps) -> whether the Triton NS won the timing.
_TRITON_NS_FASTER: dict[tuple[Any, ...], bool] = {}


def _triton_ns_faster(
    G: Tensor,
    steps: int,
    eps: float,
    coefficients: tuple[float, float, float],
    dtype: torch.dtype,
) -> bool:
    """Whether the Triton NS beat the torch one on this (shape, dtype, device); CUDA only.

    Decided once per key by timing both on ``G`` itself (2 warm-up calls, which also
    compile the kernel, then the best of 3, CUDA events) and cached for the process:
    a few dozen ms once per parameter shape, against every later step. Which is faster
    depends on the GPU, the shape and the batch, so it is measured rather than guessed.
    A Triton failure (not installed, no compiler for this GPU) counts as "slower", with
    one warning. Always False (torch path):
    - under CUDA-graph capture or torch.compile tracing, where timing cannot run;
    - under an initialized process group of more than one rank: the choice is per
      process, and DDP replicas that chose differently would drift apart in the last bits.
    """
    if torch.cuda.is_current_stream_capturing() or torch.compiler.is_compiling():
        return False
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return False
    key = (tuple(G.shape), G.dtype, dtype, str(G.device), steps)
    if key not in _TRITON_NS_FASTER:
        _TRITON_NS_FASTER[key] = False  # the answer if timing the Triton path fails
        try:
            def best_ms(fn: Any) -> float:
                for _ in range(2):
                    fn()
                times = []
                for _ in range(3):
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                return min(times)

            with torch.cuda.device(G.device):
                ours = best_ms(lambda: triton_ns(G, steps, eps, coefficients, dtype,
                                                 backend="triton"))
                ref = best_ms(lambda: newton_schulz_ref(G, steps, eps, coefficients, dtype))
            _TRITON_NS_FASTER[key] = ours < ref
        except Exception as exc:  # any kernel failure keeps the torch path
            warnings.warn(f"Triton Newton-Schulz unavailable ({exc!r}); using torch's",
                          RuntimeWarning, stacklevel=2)
    return _TRITON_NS_FASTER[key]


def adjust_lr(lr: float, adjust_lr_fn: str | None, shape: Sequence[int]) -> float:
    """The shape-adjusted Muon lr, exactly as torch.optim.Muon computes it."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(
        f"unknown adjust_lr_fn {adjust_lr_fn!r}; choose one of {', '.join(ADJUST_LR_FNS)}"
    )


def _dist_group(distributed: bool, process_group: Any) -> Any | None:
    """The group to split NS work over, or None when running single-process."""
    if not distributed and process_group is None:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


class Muon(torch.optim.Optimizer):
    """Muon for 2-D hidden matrices (see the module docstring for the algorithm).

    Args:
        params: 2-D parameters (or param groups). Anything else raises ValueError:
            route embeddings, the LM head, norms and biases to AdamW
            (:func:`workbench.optim.routing.route` does that).
        lr: learning rate before the shape adjustment (default 1e-3).
        weight_decay: decoupled weight decay, applied as ``W *= 1 - lr * wd`` (default 0.1).
        momentum: EMA momentum coefficient mu (default 0.95).
        nesterov: Nesterov-style update ``lerp(G, B, mu)`` (default True).
        ns_steps: Newton-Schulz iterations (default 5).
        adjust_lr_fn: ``"match_rms_adamw"`` (Moonlight, default) or ``"original"``
            (Keller Jordan); same meaning as in torch.optim.Muon.
        eps: Frobenius-normalization floor (default 1e-7).
        ns_coefficients: quintic coefficients (a, b, c).
        distributed: split the NS work over the ranks of ``process_group`` (the
            default group when None). Only takes effect when torch.distributed is
            initialized and the group has more than one rank; otherwise it is a no-op.
        process_group: the group to split over; passing one implies ``distributed``.
        ns_dtype: dtype of the Newton-Schulz iteration (default bf16, as torch's).

    The state key is ``momentum_buffer``, as in torch.optim.Muon. In distributed mode
    every rank must hold the same parameters in the same order with gradients on the
    same ones (true under DDP).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str = "match_rms_adamw",
        eps: float = 1e-7,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        distributed: bool = False,
        process_group: Any = None,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Muon lr must be >= 0, got {lr}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Muon weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        if not 0 <= ns_steps < 100:
            raise ValueError(f"Muon ns_steps must be in [0, 100), got {ns_steps}")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(
                f"unknown adjust_lr_fn {adjust_lr_fn!r}; choose one of {', '.join(ADJUST_LR_FNS)}"
            )
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn, eps=eps,
            ns_coefficients=tuple(ns_coefficients), ns_dtype=ns_dtype,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only takes 2-D matrices, got a parameter of shape "
                        f"{tuple(p.shape)}; give embeddings, the LM head, norms, biases and "
                        "other non-2-D parameters to AdamW (see workbench.optim.routing.route)"
                    )
                if torch.is_complex(p):
                    raise ValueError("Muon does not support complex parameters")
        self.distributed = distributed
        self.process_group = process_group

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group_dist = _dist_group(self.distributed, self.process_group)
        for group in self.param_groups:
            self._step_group(group, group_dist)
        return loss

    def _step_group(self, group: dict[str, Any], dist_group: Any) -> None:
        lr = float(group["lr"])
        wd = group["weight_decay"]
        mu = group["momentum"]
        buckets: dict[tuple, list[tuple[Tensor, Tensor]]] = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(
                    p.grad, memory_format=torch.preserve_format
                )
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)
            update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
            key = (tuple(p.shape), p.dtype, str(p.device))
            buckets[key].append((p, update))

        ns = dict(steps=group["ns_steps"], eps=group["eps"],
                  coefficients=group["ns_coefficients"],
                  dtype=group.get("ns_dtype", torch.bfloat16))  # absent in torch's state
        for key in sorted(buckets, key=lambda k: (k[0], str(k[1]), k[2])):
            items = buckets[key]
            updates = [u for _, u in items]
            if dist_group is None and len(updates) == 1:
                ortho = newton_schulz(updates[0], **ns).unsqueeze(0)
            elif dist_group is None:
                ortho = newton_schulz(torch.stack(updates), **ns)
            else:
                ortho = _distributed_ns(updates, dist_group, ns)
            adj_lr = adjust_lr(lr, group["adjust_lr_fn"], key[0])
            for (p, _), o in zip(items, ortho, strict=True):
                p.mul_(1 - lr * wd)
                p.add_(o, alpha=-adj_lr)


def _distributed_ns(updates: list[Tensor], group: Any, ns: dict[str, Any]) -> list[Tensor]:
    """Orthogonalize same-shape matrices with the work split round-robin over ranks.

    Rank r computes matrices r, r + W, r + 2W, ... The bucket is padded to a multiple
    of W with zero slots that are sent but never computed; one ``all_gather`` shares
    the (bf16) results, so every rank gets every matrix, bit-identical everywhere.
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    n = len(updates)
    per_rank = math.ceil(n / world)
    mine = list(range(rank, n, world))
    ref = updates[0]
    out_shape = (per_rank, *ref.shape)
    chunk = torch.zeros(out_shape, dtype=ns["dtype"], device=ref.device)
    if mine:
        stacked = torch.stack([updates[i] for i in mine])
        chunk[: len(mine)] = newton_schulz(stacked, **ns)
    gathered = [torch.empty_like(chunk) for _ in range(world)]
    dist.all_gather(gathered, chunk, group=group)
    return [gathered[i % world][i // world] for i in range(n)]


def build_optimizers(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    adjust_lr_fn: str = "match_rms_adamw",
    impl: str = "ours",
    distributed: bool = False,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> list[torch.optim.Optimizer]:
    """The optimizers for a pretraining arm; step all of them every step.

    - ``"muon"`` / ``"muonclip"``: Muon (ours, or ``torch.optim.Muon`` with
      ``impl="torch"``) on the routed 2-D hidden matrices, plus one AdamW on the rest
      (embeddings, LM head, norms, biases, 1-D). The two share ``lr`` and
      ``weight_decay``: with ``adjust_lr_fn="match_rms_adamw"`` Muon's update RMS
      is scaled to AdamW's (Moonlight), which is what makes one lr right for both.
      With ``"original"`` (Keller Jordan) the Muon lr is a different quantity
      (about 0.02); build the optimizers yourself if you need two lrs.
      ``"muonclip"`` builds the same optimizers: QK-Clip is applied by the recipe
      after each step (:func:`workbench.optim.qkclip.qk_clip`).
    - ``"adamw"``: one AdamW on every parameter.

    ``distributed=True`` splits Muon's Newton-Schulz work over the ranks of the
    default process group (ours only). ``ns_dtype`` (ours only) sets the
    Newton-Schulz dtype: keep bf16 on GPUs, use ``torch.float32`` on CPUs without
    native bf16 matmuls.
    """
    key = name.lower().strip()
    if key not in OPTIMIZER_NAMES:
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZER_NAMES)}"
        )
    if impl not in IMPLS:
        raise ValueError(f"unknown Muon impl {impl!r}; choose one of {', '.join(IMPLS)}")
    if key == "adamw":
        params = [p for p in model.parameters() if p.requires_grad]
        return [torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)]
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(
            f"unknown adjust_lr_fn {adjust_lr_fn!r}; choose one of {', '.join(ADJUST_LR_FNS)}"
        )
    if impl == "torch" and distributed:
        raise ValueError("torch.optim.Muon has no distributed mode; use impl='ours'")
    if impl == "torch" and ns_dtype != torch.bfloat16:
        raise ValueError("torch.optim.Muon always runs NS in bf16; use impl='ours'")
    routing = route(model)
    optimizers: list[torch.optim.Optimizer] = []
    muon_params = [p for _, p in routing.muon]
    if muon_params:
        if impl == "torch":
            optimizers.append(torch.optim.Muon(
                muon_params, lr=lr, weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn))
        else:
            optimizers.append(Muon(muon_params, lr=lr, weight_decay=weight_decay,
                                   adjust_lr_fn=adjust_lr_fn, distributed=distributed,
                                   ns_dtype=ns_dtype))
    adamw_params = [p for _, p in routing.adamw]
    if adamw_params:
        optimizers.append(torch.optim.AdamW(adamw_params, lr=lr, betas=betas,
                                            weight_decay=weight_decay))
    return optimizers

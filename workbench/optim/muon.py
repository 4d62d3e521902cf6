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
- a distributed mode (Moonlight's distributed Muon, ZeRO-1 style). NS needs a whole
  matrix, so matrices are not split; instead each matrix has one *owner* rank:
  round-robin within each shape bucket (matrix i of a bucket, in parameter order,
  belongs to rank i % W; buckets in shape order). Only the owner keeps the matrix's
  momentum buffer, updates it (gradients are assumed already averaged, e.g. by DDP)
  and orthogonalizes it; the NS results are exchanged with one ``all_gather`` per
  shape, and every rank applies the identical update to its full parameters, so the
  replicas stay bit-identical. Each rank thus holds about 1/W of the optimizer state
  (:meth:`Muon.state_bytes`). ``state_dict()`` gathers the momentum back into the full,
  unsharded state (a collective: every rank must call it) and ``load_state_dict()``
  keeps only this rank's shard, so a checkpoint saved at any W resumes at any other,
  one process included. All distributed concerns live in this file.
- ``ns_dtype``: the dtype NS runs in, bf16 by default (as torch.optim.Muon), or
  ``"auto"``: per matrix shape and device, whichever of fp32 and bf16 NS a one-time
  timing found faster (:func:`measure_ns_dtypes`). Which wins depends on the hardware,
  not the device type: on a CPU without native bf16 matmuls (AVX2 only) a bf16 384x384
  NS is ~40x slower than fp32, on one with AVX-512 BF16 / AMX it is ~30x faster, and
  on a GPU bf16 wins except on matrices too small to matter. bf16 must win by a
  margin (:data:`BF16_MARGIN`): fp32 is at least as accurate, so a near-tie goes to it.
  The decision is cached per process per (shape, device); under more than one rank,
  rank 0's decision is broadcast, so the replicas do the same arithmetic; the
  optimizer's ``state_dict`` carries its decisions (:class:`NsChoice`), so a resumed
  run continues with the choice it started with instead of re-timing.

``build_optimizers`` pairs Muon (on :func:`workbench.optim.routing.route`'s hidden
matrices) with AdamW on everything else.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from workbench.kernels.newton_schulz import NS_COEFFICIENTS, newton_schulz_ref
from workbench.kernels.newton_schulz import newton_schulz as triton_ns

from .routing import route

__all__ = [
    "ADJUST_LR_FNS",
    "AUTO",
    "BF16_MARGIN",
    "IMPLS",
    "NS_COEFFICIENTS",
    "NS_DTYPES",
    "OPTIMIZER_NAMES",
    "Muon",
    "NsChoice",
    "adjust_lr",
    "build_optimizers",
    "clear_ns_dtype_cache",
    "measure_ns_dtypes",
    "newton_schulz",
    "ns_dtype_summary",
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


# ----------------------------------------------------------------------------- ns_dtype="auto"

AUTO = "auto"
NS_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BF16_MARGIN = 0.9
"""``auto`` takes bf16 only when its NS time is below this fraction of fp32's: fp32 is
at least as accurate, so a near-tie (which timing noise could decide either way) goes to
fp32."""
_TIMED_CALLS = 3  # per dtype, after one warm-up call
_CLEARLY_SLOWER = 3.0  # a second dtype this many times slower than the first stops early
_CHEAP_MS = 200.0  # ... once a call of it (or the measurement) took this long


@dataclass(frozen=True)
class NsChoice:
    """What ``ns_dtype="auto"`` chose for one matrix shape on one device type, and why.

    ``ms``: the best time of one NS of one such matrix per dtype (:func:`measure_ns_dtypes`),
    empty when nothing was timed. ``source``: ``"measured"`` (this process timed it),
    ``"rank 0"`` (broadcast from rank 0, which timed it), ``"checkpoint"`` (restored with
    the optimizer state) or ``"fixed rule"`` (timing impossible: CUDA-graph capture or
    torch.compile tracing; bf16 on CUDA, fp32 elsewhere). ``device`` is the type, not the
    index, so a record applies on every rank's GPU and survives a resume.
    """

    shape: tuple[int, ...]
    device: str
    dtype: str
    ms: dict[str, float] = field(default_factory=dict)
    source: str = "measured"

    def record(self) -> dict[str, Any]:
        """A JSON-ready dict (a failed timing, inf, becomes None)."""
        return {"shape": list(self.shape), "device": self.device, "dtype": self.dtype,
                "ms": {k: round(v, 3) if math.isfinite(v) else None
                       for k, v in self.ms.items()},
                "source": self.source}

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str) -> NsChoice:
        ms = {k: math.inf if v is None else float(v) for k, v in record.get("ms", {}).items()}
        return cls(tuple(record["shape"]), record["device"], record["dtype"], ms, source)


# (matrix shape, device) -> this process's measured choice: one timing per process per key.
_NS_DTYPE_CHOICE: dict[tuple[tuple[int, ...], str], NsChoice] = {}


def clear_ns_dtype_cache() -> None:
    """Forget this process's ``auto`` timings (for a bench that reports their cost, and
    tests). Optimizers keep the choices they already made."""
    _NS_DTYPE_CHOICE.clear()


def _call_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call in ms (synchronized on CUDA); inf when it raises."""
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3
    except Exception as exc:  # a dtype this device cannot run loses the comparison
        warnings.warn(f"Newton-Schulz timing failed ({exc!r})", RuntimeWarning, stacklevel=2)
        return math.inf


def measure_ns_dtypes(
    G: Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
) -> dict[str, float]:
    """Best ms of one NS of the matrix ``G`` in each of :data:`NS_DTYPES`.

    It runs once per shape inside the first optimizer step (or before training, see
    :meth:`Muon.resolve_ns_dtypes`), so it is kept cheap; the best of a few calls keeps a
    burst of load on a shared machine from deciding it:

    - one matrix of the real shape: NS cost is linear in the number of stacked matrices,
      so one ranks the dtypes as the whole bucket would, at a fraction of the cost;
    - one dtype at a time, each after a warm-up call: a dtype's first call pays set-up
      (a process's first matmul ~200 ms of library start-up; oneDNN / cuBLAS primitive
      creation), which is not what every later step costs;
    - the dtype the old fixed rule would pick (bf16 on CUDA, fp32 elsewhere) goes first:
      warm-up, then ``_TIMED_CALLS`` timed calls. The other stops as soon as one of its
      calls, the warm-up included, took over ``_CLEARLY_SLOWER`` times the first's best
      and over ``_CHEAP_MS``: set-up only adds time, so such a call settles it (its time
      is then that dtype's figure, an upper bound). A clearly slower dtype thus costs one
      call per shape, less than one optimizer step in that dtype (a bf16 384x1024 NS takes
      ~1.5 s on an AVX2-only CPU); cheap shapes and close calls get every call.
    """
    first = "bfloat16" if G.is_cuda else "float32"
    best: dict[str, float] = {}
    spent = 0.0
    for name in sorted(NS_DTYPES, key=lambda n: n != first):
        dtype = NS_DTYPES[name]

        def run(dtype: torch.dtype = dtype) -> Tensor:
            return newton_schulz(G, steps, eps, coefficients, dtype)

        rival = min(best.values(), default=math.nan)  # the first dtype's best
        best[name] = math.inf
        for call in range(1 + _TIMED_CALLS):
            ms = _call_ms(run, G.device)
            spent += ms
            if not math.isfinite(ms):  # this dtype failed: it loses
                break
            settled = ms > _CLEARLY_SLOWER * rival and ms > _CHEAP_MS
            if call == 0 and not settled:  # a warm-up counts only when it settles it
                continue
            best[name] = min(best[name], ms)
            if settled or (best[name] > _CLEARLY_SLOWER * rival and spent > _CHEAP_MS):
                break
    return best


def _pick_dtype(ms: dict[str, float]) -> str:
    """bf16 when it beat fp32 by :data:`BF16_MARGIN`, else fp32 (the more accurate)."""
    return "bfloat16" if ms["bfloat16"] < BF16_MARGIN * ms["float32"] else "float32"


def _local_ns_choice(G: Tensor, ns: dict[str, Any]) -> NsChoice:
    """This process's choice for ``G``'s shape: cached, else timed now (or the fixed rule
    where timing cannot run)."""
    if torch.compiler.is_compiling() or (G.is_cuda and torch.cuda.is_current_stream_capturing()):
        fixed = "bfloat16" if G.is_cuda else "float32"
        return NsChoice(tuple(G.shape), G.device.type, fixed, source="fixed rule")
    key = (tuple(G.shape), str(G.device))
    if key not in _NS_DTYPE_CHOICE:
        ms = measure_ns_dtypes(G, ns["steps"], ns["eps"], ns["coefficients"])
        _NS_DTYPE_CHOICE[key] = NsChoice(key[0], G.device.type, _pick_dtype(ms), ms)
    return _NS_DTYPE_CHOICE[key]


def _decide_ns_dtype(G: Tensor, ns: dict[str, Any], group: Any | None) -> NsChoice:
    """The choice for ``G``'s shape; with a process group of more than one rank, rank 0's.

    Every rank must run NS in the same dtype: distributed Muon all_gathers results of
    that dtype, and DDP replicas that orthogonalized differently would drift apart. Rank 0
    decides (its own timing) and broadcasts; this is a collective, reached by every rank
    in the same bucket order (step() and resolve_ns_dtypes() sort the shapes).
    """
    if group is None:
        return _local_ns_choice(G, ns)
    import torch.distributed as dist

    lead = dist.get_rank(group) == 0
    box = [_local_ns_choice(G, ns) if lead else None]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    choice: NsChoice = box[0]  # type: ignore[assignment]
    return choice if lead else replace(choice, source="rank 0")


def ns_dtype_summary(optimizers: Iterable[torch.optim.Optimizer]) -> str | None:
    """The NS dtype our Muon optimizers among ``optimizers`` run, for a run's record:
    ``"float32"`` / ``"bfloat16"``, ``"mixed"`` (``auto`` chose per shape: see
    :meth:`Muon.ns_choice_records`), ``"auto"`` (not decided yet), None without one."""
    names: set[str] = set()
    for opt in optimizers:
        if not isinstance(opt, Muon):
            continue
        for group in opt.param_groups:
            dtype = group.get("ns_dtype", torch.bfloat16)
            if dtype != AUTO:
                names.add(str(dtype).removeprefix("torch."))
            else:
                names |= {c.dtype for c in opt.ns_choices.values()} or {AUTO}
    if not names:
        return None
    return names.pop() if len(names) == 1 else "mixed"


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
        distributed: shard the momentum and the NS work over the ranks of
            ``process_group`` (the default group when None; module docstring). Only
            takes effect when torch.distributed is initialized and the group has more
            than one rank; otherwise it is a no-op.
        process_group: the group to split over; passing one implies ``distributed``.
        ns_dtype: dtype of the Newton-Schulz iteration (default bf16, as torch's), or
            ``"auto"``: per matrix shape, the faster of fp32 and bf16 by a one-time timing
            (module docstring). Under an initialized process group of more than one rank,
            ``auto`` is decided by rank 0 and broadcast, a collective: every rank must
            step (true under DDP), even with ``distributed=False``.

    The state key is ``momentum_buffer``, as in torch.optim.Muon. In distributed mode
    every rank must hold the same parameters in the same order with gradients on the
    same ones (true under DDP), ``self.state`` holds only the matrices this rank owns,
    and ``step()``, ``state_dict()`` and ``load_state_dict()`` are collectives (every
    rank calls them). ``state_dict()`` is always the full state, the same at any number
    of ranks, plus ``"ns_choices"`` (the ``auto`` decisions, :class:`NsChoice` records)
    for ``load_state_dict`` to restore.
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
        ns_dtype: torch.dtype | str = torch.bfloat16,
    ) -> None:
        if isinstance(ns_dtype, str) and ns_dtype != AUTO:
            raise ValueError(f"Muon ns_dtype must be a torch dtype or {AUTO!r}, got {ns_dtype!r}")
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
        # ns_dtype="auto" decisions by (matrix shape, device type); saved in state_dict
        self.ns_choices: dict[tuple[tuple[int, ...], str], NsChoice] = {}

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state plus ``"ns_choices"``, so a resume keeps the NS dtypes.

        Sharded (distributed over more than one rank), the momentum buffers are gathered
        from their owners, so every rank returns the full state, equal to one process's:
        a checkpoint does not depend on the number of ranks that wrote it. A collective.
        """
        state = super().state_dict()
        dist_group = _dist_group(self.distributed, self.process_group)
        if dist_group is not None:
            state["state"] = self._gathered_state(dist_group)
        state["ns_choices"] = self.ns_choice_records()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state, and the ``auto`` decisions it recorded (source
        ``"checkpoint"``): re-timing could pick differently on a near-tie and a resumed
        run would no longer repeat the uninterrupted one bit for bit. A state without
        them (torch.optim.Muon's, or older) leaves the shapes to be decided afresh."""
        state_dict = dict(state_dict)
        records = state_dict.pop("ns_choices", None) or []
        dist_group = _dist_group(self.distributed, self.process_group)
        if dist_group is not None:  # a full state, from any number of ranks: keep my shard
            owned = self._owned(dist_group)
            mine = {i for i, p in self._indexed_params() if id(p) in owned}
            state_dict["state"] = {i: s for i, s in state_dict["state"].items()
                                   if int(i) in mine}
        super().load_state_dict(state_dict)
        for record in records:
            choice = NsChoice.from_record(record, source="checkpoint")
            self.ns_choices[(choice.shape, choice.device)] = choice

    def state_bytes(self) -> int:
        """Bytes of the tensors in this process's optimizer state (the momentum buffers):
        sharded over W ranks, about 1/W of one process's."""
        return sum(t.numel() * t.element_size() for s in self.state.values()
                   for t in s.values() if isinstance(t, Tensor))

    def _indexed_params(self) -> list[tuple[int, Tensor]]:
        """(index, param) in the numbering torch's ``state_dict`` uses (groups in order)."""
        return list(enumerate(p for group in self.param_groups for p in group["params"]))

    def _owned(self, dist_group: Any) -> set[int]:
        """``id``s of the parameters this rank owns: keeps the momentum of, orthogonalizes."""
        import torch.distributed as dist

        world, rank = dist.get_world_size(dist_group), dist.get_rank(dist_group)
        return {id(p) for group in self.param_groups
                for _, members in _buckets(group["params"]) for p in members[rank::world]}

    def _gathered_state(self, dist_group: Any) -> dict[int, dict[str, Any]]:
        """The full ``state`` of ``state_dict()``: every owner's momentum buffers, gathered
        with one ``all_gather`` per shape bucket (slots laid out as in :func:`_distributed_ns`)
        plus one of flags (a matrix that never had a gradient has no buffer)."""
        import torch.distributed as dist

        world, rank = dist.get_world_size(dist_group), dist.get_rank(dist_group)
        index = {id(p): i for i, p in self._indexed_params()}
        full: dict[int, dict[str, Any]] = {}
        for group in self.param_groups:
            for _, members in _buckets(group["params"]):
                ref = members[0]
                per_rank = math.ceil(len(members) / world)
                chunk = torch.zeros((per_rank, *ref.shape), dtype=ref.dtype, device=ref.device)
                has = torch.zeros(per_rank, dtype=torch.int32, device=ref.device)
                for slot, p in enumerate(members[rank::world]):
                    buf = self.state[p].get("momentum_buffer") if p in self.state else None
                    if buf is not None:
                        chunk[slot].copy_(buf)
                        has[slot] = 1
                chunks = [torch.empty_like(chunk) for _ in range(world)]
                flags = [torch.empty_like(has) for _ in range(world)]
                dist.all_gather(chunks, chunk, group=dist_group)
                dist.all_gather(flags, has, group=dist_group)
                present = [f.tolist() for f in flags]  # one sync per rank, not per matrix
                for i, p in enumerate(members):
                    if present[i % world][i // world]:  # a copy: a view would keep (and
                        # save, and on load pin) the whole gathered chunk
                        buf = chunks[i % world][i // world].clone()
                        full[index[id(p)]] = {"momentum_buffer": buf}
        return dict(sorted(full.items()))

    def ns_choice_records(self) -> list[dict[str, Any]]:
        """The ``auto`` decisions made so far, JSON-ready (:meth:`NsChoice.record`)."""
        return [self.ns_choices[key].record() for key in sorted(self.ns_choices)]

    @torch.no_grad()
    def resolve_ns_dtypes(self) -> list[dict[str, Any]]:
        """Decide ``auto`` now for every parameter shape instead of at the first step,
        timing on the parameters themselves (no random numbers, so the RNG stream a
        resume relies on is untouched); returns :meth:`ns_choice_records`. A recipe calls
        it before training to record which dtype runs. A collective under more than one
        rank, like step()."""
        for group in self.param_groups:
            firsts: dict[tuple, Tensor] = {}
            for p in group["params"]:
                firsts.setdefault(_bucket_key(p), p)
            for key in sorted(firsts, key=_bucket_order):
                self._ns_dtype(group, firsts[key].detach())
        return self.ns_choice_records()

    def _ns_dtype(self, group: dict[str, Any], sample: Tensor) -> torch.dtype:
        """The NS dtype for matrices shaped like ``sample``: the group's, or under
        ``auto`` the (once decided, then remembered) choice for this shape and device."""
        dtype = group.get("ns_dtype", torch.bfloat16)  # absent in torch's state
        if dtype != AUTO:
            return dtype
        key = (tuple(sample.shape), sample.device.type)
        if key not in self.ns_choices:
            self.ns_choices[key] = _decide_ns_dtype(
                sample, _ns_args(group), _dist_group(True, self.process_group))
        return NS_DTYPES[self.ns_choices[key].dtype]

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

    def _momentum_update(self, group: dict[str, Any], p: Tensor) -> Tensor:
        """Advance ``p``'s momentum buffer with its gradient; the matrix to orthogonalize."""
        if p.grad.is_sparse:  # type: ignore[union-attr]
            raise RuntimeError("Muon does not support sparse gradients")
        grad: Tensor = p.grad  # type: ignore[assignment]
        mu = group["momentum"]
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        buf.lerp_(grad, 1 - mu)
        return grad.lerp(buf, mu) if group["nesterov"] else buf

    def _step_group(self, group: dict[str, Any], dist_group: Any) -> None:
        if dist_group is not None:
            self._step_group_sharded(group, dist_group)
            return
        lr = float(group["lr"])
        wd = group["weight_decay"]
        buckets: dict[tuple, list[tuple[Tensor, Tensor]]] = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            buckets[_bucket_key(p)].append((p, self._momentum_update(group, p)))

        for key in sorted(buckets, key=_bucket_order):
            items = buckets[key]
            updates = [u for _, u in items]
            ns = dict(_ns_args(group), dtype=self._ns_dtype(group, updates[0]))
            if len(updates) == 1:
                ortho = newton_schulz(updates[0], **ns).unsqueeze(0)
            else:
                ortho = newton_schulz(torch.stack(updates), **ns)
            adj_lr = adjust_lr(lr, group["adjust_lr_fn"], key[0])
            for (p, _), o in zip(items, ortho, strict=True):
                p.mul_(1 - lr * wd)
                p.add_(o, alpha=-adj_lr)

    def _step_group_sharded(self, group: dict[str, Any], dist_group: Any) -> None:
        """The distributed step: each rank advances the momentum of the matrices it owns
        and orthogonalizes them; the results are all-gathered and every rank applies all.

        Ownership is fixed by the parameter list (:func:`_buckets`), not by which
        matrices have gradients this step, so a buffer never has to move between ranks.
        """
        import torch.distributed as dist

        world, rank = dist.get_world_size(dist_group), dist.get_rank(dist_group)
        lr = float(group["lr"])
        wd = group["weight_decay"]
        for key, members in _buckets(group["params"]):
            stepping = [p for p in members if p.grad is not None]
            if not stepping:
                continue
            for i, p in enumerate(members):  # e.g. a full state loaded before sharding
                if i % world != rank:
                    self.state.pop(p, None)
            mine = [self._momentum_update(group, p) if p.grad is not None else None
                    for p in members[rank::world]]
            # what auto times on (rank 0's first matrix); else only its shape and device count
            sample = next((u for u in mine if u is not None), stepping[0].detach())
            ns = dict(_ns_args(group), dtype=self._ns_dtype(group, sample))
            ortho = _distributed_ns(mine, len(members), sample, dist_group, ns)
            adj_lr = adjust_lr(lr, group["adjust_lr_fn"], key[0])
            for p, o in zip(members, ortho, strict=True):
                if p.grad is not None:
                    p.mul_(1 - lr * wd)
                    p.add_(o, alpha=-adj_lr)


def _bucket_key(p: Tensor) -> tuple[tuple[int, ...], torch.dtype, str]:
    """Matrices batched into one NS: same shape, dtype and device."""
    return (tuple(p.shape), p.dtype, str(p.device))


def _bucket_order(key: tuple[tuple[int, ...], torch.dtype, str]) -> tuple[Any, ...]:
    """A total order on bucket keys, the same on every rank (dtypes do not compare)."""
    return (key[0], str(key[1]), key[2])


def _buckets(params: Sequence[Tensor]) -> list[tuple[tuple, list[Tensor]]]:
    """Same-shape buckets of ``params`` in :func:`_bucket_order`, each in parameter
    order: the layout the distributed mode's ownership (matrix i -> rank i % W) uses."""
    buckets: dict[tuple, list[Tensor]] = defaultdict(list)
    for p in params:
        buckets[_bucket_key(p)].append(p)
    return [(key, buckets[key]) for key in sorted(buckets, key=_bucket_order)]


def _ns_args(group: dict[str, Any]) -> dict[str, Any]:
    """The group's Newton-Schulz arguments, less the dtype."""
    return dict(steps=group["ns_steps"], eps=group["eps"],
                coefficients=group["ns_coefficients"])


def _distributed_ns(mine: list[Tensor | None], n: int, like: Tensor, group: Any,
                    ns: dict[str, Any]) -> list[Tensor]:
    """Orthogonalize this rank's matrices of a bucket of ``n`` and gather everyone's.

    ``mine`` holds the matrices this rank owns, r, r + W, r + 2W, ... (None for one
    without a gradient this step); ``like`` is any matrix of the bucket (shape, device).
    Each rank sends ceil(n / W) slots, zero where nothing was computed; one
    ``all_gather`` shares the results, so every rank gets every matrix (matrix i comes
    from rank i % W), bit-identical everywhere.
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    chunk = torch.zeros((math.ceil(n / world), *like.shape), dtype=ns["dtype"],
                        device=like.device)
    slots = [j for j, u in enumerate(mine) if u is not None]
    if slots:
        chunk[slots] = newton_schulz(torch.stack([mine[j] for j in slots]), **ns)  # type: ignore[misc]
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
    ns_dtype: torch.dtype | str = torch.bfloat16,
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

    ``distributed=True`` shards Muon's momentum and Newton-Schulz work over the ranks
    of the default process group (ours only; :class:`Muon`). ``ns_dtype`` (ours only) sets the
    Newton-Schulz dtype, or ``"auto"`` to time fp32 against bf16 once per shape (the
    pretrain recipe's default); torch.optim.Muon always runs bf16, which ``"auto"``
    leaves as it is.
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
    if impl == "torch" and ns_dtype not in (torch.bfloat16, AUTO):
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

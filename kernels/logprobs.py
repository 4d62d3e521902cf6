"""Token log-probs and entropy straight from hidden states and the LM head.

RL training and importance ratios need, for every token, ``log p(target)`` and the
entropy of the next-token distribution. Done naively (``log_softmax(h @ W.T)``), that
materializes the logits, ``N x V`` floats, and autograd keeps several copies of that
size for the backward pass. With ``N`` = 64k tokens and a 150k vocabulary that is
tens of GiB. Both quantities only need three reductions per row, so nothing of size
``N x V`` has to exist:

- the logsumexp ``lse``;
- the target logit ``z_t``;
- ``sum(p * z)``, because ``H = lse - sum_v p_v z_v``.

The public entry points:

- `token_logprobs_ref`: the materialized fp32 reference, the test oracle.
- `token_logprobs`: the fused version, with two backends.
  - ``"torch"``: runs everywhere; the default off CUDA. It loops over token chunks.
    Each chunk's fp32 logits ``[chunk, V]`` give lse, the gather and the entropy,
    then they are freed.
  - ``"triton"``: the default on CUDA when Triton imports. One program per block of
    ``BLOCK_N`` tokens walks the vocabulary in ``BLOCK_V`` tiles and builds each tile
    of ``h @ W.T`` from ``BLOCK_D`` slices. It keeps an online logsumexp (running max
    ``m``, ``s = sum exp(z - m)``) and an online entropy accumulator
    (``a = sum exp(z - m) * (z - m)``, so ``H = log s - a / s``: no cancellation
    between two large numbers). Only one ``[BLOCK_N, BLOCK_V]`` tile is live per
    program.

The backward pass is shared by both backends: a `torch.autograd.Function` that
recomputes each chunk's logits from the saved ``hidden``, ``weight``, per-token
``lse`` and ``H``. The gradients follow from

    d logp_t / dz = onehot(t) - p          dH / dz = -p * (log p + H)

so ``dz = g_logp * (onehot(t) - p) - g_H * p * (log p + H)``, divided by the
temperature, then ``dhidden = dz @ W`` and ``dW += dz.T @ hidden``.
The Triton backend reuses this torch recompute for its backward: it is correct and
memory-bounded, and a fused Triton backward is left for later.

Memory bound (activations; fp32 = 4 bytes; ``c = chunk_tokens``):

- naive: ``k * N * V * 4`` bytes, where k is about 3 to 4 (logits, log_softmax,
  probs, grad), all live during backward.
- torch path:
  - forward: at most ``3 * c * V * 4`` bytes transient (logits, exp inside
    logsumexp, p * log p);
  - backward: ``2 * c * V * 4`` bytes (the recomputed logits turned into ``dz`` in
    place, and ``p``), plus the fp32 weight-gradient accumulator ``V * d * 4``;
  - saved between forward and backward: ``O(N)``, that is ``lse`` and ``H``,
    ``2 * N * 4`` bytes, besides the inputs themselves.
  - A non-fp32 ``weight`` is upcast once: ``V * d * 4`` bytes.
- Triton forward: ``BLOCK_N * BLOCK_V * 4`` bytes of registers/shared memory per
  program. Outputs are ``3 * N * 4`` bytes (logp, H, lse). The backward is the torch
  path's.

The default ``chunk_tokens`` makes one ``[c, V]`` fp32 buffer about 64 MiB:
``c = max(1, 2**24 // V)``.

This module never imports ``workbench``, and imports Triton only on first use of the
Triton backend.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "default_chunk_tokens", "token_logprobs", "token_logprobs_ref"]

IGNORE_INDEX = -100  # a target equal to this gets logp = 0 and no gradient (entropy is kept)
_CHUNK_ELEMENTS = 1 << 24  # elements of one [chunk, V] fp32 buffer: 64 MiB


def default_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk so that one ``[chunk, vocab]`` fp32 buffer is about 64 MiB."""
    return max(1, _CHUNK_ELEMENTS // max(vocab, 1))


# ----------------------------------------------------------------------------- reference


def token_logprobs_ref(hidden: Tensor, weight: Tensor, targets: Tensor,
                       bias: Tensor | None = None, temperature: float = 1.0,
                       ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """The materialized fp32 reference: ``(log p(target), entropy)``, each ``[*]``.

    ``hidden [*, d]``, ``weight [V, d]`` (the LM head, ``logits = hidden @ weight.T``),
    ``targets [*]``, ``bias [V]`` or None. The logits are divided by ``temperature``.
    It allocates the whole ``[N, V]`` logits and exists to be compared against.
    """
    z = hidden.float() @ weight.float().T
    if bias is not None:
        z = z + bias.float()
    z = z / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets)).long()
    logp = logp_all.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    p = logp_all.exp()
    entropy = -torch.where(p > 0, p * logp_all, torch.zeros_like(p)).sum(-1)
    return logp, entropy


# ----------------------------------------------------------------------------- torch chunks


def _chunk_logits(h: Tensor, w32: Tensor, b32: Tensor | None, inv_temp: float) -> Tensor:
    """fp32 logits ``[c, V]`` of one token chunk: ``(h @ W.T + b) / temperature``."""
    z = h.float() @ w32.T
    if b32 is not None:
        z += b32
    if inv_temp != 1.0:
        z *= inv_temp
    return z


def _torch_forward(h: Tensor, w32: Tensor, b32: Tensor | None, targets: Tensor,
                   inv_temp: float, chunk: int, ignore_index: int,
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``(logp, entropy, lse)``, each ``[N]`` fp32, one ``[chunk, V]`` block at a time."""
    n = h.shape[0]
    logp = torch.empty(n, dtype=torch.float32, device=h.device)
    ent = torch.empty_like(logp)
    lse = torch.empty_like(logp)
    for i in range(0, n, chunk):
        t = targets[i:i + chunk]
        z = _chunk_logits(h[i:i + chunk], w32, b32, inv_temp)
        m = torch.logsumexp(z, dim=-1)
        valid = t != ignore_index
        zt = z.gather(1, torch.where(valid, t, 0).unsqueeze(1)).squeeze(1)
        logp[i:i + chunk] = torch.where(valid, zt - m, 0.0)
        z -= m.unsqueeze(1)  # z is now log p, in place
        p = z.exp()
        # p * log p; a -inf logit (masked by the bias) gives 0 * -inf = nan, really 0
        ent[i:i + chunk] = -p.mul_(z).nan_to_num_(nan=0.0).sum(1)
        lse[i:i + chunk] = m
    return logp, ent, lse


def _torch_backward(h: Tensor, w32: Tensor, b32: Tensor | None, targets: Tensor,
                    inv_temp: float, chunk: int, ignore_index: int, lse: Tensor, ent: Tensor,
                    g_logp: Tensor | None, g_ent: Tensor | None,
                    need_h: bool, need_w: bool, need_b: bool,
                    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients wrt hidden, weight and bias, recomputing each chunk's logits.

    Per chunk ``dz = g_logp * (onehot(t) - p) - g_H * p * (log p + H)``, scaled by
    ``1 / temperature``. Two ``[chunk, V]`` buffers are live (``dz`` built in place
    in the logits, and ``p``).
    """
    n, d = h.shape
    v = w32.shape[0]
    gh = torch.empty(n, d, dtype=torch.float32, device=h.device) if need_h else None
    gw = torch.zeros(v, d, dtype=torch.float32, device=h.device) if need_w else None
    gb = torch.zeros(v, dtype=torch.float32, device=h.device) if need_b else None
    for i in range(0, n, chunk):
        hc = h[i:i + chunk].float()
        t = targets[i:i + chunk]
        valid = t != ignore_index
        z = _chunk_logits(hc, w32, b32, inv_temp)
        z -= lse[i:i + chunk].unsqueeze(1)  # log p
        p = z.exp()
        # coef = g_logp + g_H * (log p + H), then dz = -p * coef (+ g_logp at the target)
        if g_ent is not None:
            z += ent[i:i + chunk].unsqueeze(1)
            z *= g_ent[i:i + chunk].unsqueeze(1)
        else:
            z.zero_()
        gl = None
        if g_logp is not None:
            gl = torch.where(valid, g_logp[i:i + chunk], 0.0)
            z += gl.unsqueeze(1)
        dz = z.mul_(p).neg_().nan_to_num_(nan=0.0)  # p = 0 at a -inf logit
        if gl is not None:
            rows = torch.arange(t.shape[0], device=h.device)
            dz.index_put_((rows, torch.where(valid, t, 0)), gl, accumulate=True)
        if inv_temp != 1.0:
            dz *= inv_temp
        if gh is not None:
            torch.mm(dz, w32, out=gh[i:i + chunk])
        if gw is not None:
            gw.addmm_(dz.T, hc)
        if gb is not None:
            gb += dz.sum(0)
    return gh, gw, gb


# ----------------------------------------------------------------------------- triton


# triton.language, bound by `_triton_kernel` on first use. It must be a module global:
# Triton's interpreter swaps in its own implementations by patching the `tl` it finds
# in the kernel's __globals__ (a closure variable would be missed).
tl: Any = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _triton_kernel(interpret: bool) -> Any:
    """Build the forward kernel on first use (Triton is an optional dependency).

    Cached per value of ``TRITON_INTERPRET``, because Triton decides between the
    compiler and the interpreter when ``@triton.jit`` runs. The interpreter also needs
    the variable set before Triton's first import: ``tl.sum`` and the like are @jit
    functions of triton.language itself.
    """
    global tl
    import triton
    import triton.language

    tl = triton.language
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        # tl.sum and friends are themselves @jit functions, fixed at import time
        if not isinstance(tl.sum, InterpretedFunction):
            raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported; "
                               "set it before the first import (in a fresh process)")

    @triton.jit
    def _logprobs_fwd(h_ptr, w_ptr, b_ptr, t_ptr, logp_ptr, ent_ptr, lse_ptr,
                      N, V, D, stride_hn, stride_hd, stride_wv, stride_wd,
                      inv_temp, ignore_index,
                      HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        tgt = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
        m = tl.full([BLOCK_N], -1e30, tl.float32)  # finite: (m - m_new) * 0 must stay 0
        s = tl.zeros([BLOCK_N], tl.float32)  # sum exp(z - m)
        a = tl.zeros([BLOCK_N], tl.float32)  # sum exp(z - m) * (z - m)
        zt = tl.zeros([BLOCK_N], tl.float32)  # the target's logit
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < V
            acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                ds = d0 + tl.arange(0, BLOCK_D)
                d_ok = ds < D
                h = tl.load(h_ptr + rows[:, None] * stride_hn + ds[None, :] * stride_hd,
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                w = tl.load(w_ptr + cols[None, :] * stride_wv + ds[:, None] * stride_wd,
                            mask=col_ok[None, :] & d_ok[:, None], other=0.0)
                acc = tl.dot(h, w, acc, input_precision=PRECISION)
            if HAS_BIAS:
                acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            z = tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=1))
            e = tl.exp(z - m_new[:, None])
            ez = e * tl.where(e > 0, z - m_new[:, None], 0.0)  # 0, not 0 * -inf
            scale = tl.exp(m - m_new)
            a = scale * (a + (m - m_new) * s) + tl.sum(ez, axis=1)
            s = scale * s + tl.sum(e, axis=1)
            m = m_new
            zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        log_s = tl.log(s)
        lse = m + log_s
        logp = tl.where(tgt == ignore_index, 0.0, zt - lse)
        tl.store(logp_ptr + rows, logp, mask=row_ok)
        tl.store(ent_ptr + rows, log_s - a / s, mask=row_ok)
        tl.store(lse_ptr + rows, lse, mask=row_ok)

    return _logprobs_fwd


def _triton_forward(h: Tensor, w: Tensor, b: Tensor | None, targets: Tensor,
                    inv_temp: float, ignore_index: int,
                    blocks: tuple[int, int, int] | None = None,
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """``(logp, entropy, lse)`` from the Triton kernel; h and w share one dtype."""
    kernel = _triton_kernel(_interpreting())
    n, d = h.shape
    v = w.shape[0]
    if blocks is None:  # the interpreter is slow: small tiles; tl.dot wants >= 16
        blocks = (16, 32, 16) if h.device.type == "cpu" else (64, 128, 64)
    bn, bv, bd = blocks
    out = torch.empty(3, n, dtype=torch.float32, device=h.device)
    # fp32 inputs: exact fp32 products, not TF32, since log-prob ratios are exponentiated
    precision = "ieee" if h.dtype == torch.float32 else "tf32"
    grid = (_cdiv(n, bn),)
    kernel[grid](h, w, b if b is not None else h, targets, out[0], out[1], out[2],
                 n, v, d, h.stride(0), h.stride(1), w.stride(0), w.stride(1),
                 float(inv_temp), int(ignore_index),
                 HAS_BIAS=b is not None, PRECISION=precision,
                 BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd)
    return out[0], out[1], out[2]


def _cdiv(a: int, b: int) -> int:
    """Ceil division (``triton.cdiv`` without importing Triton)."""
    return -(-a // b)


# ----------------------------------------------------------------------------- autograd


class _TokenLogprobs(torch.autograd.Function):
    """Forward by either backend, backward by the chunked torch recompute."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                inv_temp: float, chunk: int, ignore_index: int, backend: str,
                blocks: tuple[int, int, int] | None) -> tuple[Tensor, Tensor]:
        w32 = weight.float()
        b32 = bias.float() if bias is not None else None
        if backend == "triton":
            h, w = hidden, weight
            if h.dtype != w.dtype:
                h, w = h.float(), w32
            logp, ent, lse = _triton_forward(h.contiguous(), w.contiguous(), b32, targets,
                                             inv_temp, ignore_index, blocks)
        else:
            logp, ent, lse = _torch_forward(hidden, w32, b32, targets, inv_temp, chunk,
                                            ignore_index)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.inv_temp, ctx.chunk, ctx.ignore_index = inv_temp, chunk, ignore_index
        ctx.set_materialize_grads(False)  # a None grad (entropy unused) skips its term
        return logp, ent

    @staticmethod
    def backward(ctx: Any, g_logp: Tensor | None, g_ent: Tensor | None,
                 ) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if (g_logp is None and g_ent is None) or not (need_h or need_w or need_b):
            return (None,) * 9
        b32 = bias.float() if bias is not None else None
        gh, gw, gb = _torch_backward(
            hidden, weight.float(), b32, targets, ctx.inv_temp, ctx.chunk, ctx.ignore_index,
            lse, ent, None if g_logp is None else g_logp.float(),
            None if g_ent is None else g_ent.float(), need_h, need_w, need_b and bias is not None)
        return (None if gh is None else gh.to(hidden.dtype),
                None if gw is None else gw.to(weight.dtype),
                None if gb is None else gb.to(bias.dtype),
                None, None, None, None, None, None)


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, *,
                   bias: Tensor | None = None, temperature: float = 1.0,
                   chunk_tokens: int | None = None, backend: str | None = None,
                   ignore_index: int = IGNORE_INDEX,
                   blocks: tuple[int, int, int] | None = None) -> tuple[Tensor, Tensor]:
    """``(log p(target), entropy)``, each ``[*]`` fp32, without ``[N, V]`` logits.

    - ``hidden [*, d]``: the final hidden states (after the last norm).
    - ``weight [V, d]``: the LM head, ``logits = (hidden @ weight.T + bias) / temperature``.
    - ``targets [*]``: token ids; ``ignore_index`` rows get logp 0 and no gradient.
    - ``chunk_tokens``: tokens per chunk on the torch path and in the backward.
      The default keeps one ``[chunk, V]`` fp32 buffer near 64 MiB.
    - ``backend``:
      - ``"torch"``: the chunked loop.
      - ``"triton"``: the fused kernel. On a CPU it runs only under
        ``TRITON_INTERPRET=1`` (set before Triton is first imported), for tests.
      - ``None``: Triton on CUDA when it imports, else torch.
    - ``blocks``: optional Triton tile sizes ``(BLOCK_N, BLOCK_V, BLOCK_D)``, each at
      least 16.

    Both outputs are differentiable wrt ``hidden``, ``weight`` and ``bias``. Peak
    activation memory is ``O(chunk_tokens * V)`` rather than ``O(N * V)``; the module
    docstring gives the byte formulas.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} "
                         "disagree on the token dimensions")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} is not [V, {hidden.shape[-1]}]")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if backend is None:
        backend = "triton" if hidden.is_cuda and _triton_available() else "torch"
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch', 'triton' or None, got {backend!r}")
    if backend == "triton":
        if not _triton_available():
            raise RuntimeError("backend='triton' needs triton: pip install 'workbench-lab[gpu]'")
        if not hidden.is_cuda and not _interpreting():
            raise RuntimeError("backend='triton' on a CPU tensor needs TRITON_INTERPRET=1 "
                               "(the interpreter); use backend='torch' otherwise")
    if blocks is not None and any(b < 16 or b & (b - 1) for b in blocks):
        raise ValueError(f"blocks must be powers of two >= 16 (tl.dot, tl.arange), got {blocks}")
    lead = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).long()
    chunk = chunk_tokens if chunk_tokens is not None else default_chunk_tokens(weight.shape[0])
    if chunk < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk}")
    logp, ent = _TokenLogprobs.apply(h, weight, bias, t, 1.0 / temperature, chunk,
                                     ignore_index, backend, blocks)
    return logp.view(lead), ent.view(lead)

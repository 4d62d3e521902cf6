"""Causal flash attention that also returns the per-head max logit (QK-Clip).

QK-Clip (MuonClip; Kimi K2 report, arXiv 2507.20534) needs S_max per head: the largest
pre-softmax logit q_i . k_j * scale over the causally visible pairs (j <= i). A
flash-attention forward already keeps that number, the running row max of its
online softmax, so the Triton kernel here stores it ([B, H, T] row maxima, reduced
to [B, H] by a torch ``amax``) and the max costs nothing extra.

- ``attention_ref(q, k, v, scale)``: the torch twin, materialized in fp32.
- ``attention(q, k, v, scale, backend=...)``: the Triton kernel as an autograd
  Function (FlashAttention-2 forward and backward) on CUDA, the reference elsewhere.

Max-logit definition (the same as ``workbench.models.gpt``): the signed max of the
*scaled* logits, ``max_{j <= i} q_i . k_j * scale`` with scale = 1/sqrt(head_dim)
by default, over all query rows i of one (batch, head). Signed, not max |.|: the
value softmax sees and the one flex_attention's ``max_scores`` returns. It is
float32, detached and not differentiable. The GPT reduces it over the batch
(``amax(dim=0)``) to its per-head [H] vector.

Supported by the kernel: q, k, v [B, H, T, D] (k, v may have fewer heads, GQA:
they are repeated to H before the kernel), head_dim D in {16, 32, 64, 128}, any
T >= 1 (the ragged last tile is masked), fp32 / bf16 / fp16 inputs with fp32
accumulation and statistics. fp32 matmuls use IEEE fp32 unless
``torch.set_float32_matmul_precision`` allows TF32, as torch itself does.

This module imports only torch. Triton (the ``[gpu]`` extra) is imported and the
kernels are jitted on the first Triton call, so importing it on a CPU costs nothing.
"""

from __future__ import annotations

import functools
import math
import os
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

# Set by _kernels() on the first Triton call. The kernel bodies below name `tl` as a
# module global, which is how Triton (compiler and interpreter alike) resolves it.
triton: Any = None
tl: Any = None

BACKENDS = ("auto", "triton", "reference")
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- reference


def attention_ref(q: Tensor, k: Tensor, v: Tensor,
                  scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Causal softmax attention with the T x T scores materialized in fp32.

    q, k, v [B, H, T, D] -> (out [B, H, T, D] in q's dtype, max_logit [B, H] float32).
    max_logit is the max of the scaled scores q . k * scale over j <= i, detached.
    Differentiable in q, k, v (plain torch), so tests take its gradients as the truth.
    """
    T, D = q.size(-2), q.size(-1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = (q.float() @ k.float().transpose(-2, -1)) * scale
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~causal, float("-inf"))
    max_logit = s.detach().amax(dim=(-2, -1))
    out = torch.softmax(s, dim=-1) @ v.float()
    return out.to(q.dtype), max_logit


# ----------------------------------------------------------------------------- Triton kernels
#
# Plain functions here, jitted by _kernels() (Triton is imported lazily). One program
# handles one tile of rows of one (batch, head): pid 0 = tile, pid 1 = b * H + h.
# Rows / columns past T are masked on load and store; LSE, ROWMAX and DELTA are
# contiguous [B, H, T] float32. The last dim of every tensor has stride 1.


def _fwd_kernel(
    Q, K, V, Out, LSE, ROWMAX,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    H, T, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Online-softmax forward over key tiles; writes O, logsumexp and row max per row."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    Out += b * stride_ob + h * stride_oh

    q = tl.load(Q + rows[:, None] * stride_qt + dims[None, :], mask=rows[:, None] < T, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max (scaled logits)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp(s - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # Causal block skipping: keys past this tile's last row are never visible.
    end = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start in range(0, end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kv_mask = cols[:, None] < T
        k = tl.load(K + cols[:, None] * stride_kt + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + cols[:, None] * stride_vt + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        # cols <= rows also hides cols >= T for every stored row (rows < T). Key 0 is in
        # the first tile, so m_i is finite after it and no row ever computes inf - inf.
        s = tl.where(cols[None, :] <= rows[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    row_ok = rows < T
    out = acc / l_i[:, None]
    tl.store(Out + rows[:, None] * stride_ot + dims[None, :], out.to(Out.dtype.element_ty),
             mask=row_ok[:, None])
    stat = pid_bh.to(tl.int64) * T + rows
    tl.store(LSE + stat, m_i + tl.log(l_i), mask=row_ok)
    tl.store(ROWMAX + stat, m_i, mask=row_ok)


def _bwd_delta_kernel(
    Out, DO, DELTA,
    stride_ob, stride_oh, stride_ot,
    stride_dob, stride_doh, stride_dot,
    H, T,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """delta_i = sum_d dO_id * O_id, the softmax-backward row term, in fp32."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < T
    o = tl.load(Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + dims[None, :],
                mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dot + dims[None, :],
                 mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * T + rows, tl.sum(o * do, 1), mask=row_ok)


def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    H, T, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """dK, dV of one key tile, looping over the query tiles that can see it.

    P is recomputed from q, k and the saved logsumexp: P = exp(s - lse). Then
    dV = P^T dO, dS = P * (dO V^T - delta), dK = scale * dS^T Q.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    stat = pid_bh.to(tl.int64) * T

    col_ok = cols[:, None] < T
    k = tl.load(K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kt + dims[None, :],
                mask=col_ok, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vt + dims[None, :],
                mask=col_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    # Causal block skipping: query rows before this tile's first key never see it.
    first = (pid_n * BLOCK_N) // BLOCK_M * BLOCK_M
    for start in range(first, T, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < T
        q = tl.load(Q + rows[:, None] * stride_qt + dims[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + rows[:, None] * stride_dot + dims[None, :], mask=row_ok[:, None],
                     other=0.0)
        lse = tl.load(LSE + stat + rows, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + stat + rows, mask=row_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        # dk and dv sum over rows: padded rows (q = dO = 0) must add exactly nothing.
        visible = (cols[None, :] <= rows[:, None]) & row_ok[:, None]
        p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    dk *= scale
    tl.store(DK + b * stride_dkb + h * stride_dkh + cols[:, None] * stride_dkt + dims[None, :],
             dk.to(DK.dtype.element_ty), mask=col_ok)
    tl.store(DV + b * stride_dvb + h * stride_dvh + cols[:, None] * stride_dvt + dims[None, :],
             dv.to(DV.dtype.element_ty), mask=col_ok)


def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    H, T, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """dQ of one query tile, looping over its visible key tiles: dQ = scale * dS K."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    stat = pid_bh.to(tl.int64) * T

    row_ok = rows < T
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qt + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dot + dims[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + stat + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + stat + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    end = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start in range(0, end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kv_mask = cols[:, None] < T
        k = tl.load(K + cols[:, None] * stride_kt + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + cols[:, None] * stride_vt + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        # Padded rows may hold garbage here; rows are independent and never stored.
        p = tl.where(cols[None, :] <= rows[:, None], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

    dq *= scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqt + dims[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


def _interpreting() -> bool:
    """TRITON_INTERPRET set: Triton runs kernels in numpy on the CPU (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


@functools.cache
def _jitted(interpret: bool) -> SimpleNamespace:
    """Import Triton and jit the kernels, once per mode: triton.jit reads
    TRITON_INTERPRET when it wraps a function, so a change of mode needs new wrappers."""
    global triton, tl
    import triton
    import triton.language as tl

    return SimpleNamespace(
        fwd=triton.jit(_fwd_kernel),
        delta=triton.jit(_bwd_delta_kernel),
        dkdv=triton.jit(_bwd_dkdv_kernel),
        dq=triton.jit(_bwd_dq_kernel),
    )


def _kernels() -> SimpleNamespace:
    return _jitted(_interpreting())


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it is in the `[gpu]` extra)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- launch


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _strides(x: Tensor) -> tuple[int, int, int]:
    """(batch, head, time) strides; the kernels assume the last dim has stride 1."""
    return x.stride(0), x.stride(1), x.stride(2)


def _unit_last(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _precision(dtype: torch.dtype) -> str:
    """IEEE fp32 dots unless torch's own matmul precision allows TF32 (ignored for 16-bit)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _default_blocks(head_dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """Tile sizes (rows, keys). 64 x 64 fits shared memory up to D = 128 in 16-bit;
    fp32 at D = 128 halves them. Sensible defaults, not autotuned."""
    if head_dim == 128 and dtype == torch.float32:
        return 32, 32
    return 64, 64


def _num_warps(head_dim: int) -> int:
    return 8 if head_dim == 128 else 4


def _flash_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, block_m: int,
                   block_n: int) -> tuple[Tensor, Tensor, Tensor]:
    """-> (out [B, H, T, D], logsumexp [B, H, T] fp32, row max [B, H, T] fp32)."""
    B, H, T, D = q.shape
    out = torch.empty((B, H, T, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    rowmax = torch.empty_like(lse)
    grid = (_cdiv(T, block_m), B * H)
    _kernels().fwd[grid](
        q, k, v, out, lse, rowmax,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        H, T, scale,
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=_precision(q.dtype),
        num_warps=_num_warps(D), num_stages=2,
    )  # fmt: skip
    return out, lse, rowmax


def _flash_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor,
                    scale: float, block_m: int, block_n: int) -> tuple[Tensor, Tensor, Tensor]:
    """FlashAttention-2 backward: delta = rowsum(dO * O), then dK/dV per key tile
    (no atomics: each program owns its tile) and dQ per query tile."""
    B, H, T, D = q.shape
    kern = _kernels()
    precision = _precision(q.dtype)
    warps = _num_warps(D)
    delta = torch.empty_like(lse)
    kern.delta[(_cdiv(T, block_m), B * H)](
        out, dout, delta, *_strides(out), *_strides(dout), H, T,
        HEAD_DIM=D, BLOCK_M=block_m,
    )  # fmt: skip
    dq = torch.empty((B, H, T, D), device=q.device, dtype=q.dtype)
    dk = torch.empty((B, H, T, D), device=q.device, dtype=k.dtype)
    dv = torch.empty((B, H, T, D), device=q.device, dtype=v.dtype)
    kern.dkdv[(_cdiv(T, block_n), B * H)](
        q, k, v, dout, dk, dv, lse, delta,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
        H, T, scale,
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=precision,
        num_warps=warps, num_stages=2,
    )  # fmt: skip
    kern.dq[(_cdiv(T, block_m), B * H)](
        q, k, v, dout, dq, lse, delta,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq),
        H, T, scale,
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=precision,
        num_warps=warps, num_stages=2,
    )  # fmt: skip
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Causal flash attention with its per-(batch, head) max logit as a second output.

    Saves q, k, v, out and the [B, H, T] logsumexp (not the T x T probabilities);
    the backward recomputes them tile by tile. max_logit is non-differentiable.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, scale: float, block_m: int,
                block_n: int) -> tuple[Tensor, Tensor]:
        q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
        out, lse, rowmax = _flash_forward(q, k, v, scale, block_m, block_n)
        max_logit = rowmax.amax(dim=-1)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.block_m, ctx.block_n = scale, block_m, block_n
        ctx.mark_non_differentiable(max_logit)
        return out, max_logit

    @staticmethod
    def backward(ctx: Any, dout: Tensor, _dmax: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, None, None, None]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _flash_backward(q, k, v, out, _unit_last(dout), lse, ctx.scale,
                                     ctx.block_m, ctx.block_n)
        return dq, dk, dv, None, None, None


# ----------------------------------------------------------------------------- API


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [B, H, T, D]")
    B, H, T, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[2:] != (T, D):
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [B, Hkv, T, D] "
                         f"matching q {tuple(q.shape)}")
    if H % k.size(1):
        raise ValueError(f"k/v heads ({k.size(1)}) must divide q heads ({H})")
    if T < 1:
        raise ValueError("attention needs T >= 1")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype (got {q.dtype}, {k.dtype}, {v.dtype})")


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, *,
              backend: str = "auto", block_m: int | None = None,
              block_n: int | None = None) -> tuple[Tensor, Tensor]:
    """Causal attention -> (out [B, H, T, D], max_logit [B, H] float32).

    q [B, H, T, D]; k, v [B, Hkv, T, D] with Hkv dividing H (query head h reads kv head
    h // (H // Hkv); k and v are repeated, autograd sums their gradients back).
    scale defaults to 1/sqrt(D). max_logit is the max over j <= i of q_i . k_j * scale
    per (batch, query head): detached, non-differentiable.

    backend:
    - "auto": the Triton kernel for CUDA tensors when Triton is installed, else the
      reference (materialized, O(T^2) memory: fine for the short sequences a CPU runs).
    - "triton": force the kernel. On CPU tensors only under TRITON_INTERPRET=1 (tests).
    - "reference": ``attention_ref``.
    block_m / block_n override the tile sizes (powers of two >= 16; tests use 16).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend ({backend!r}) must be one of {', '.join(BACKENDS)}")
    _check(q, k, v)
    D = q.size(-1)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if k.size(1) != q.size(1):
        groups = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if backend == "auto":
        backend = "triton" if q.is_cuda and triton_available() else "reference"
    if backend == "reference":
        return attention_ref(q, k, v, scale)

    if not triton_available():
        raise RuntimeError('backend "triton" needs Triton: pip install "workbench-lab[gpu]"')
    if not q.is_cuda and not _interpreting():
        raise RuntimeError(f'backend "triton" on a {q.device.type} tensor needs '
                           'TRITON_INTERPRET=1 (tests); use backend="reference" off CUDA')
    if D not in HEAD_DIMS:
        raise ValueError(f"head_dim {D} not supported by the Triton kernel; use one of {HEAD_DIMS}")
    if q.dtype not in DTYPES:
        raise ValueError(f"dtype {q.dtype} not supported; use float32, bfloat16 or float16")
    for name, block in (("block_m", block_m), ("block_n", block_n)):
        if block is not None and (block < 16 or block & (block - 1)):
            raise ValueError(f"{name} ({block}) must be a power of two >= 16 (tl.dot's minimum)")
    default_m, default_n = _default_blocks(D, q.dtype)
    return FlashAttention.apply(q, k, v, scale, block_m or default_m, block_n or default_n)

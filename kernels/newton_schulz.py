"""Batched Muon Newton-Schulz (NS5) with symmetric Triton Gram products.

One quintic Newton-Schulz step on ``X`` ([m, n], m <= n) is three products::

    A = X X^T                  # [m, n] x [n, m] -> [m, m]; symmetric
    P = b A + c A A            # [m, m] x [m, m] -> [m, m]; symmetric (A is)
    X = a X + P X              # [m, m] x [m, n] -> [m, n]; a general product

The first two produce symmetric matrices, so only the blocks on and above the
diagonal need computing: the Triton kernel here launches one program per upper
triangular block pair (i <= j) and writes each tile to both (i, j) and (j, i).
That executes T(T+1)/2 of the T^2 output tiles (T = ceil(m / BLOCK_M)), about
half the flops of those two products. ``A A`` reuses the same kernel: for a
symmetric ``A``, ``A A = A A^T``, a Gram product of ``A``'s rows, with ``b A`` fused
into its epilogue (one read of ``A`` instead of an extra ``addmm`` pass).

``P X`` stays ``torch.baddbmm`` (cuBLAS): its output has no symmetry to exploit,
so a Triton GEMM could at best match cuBLAS on a plain GEMM, and ``a X`` is
already fused there through ``beta``.

``newton_schulz_ref`` is the torch twin the kernel is tested against. It performs
exactly the operations of ``torch.optim.Muon``'s ``_zeropower_via_newtonschulz``
(torch >= 2.9): cast to bf16, transpose when rows > cols, divide by the Frobenius
norm clamped at ``eps``, then 5 steps of ``X @ X.T``, ``addmm``, ``addmm``. torch runs
NS in bf16 on every device, CPU included; so does the reference by default.

Triton is imported lazily (only on the Triton path), and the kernels are built on
first use, so importing this module on a CPU machine costs nothing. Under
``TRITON_INTERPRET=1`` the kernels run on CPU tensors (tests, ``wb bench kernels``
on a machine without a GPU).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BACKENDS",
    "NS_COEFFICIENTS",
    "gram",
    "newton_schulz",
    "newton_schulz_ref",
    "ns_flops",
    "sym_square",
    "triton_available",
]

# torch.optim.Muon's defaults (Keller Jordan's quintic: maximal slope at zero).
NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
BACKENDS = ("auto", "triton", "torch")


# ----------------------------------------------------------------------------- reference


def _check_ns_args(G: Tensor, steps: int) -> None:
    if G.ndim < 2:
        raise ValueError(
            f"newton_schulz needs a matrix or a stack of matrices, got {tuple(G.shape)}"
        )
    if not 0 <= steps < 100:
        raise ValueError(f"ns steps must be in [0, 100), got {steps}")


def newton_schulz_ref(
    G: Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """Quintic Newton-Schulz in torch: the reference the Triton path is tested against.

    ``G`` is one matrix ``[m, n]`` or a stack ``[..., m, n]`` of same-shape matrices;
    each is normalized and orthogonalized on its own. A single matrix goes through
    exactly ``torch.optim.Muon``'s op chain (``@``, ``addmm``, ``addmm``), so the result is
    bit-identical to torch's; a stack uses the batched ``bmm``/``baddbmm`` equivalents.
    Runs in ``dtype`` (bf16, like torch, on every device) and returns that dtype.
    The input is never modified (torch's own function divides a bf16 input in place).
    """
    _check_ns_args(G, steps)
    a, b, c = coefficients
    X = G.to(dtype)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    if X.ndim == 2:
        X = X / X.norm().clamp(min=eps)
        for _ in range(steps):
            A = X @ X.T
            P = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, P, X, beta=a)
    else:
        batch_shape = X.shape[:-2]
        X = X.reshape(-1, *X.shape[-2:])
        X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
        for _ in range(steps):
            A = X @ X.mT
            P = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, P, X, beta=a)
        X = X.reshape(*batch_shape, *X.shape[-2:])
    return X.mT if transposed else X


def ns_flops(m: int, n: int, steps: int = 5) -> int:
    """Dense flops of ``steps`` NS iterations on one ``[m, n]`` matrix (what the bench divides by).

    With ``r = min(m, n)``, ``s = max(m, n)`` (NS runs on the wide orientation), a step is
    ``X X^T`` (2 r^2 s) + ``A A`` (2 r^3) + ``P X`` (2 r^2 s) = ``4 r^2 s + 2 r^3``; the
    elementwise ``b A``, ``a X`` and the normalization are O(r s) and left out. This is the
    dense count, the same for torch's NS and ours, so TFLOP/s compare like for like.
    The symmetric kernels execute only the upper-triangular tiles of ``X X^T`` and
    ``A A``: about half of those two products, i.e. ``r^2 s + r^3`` (plus the diagonal
    tiles' share) instead of ``2 r^2 s + 2 r^3`` per step.
    """
    r, s = min(m, n), max(m, n)
    return steps * (4 * r * r * s + 2 * r**3)


# ----------------------------------------------------------------------------- triton


def triton_available() -> bool:
    """Whether ``import triton`` works (it is in the ``gpu`` and ``dev`` extras)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


# triton.language, bound on first use: the kernel body reads it as a module global
# (Triton before 3.4 resolves globals but not closure variables in @jit functions).
tl: Any = None


@functools.cache
def _sym_gram_kernel(interpret: bool) -> Any:
    """Build the Triton kernel on first use (Triton reads ``TRITON_INTERPRET`` when a
    function is decorated, so the interpreted and compiled variants are cached apart)."""
    global tl
    import triton
    import triton.language as tl

    @triton.jit
    def sym_gram(
        x_ptr, d_ptr, c_ptr, M, K,
        sxb, sxm, sxk, sdb, sdm, sdn, scb, scm, scn,
        alpha, beta,
        HAS_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
        INTERP_BF16: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ):
        """C[b] = alpha X[b] X[b]^T (+ beta D[b], D symmetric), upper tiles only.

        Program (pid, b) owns block pair (i, j), i <= j, enumerated column by column:
        pid = j (j + 1) / 2 + i. The float sqrt guess for j is corrected by one either
        way, so rounding cannot pick a wrong column.

        INTERP_BF16 works around two bf16 gaps of the interpreter (triton 3.9;
        triton-lang/triton#11584): its ``tl.dot`` multiplies bf16 bit patterns, so the
        tiles are upcast first (bf16 x bf16 products are exact in fp32: same result),
        and its fp32 -> bf16 cast truncates, so the output is rounded to nearest even
        first, as the GPU's cast does.
        """
        pid = tl.program_id(0)
        bid = tl.program_id(1).to(tl.int64)
        j = ((tl.sqrt((8 * pid + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
        j = tl.where((j + 1) * (j + 2) // 2 <= pid, j + 1, j)
        j = tl.where(j * (j + 1) // 2 > pid, j - 1, j)
        i = pid - j * (j + 1) // 2

        rows_i = i * BLOCK_M + tl.arange(0, BLOCK_M)
        rows_j = j * BLOCK_M + tl.arange(0, BLOCK_M)
        rk = tl.arange(0, BLOCK_K)
        in_i = rows_i < M
        in_j = rows_j < M
        x_base = x_ptr + bid * sxb
        # tl.full, not tl.zeros: only builtins, so the interpreter also runs this when
        # triton was imported before TRITON_INTERPRET=1 was set (tl.zeros is a @jit
        # helper, decorated compiled at import time then).
        acc = tl.full((BLOCK_M, BLOCK_M), 0.0, tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + rk
            in_k = ks < K
            xi = tl.load(x_base + rows_i[:, None] * sxm + ks[None, :] * sxk,
                         mask=in_i[:, None] & in_k[None, :], other=0.0)
            xjt = tl.load(x_base + ks[:, None] * sxk + rows_j[None, :] * sxm,
                          mask=in_k[:, None] & in_j[None, :], other=0.0)
            if INTERP_BF16:
                xi = xi.to(tl.float32)
                xjt = xjt.to(tl.float32)
            acc = tl.dot(xi, xjt, acc, input_precision=INPUT_PRECISION)
        acc = acc * alpha
        both = in_i[:, None] & in_j[None, :]
        if HAS_D:
            d = tl.load(d_ptr + bid * sdb + rows_i[:, None] * sdm + rows_j[None, :] * sdn,
                        mask=both, other=0.0)
            acc += beta * d.to(tl.float32)
        if INTERP_BF16:  # round to nearest even at bit 16; the cast below then is exact
            bits = acc.to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            acc = bits.to(tl.float32, bitcast=True)
        out = acc.to(c_ptr.dtype.element_ty)
        c_base = c_ptr + bid * scb
        tl.store(c_base + rows_i[:, None] * scm + rows_j[None, :] * scn, out, mask=both)
        if i != j:  # the mirror tile (j, i): element (r, s) lands at C[rows_j[s], rows_i[r]]
            tl.store(c_base + rows_j[None, :] * scm + rows_i[:, None] * scn, out, mask=both)

    return sym_gram


def _launch_config(m: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps, num_stages) for a Gram output of side ``m``.

    128 x 128 tiles keep the tensor cores busy on Muon-sized matrices (>= 512); smaller
    matrices get 64 x 64 tiles so there are enough programs to fill the SMs. fp32
    halves BLOCK_K to keep the same shared memory per pipeline stage.
    """
    block_m = 128 if m >= 512 else 64
    block_k = 64 if dtype.itemsize <= 2 else 32
    return block_m, block_k, (8 if block_m == 128 else 4), 3


def _sym_gram(
    X: Tensor,
    D: Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
    block_m: int | None = None,
    block_k: int | None = None,
) -> Tensor:
    """``alpha X X^T (+ beta D)`` for ``X`` [B, m, k]; D [B, m, m] symmetric or None."""
    if X.ndim != 3:
        raise ValueError(f"expected a stack [B, m, k], got {tuple(X.shape)}")
    if X.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"the Gram kernel takes fp32, bf16 or fp16, got {X.dtype}")
    bsz, m, k = X.shape
    C = torch.empty(bsz, m, m, dtype=X.dtype, device=X.device)
    if bsz == 0 or m == 0:
        return C
    if k == 0:
        return C.zero_() if D is None else C.copy_(D).mul_(beta)
    cfg_m, cfg_k, num_warps, num_stages = _launch_config(m, X.dtype)
    bm, bk = block_m or cfg_m, block_k or cfg_k
    interpret = _interpreting()
    tiles = -(-m // bm)
    grid = (tiles * (tiles + 1) // 2, bsz)
    Dt = D if D is not None else C  # never read when HAS_D is False
    # fp32 inputs follow torch's matmul setting (full fp32 unless TF32 is allowed);
    # for 16-bit inputs the precision flag does not apply (Triton's default).
    ieee = X.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    precision = "ieee" if ieee else "tf32"
    _sym_gram_kernel(interpret)[grid](
        X, Dt, C, m, k,
        X.stride(0), X.stride(1), X.stride(2),
        Dt.stride(0), Dt.stride(1), Dt.stride(2),
        C.stride(0), C.stride(1), C.stride(2),
        float(alpha), float(beta),
        HAS_D=D is not None, BLOCK_M=bm, BLOCK_K=bk,
        INTERP_BF16=interpret and X.dtype == torch.bfloat16,
        INPUT_PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
    return C


def _batched(fn: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    """Run a [B, m, k] -> [B, m, m] function on [m, k] or [..., m, k]."""
    if X.ndim < 2:
        raise ValueError(f"expected a matrix or a stack of matrices, got {tuple(X.shape)}")
    lead = X.shape[:-2]
    out = fn(X.reshape(-1, *X.shape[-2:]))
    return out.reshape(*lead, *out.shape[-2:])


def gram(X: Tensor, block_m: int | None = None, block_k: int | None = None) -> Tensor:
    """``X X^T`` by the symmetric Triton kernel: [..., m, k] -> [..., m, m], X's dtype.

    Only the upper-triangular block pairs are computed (each tile written to (i, j)
    and (j, i)), accumulating in fp32. ``block_m``/``block_k`` override the tile sizes
    (tests use 16 so small matrices span several tiles).
    """
    return _batched(lambda x: _sym_gram(x, block_m=block_m, block_k=block_k), X)


def sym_square(
    A: Tensor,
    alpha: float = 1.0,
    beta: float = 0.0,
    block_m: int | None = None,
    block_k: int | None = None,
) -> Tensor:
    """``alpha A A + beta A`` for SYMMETRIC ``A`` [..., m, m], by the symmetric kernel.

    For a symmetric ``A``, ``A A = A A^T``, so this is a Gram product of ``A``'s rows and
    its output is symmetric too: upper tiles only, with ``beta A`` fused into the
    epilogue. In NS it is ``P = b A + c A A`` (``alpha=c``, ``beta=b``). A non-symmetric
    ``A`` gives ``alpha A A^T + beta (A's upper triangle, mirrored)``, not ``A A``.
    """
    if A.size(-1) != A.size(-2):
        raise ValueError(f"sym_square needs square matrices, got {tuple(A.shape)}")

    def run(a: Tensor) -> Tensor:
        return _sym_gram(a, a, alpha, beta, block_m, block_k)

    return _batched(run, A)


def _newton_schulz_triton(
    G: Tensor,
    steps: int,
    eps: float,
    coefficients: tuple[float, float, float],
    dtype: torch.dtype,
    block_m: int | None,
    block_k: int | None,
) -> Tensor:
    a, b, c = coefficients
    X = G.to(dtype)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    lead = X.shape[:-2]
    X = X.reshape(-1, *X.shape[-2:])
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = _sym_gram(X, block_m=block_m, block_k=block_k)
        P = _sym_gram(A, A, alpha=c, beta=b, block_m=block_m, block_k=block_k)
        X = torch.baddbmm(X, P, X, beta=a)
    X = X.reshape(*lead, *X.shape[-2:])
    return X.mT if transposed else X


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    dtype: torch.dtype = torch.bfloat16,
    backend: str = "auto",
    block_m: int | None = None,
    block_k: int | None = None,
) -> Tensor:
    """Quintic Newton-Schulz on ``G`` ([m, n] or a stack [..., m, n]); returns ``dtype``.

    ``backend``:
    - ``"auto"``: the Triton path for CUDA tensors when Triton is importable, else
      :func:`newton_schulz_ref` (CPU tensors always take the reference);
    - ``"triton"``: force the Triton path (on CPU tensors this needs
      ``TRITON_INTERPRET=1``; that is how the tests run it);
    - ``"torch"``: the reference.

    The Triton path computes ``X X^T`` and ``b A + c A A`` with the symmetric Gram
    kernel (upper tiles only, fp32 accumulation, results rounded to ``dtype`` like
    torch's bf16 matmuls) and ``a X + P X`` with ``torch.baddbmm``. It agrees with the
    reference to bf16 rounding, not bit for bit (different summation order).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    _check_ns_args(G, steps)
    if backend == "auto":
        backend = "triton" if G.is_cuda and triton_available() else "torch"
    if backend == "torch":
        return newton_schulz_ref(G, steps, eps, coefficients, dtype)
    return _newton_schulz_triton(G, steps, eps, coefficients, dtype, block_m, block_k)

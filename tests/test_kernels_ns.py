"""workbench.kernels.newton_schulz: the torch reference against torch.optim.Muon's NS,
and the symmetric Triton Gram kernels against torch, under the Triton interpreter.

Triton (3.x) decides interpreted vs compiled when a kernel is decorated, and the
module builds its kernels on first use, cached per mode; so a module fixture that
sets TRITON_INTERPRET=1 (and restores it after, so nothing leaks into other test
modules or the processes they start) is enough, even when another module imported
triton first: the kernel calls only Triton builtins, none of the @jit helpers that
triton decorates at import time (tl.zeros is one). There is no GPU in CI. The
interpreter runs each program in numpy, so shapes stay tiny and BLOCK=16 makes them
span several tiles (including ragged edges: 24 = 16 + 8).
"""

from __future__ import annotations

import os

import pytest
import torch

from workbench.kernels.newton_schulz import (
    NS_COEFFICIENTS,
    gram,
    newton_schulz,
    newton_schulz_ref,
    ns_flops,
    sym_square,
    triton_available,
)

needs_triton = pytest.mark.skipif(
    not triton_available(), reason="triton is not installed (pip install 'workbench-lab[dev]')"
)
BLOCK = 16
SHAPES = [(2, 16, 24), (2, 24, 16), (2, 32, 32)]
# bf16 has an 8-bit mantissa: one rounding is <= 2^-8 relative (torch's own bf16 rtol).
BF16 = dict(rtol=1.6e-2, atol=1e-2)


@pytest.fixture(autouse=True, scope="module")
def _interpreted_one_thread():
    """Triton kernels run in the interpreter on CPU tensors; tiny matrices on a busy
    2-core machine: one intra-op thread is fastest."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = previous


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ----------------------------------------------------------------------------- reference


def test_ref_equals_torch_muon_private_ns() -> None:
    _muon = pytest.importorskip("torch.optim._muon")
    torch_ns = getattr(_muon, "_zeropower_via_newtonschulz", None)
    if torch_ns is None:
        pytest.skip("torch.optim._muon has no _zeropower_via_newtonschulz in this torch")
    for _, m, n in SHAPES:
        g = _randn(m, n, seed=m + n)
        expected = torch_ns(g.clone(), NS_COEFFICIENTS, 5, 1e-7)
        assert torch.equal(newton_schulz_ref(g), expected), (m, n)
        # A stack: each slice is the single-matrix result, up to bmm-vs-mm rounding.
        stack = _randn(3, m, n, seed=1)
        batched = newton_schulz_ref(stack)
        for i in range(3):
            single = torch_ns(stack[i].clone(), NS_COEFFICIENTS, 5, 1e-7)
            torch.testing.assert_close(batched[i], single, **BF16)


@pytest.mark.parametrize("shape", [(16, 24), (32, 32), (24, 16)])
def test_ref_equals_one_torch_muon_step(shape: tuple[int, int]) -> None:
    """Public API only: with momentum 0, no weight decay and W = 0, one
    torch.optim.Muon step leaves W = -lr' NS(G), lr' = lr sqrt(max(1, m / n))."""
    m, n = shape
    g = _randn(m, n, seed=3)
    w = torch.nn.Parameter(torch.zeros(m, n))
    w.grad = g.clone()
    lr = 1.0 / max(1.0, m / n) ** 0.5
    opt = torch.optim.Muon([w], lr=lr, weight_decay=0.0, momentum=0.0, nesterov=False,
                           adjust_lr_fn="original")
    opt.step()
    ours = newton_schulz_ref(g).float()
    if m <= n:  # lr' == 1 exactly: bit-identical
        assert torch.equal(-w.detach(), ours)
    else:
        torch.testing.assert_close(-w.detach(), ours, rtol=1e-6, atol=1e-7)


def test_ref_leaves_input_alone_and_validates() -> None:
    g = _randn(8, 12, dtype=torch.bfloat16)
    before = g.clone()
    newton_schulz_ref(g)
    assert torch.equal(g, before)  # torch's own function divides a bf16 input in place
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz_ref(torch.ones(4))
    with pytest.raises(ValueError, match="steps"):
        newton_schulz_ref(g, steps=100)
    with pytest.raises(ValueError, match="backend"):
        newton_schulz(g, backend="cuda")


def test_auto_backend_on_cpu_is_the_reference() -> None:
    g = _randn(2, 16, 24)
    assert torch.equal(newton_schulz(g), newton_schulz_ref(g))
    assert torch.equal(newton_schulz(g, backend="torch", dtype=torch.float32),
                       newton_schulz_ref(g, dtype=torch.float32))


def test_ns_flops() -> None:
    # per step: X X^T 2 m^2 n + A A 2 m^3 + P X 2 m^2 n, on the wide orientation
    assert ns_flops(16, 24, 1) == 4 * 16 * 16 * 24 + 2 * 16**3
    assert ns_flops(24, 16, 5) == ns_flops(16, 24, 5) == 5 * ns_flops(16, 24, 1)
    assert ns_flops(1024, 1024, 5) == 5 * 6 * 1024**3


# ----------------------------------------------------------------------------- triton


@needs_triton
@pytest.mark.parametrize("shape", SHAPES + [(1, 40, 8)])
def test_gram_kernel(shape: tuple[int, int, int]) -> None:
    """fp32 tight; bf16 to one bf16 rounding of the fp32-accumulated product.
    (1, 40, 8) with BLOCK=16: 3 row tiles, 6 upper pairs, exercising the pid -> (i, j) map."""
    x = _randn(*shape)
    out = gram(x, block_m=BLOCK, block_k=BLOCK)
    torch.testing.assert_close(out, x @ x.mT, rtol=1e-5, atol=1e-5)
    xb = x.bfloat16()
    outb = gram(xb, block_m=BLOCK, block_k=BLOCK)
    assert outb.dtype == torch.bfloat16 and outb.shape == (shape[0], shape[1], shape[1])
    torch.testing.assert_close(outb, (xb.float() @ xb.float().mT).bfloat16(), **BF16)
    # 2-D input: no batch dim in, none out.
    torch.testing.assert_close(gram(x[0], block_m=BLOCK, block_k=BLOCK), x[0] @ x[0].T,
                               rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("m", [16, 24, 32])
def test_sym_square_kernel(m: int) -> None:
    """A A (A symmetric) and the NS polynomial b A + c A A, against torch."""
    x = _randn(2, m, 20, seed=m)
    a = x @ x.mT / 20  # symmetric, entries O(1)
    torch.testing.assert_close(sym_square(a, block_m=BLOCK, block_k=BLOCK), a @ a,
                               rtol=1e-5, atol=1e-5)
    _, b, c = NS_COEFFICIENTS
    poly = sym_square(a, alpha=c, beta=b, block_m=BLOCK, block_k=BLOCK)
    torch.testing.assert_close(poly, torch.baddbmm(a, a, a, beta=b, alpha=c),
                               rtol=1e-5, atol=1e-4)
    ab = a.bfloat16()
    polyb = sym_square(ab, alpha=c, beta=b, block_m=BLOCK, block_k=BLOCK)
    expected = (c * (ab.float() @ ab.float()) + b * ab.float()).bfloat16()
    torch.testing.assert_close(polyb, expected, **BF16)
    with pytest.raises(ValueError, match="square"):
        sym_square(x)


@needs_triton
@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_triton_matches_ref(shape: tuple[int, int, int]) -> None:
    g = _randn(*shape, seed=7)
    out = newton_schulz(g, backend="triton", block_m=BLOCK, block_k=BLOCK)
    ref = newton_schulz_ref(g)
    assert out.dtype == torch.bfloat16 and out.shape == g.shape
    # Five bf16 steps with different summation orders: a few bf16 ulps of O(0.3) entries.
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.0, atol=3e-2)
    if shape != SHAPES[0]:
        return  # the interpreter is slow: the variants below on the first shape only
    out32 = newton_schulz(g, backend="triton", dtype=torch.float32, block_m=BLOCK,
                          block_k=BLOCK)
    torch.testing.assert_close(out32, newton_schulz_ref(g, dtype=torch.float32),
                               rtol=1e-4, atol=1e-4)
    # Leading dims beyond one batch dim fold and unfold.
    g4 = g.reshape(1, *g.shape)
    out4 = newton_schulz(g4, steps=1, backend="triton", block_m=BLOCK, block_k=BLOCK)
    assert out4.shape == g4.shape

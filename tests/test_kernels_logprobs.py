"""workbench.kernels.logprobs: the fused log-prob/entropy against its materialized twin.

- The torch chunked path is checked against the reference for values and gradients
  (hidden, weight, bias), tightly in fp32, at odd sizes and several chunk sizes.
- The Triton forward runs under TRITON_INTERPRET=1, in a fresh Python process: the
  variable has to be set before triton is first imported.
- The memory claim is checked by watching every aten op's output in forward and
  backward, through a TorchDispatchMode. No tensor of N*V elements may appear.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from workbench.kernels.logprobs import (
    IGNORE_INDEX,
    default_chunk_tokens,
    token_logprobs,
    token_logprobs_ref,
)

HAS_TRITON = importlib.util.find_spec("triton") is not None
FP32 = {"rtol": 1e-5, "atol": 1e-5}


def _inputs(n: int = 37, d: int = 16, v: int = 101, seed: int = 0, bias: bool = False,
            scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, d, generator=g) * scale).requires_grad_()
    w = (torch.randn(v, d, generator=g) / math.sqrt(d) * 3).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    b = torch.randn(v, generator=g).requires_grad_() if bias else None
    # random cotangents, so both outputs' gradients are checked, not just their sum
    c_lp, c_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    return h, w, t, b, c_lp, c_ent


def _grads(out: tuple[torch.Tensor, torch.Tensor], c_lp: torch.Tensor, c_ent: torch.Tensor,
           params: list[torch.Tensor]) -> list[torch.Tensor]:
    logp, ent = out
    return list(torch.autograd.grad((logp * c_lp).sum() + (ent * c_ent).sum(), params))


def test_reference_is_log_softmax_and_entropy() -> None:
    h, w, t, b, _, _ = _inputs(bias=True)
    logp, ent = token_logprobs_ref(h, w, t, bias=b, temperature=0.7)
    z = (h @ w.T + b) / 0.7
    dist = torch.distributions.Categorical(logits=z)
    torch.testing.assert_close(logp, dist.log_prob(t), **FP32)
    torch.testing.assert_close(ent, dist.entropy(), **FP32)


@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
def test_torch_chunked_matches_reference(chunk: int, temperature: float, bias: bool) -> None:
    h, w, t, b, c_lp, c_ent = _inputs(bias=bias)
    params = [h, w] + ([b] if b is not None else [])
    ref = token_logprobs_ref(h, w, t, bias=b, temperature=temperature)
    got = token_logprobs(h, w, t, bias=b, temperature=temperature, chunk_tokens=chunk,
                         backend="torch")
    torch.testing.assert_close(got[0], ref[0], **FP32)
    torch.testing.assert_close(got[1], ref[1], **FP32)
    for a, r in zip(_grads(got, c_lp, c_ent, params), _grads(ref, c_lp, c_ent, params),
                    strict=True):
        torch.testing.assert_close(a, r, **FP32)


def test_one_output_alone_and_ignored_targets() -> None:
    """The RL trainer backpropagates logp only (entropy is a statistic): that skips the
    entropy term. Ignored targets get logp 0 and contribute no gradient."""
    h, w, t, _, c_lp, c_ent = _inputs()
    t = t.clone()
    t[::5] = IGNORE_INDEX
    ref = token_logprobs_ref(h, w, t)
    got = token_logprobs(h, w, t, chunk_tokens=10)
    assert bool((got[0][::5] == 0).all())
    torch.testing.assert_close(got[0], ref[0], **FP32)
    torch.testing.assert_close(got[1], ref[1], **FP32)
    g_got = torch.autograd.grad((got[0] * c_lp).sum(), [h, w])
    g_ref = torch.autograd.grad((ref[0] * c_lp).sum(), [h, w])
    for a, r in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, r, **FP32)
    assert bool((g_got[0][::5] == 0).all())  # an ignored row's hidden gets nothing
    ref = token_logprobs_ref(h, w, t)
    got = token_logprobs(h, w, t, chunk_tokens=10)
    g_got = torch.autograd.grad((got[1] * c_ent).sum(), [h, w])
    g_ref = torch.autograd.grad((ref[1] * c_ent).sum(), [h, w])
    for a, r in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, r, **FP32)


def test_leading_dims_large_logits_and_masked_vocab() -> None:
    """[B, T, d] input; logits near 100 (the entropy must not cancel); a -inf bias
    entry (a forbidden token) leaves finite values and gradients."""
    h, w, t, _, _, _ = _inputs(n=24, scale=30.0)
    b = torch.zeros(101)
    b[7] = float("-inf")
    t = torch.where(t == 7, 8, t)
    # the reference's own gradient is nan at -inf (0 * -inf in where's backward), so
    # it gets a finite bias that underflows p to exactly 0 instead
    ref = token_logprobs_ref(h, w, t, bias=torch.where(b.isinf(), -1e4, b))
    got = token_logprobs(h.view(4, 6, 16), w, t.view(4, 6), bias=b, chunk_tokens=5)
    assert got[0].shape == (4, 6)
    torch.testing.assert_close(got[0].view(-1), ref[0], **FP32)
    torch.testing.assert_close(got[1].view(-1), ref[1], **FP32)
    (gh,) = torch.autograd.grad(got[0].sum() + got[1].sum(), [h])
    (rh,) = torch.autograd.grad(ref[0].sum() + ref[1].sum(), [h])
    assert bool(torch.isfinite(gh).all())
    torch.testing.assert_close(gh, rh, rtol=1e-4, atol=1e-4)


def test_argument_errors() -> None:
    h, w, t, _, _, _ = _inputs()
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(h, w, t[:-1])
    with pytest.raises(ValueError, match="weight"):
        token_logprobs(h, w.T, t)
    with pytest.raises(ValueError, match="backend"):
        token_logprobs(h, w, t, backend="cuda")
    with pytest.raises(ValueError, match="blocks"):
        token_logprobs(h, w, t, backend="torch", blocks=(16, 24, 16))
    assert default_chunk_tokens(8192) == 2048 and default_chunk_tokens(1 << 30) == 1


# ----------------------------------------------------------------------------- memory


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op produces (views included), with its op.

    Every allocation of activations goes through an aten op, so this sees the forward,
    the custom backward and the autograd engine's own accumulations. That makes it a
    direct check that no [N, V] buffer is ever created, where CPU allocator statistics
    are unavailable and tracemalloc cannot see torch's allocations."""

    def __init__(self) -> None:
        super().__init__()
        self.largest, self.op, self.ops = 0, "", 0
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        self.names.add(str(func))
        for x in out if isinstance(out, tuple | list) else (out,):
            if isinstance(x, torch.Tensor) and x.numel() > self.largest:
                self.largest, self.op = x.numel(), str(func)
        return out


def test_chunked_forward_backward_never_builds_n_by_v() -> None:
    n, v, d, chunk = 4096, 8192, 64, 256
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(v, d, generator=g) / 8).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    with _LargestOutput() as seen:
        logp, ent = token_logprobs(h, w, t, chunk_tokens=chunk, backend="torch")
        (logp.sum() + 0.01 * ent.sum()).backward()
    assert seen.ops > 2 * n // chunk  # the mode saw the chunk loops
    assert any("addmm_" in name for name in seen.names)  # ... the backward's included
    assert seen.largest == chunk * v, (seen.largest, seen.op)  # one chunk's logits, no more
    assert seen.largest * 16 <= n * v
    assert h.grad is not None and w.grad is not None and bool(torch.isfinite(w.grad).all())

    # the detector is real: the materialized reference trips it at once
    small = 64
    with _LargestOutput() as naive:
        token_logprobs_ref(h[:small], w, t[:small])
    assert naive.largest == small * v


# ----------------------------------------------------------------------------- triton


# Triton's interpreter must be on before triton is first imported (triton.language's
# own helpers, tl.sum and the like, are @jit functions decided at import), and this
# process may have imported triton already. So the Triton checks run in a fresh one.
_TRITON_CHECK = """
import torch
from workbench.kernels.logprobs import IGNORE_INDEX, token_logprobs, token_logprobs_ref

for n, d, v, bias, temp in [(37, 16, 101, False, 1.0),
                            (21, 24, 70, True, 0.7)]:  # 2 BLOCK_D slices; bias; temperature
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(v, d, generator=g) / d ** 0.5 * 3).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[3] = IGNORE_INDEX
    b = torch.randn(v, generator=g).requires_grad_() if bias else None
    c_lp, c_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    params = [h, w] + ([b] if b is not None else [])
    ref = token_logprobs_ref(h, w, t, bias=b, temperature=temp)
    got = token_logprobs(h, w, t, bias=b, temperature=temp, backend="triton")
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
    # the Triton path's backward is the chunked torch recompute from the kernel's lse
    g_got = torch.autograd.grad((got[0] * c_lp).sum() + (got[1] * c_ent).sum(), params)
    g_ref = torch.autograd.grad((ref[0] * c_lp).sum() + (ref[1] * c_ent).sum(), params)
    for a, r in zip(g_got, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
print("TRITON-OK")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_forward_matches_reference_under_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "TRITON-OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_on_cpu_without_the_interpreter_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    h, w, t, _, _, _ = _inputs()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        token_logprobs(h, w, t, backend="triton")

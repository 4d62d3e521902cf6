"""The Triton causal flash attention (workbench.kernels.attention) against its torch twin.

The kernels run under Triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU), so
shapes are tiny: B <= 2, H = 2, T in {16, 33} (33 leaves a ragged last tile), D = 16 and
16 x 16 tiles, which still exercise several tiles, the causal block skipping and the
masked tail. triton.jit reads TRITON_INTERPRET when it wraps a kernel; the module jits
lazily, once per mode, so setting the variable per test (before the first call) works.

Run by tests/test_kernels_attention.py in a fresh process (see there why).
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from workbench.kernels.attention import attention, attention_ref
from workbench.models.config import ATTN_BACKENDS, GPTConfig
from workbench.models.gpt import GPT, chunked_max_logits

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed (pip install triton, or the [gpu] extra)",
)
BLOCK = {"block_m": 16, "block_n": 16}


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def bf16_dot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's interpreter has no bf16 tl.dot: it stores bf16 as uint16 and multiplies
    the bit patterns (triton-lang/triton#11584; the fix, PR #11585, was declined). Widen
    bf16 operands to fp32 first, which is what a GPU's bf16 MMA with fp32 accumulation
    computes. The kernels themselves are unchanged."""
    import triton.language as tl
    from triton.runtime import interpreter

    create_dot = interpreter.InterpreterBuilder.create_dot

    def widened(self, a, b, *args, **kwargs):
        a, b = (self.cast_impl(x, tl.float32) if x.dtype == tl.bfloat16 else x for x in (a, b))
        return create_dot(self, a, b, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", widened)


def _qkv(B: int, H: int, T: int, D: int, dtype: torch.dtype = torch.float32,
         Hkv: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g) * 1.5  # logits of a few units: a real softmax
    k = torch.randn(B, Hkv or H, T, D, generator=g) * 1.5
    v = torch.randn(B, Hkv or H, T, D, generator=g)
    return tuple(x.to(dtype).requires_grad_() for x in (q, k, v))


def _grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...],
           seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Gradients of a random linear function of out (every output element matters). The
    weights are bf16-representable, so a bf16 run and its fp32 reference use the same."""
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).bfloat16()
    g = g.to(out.dtype)
    return torch.autograd.grad((out * g).sum(), inputs)


# ----------------------------------------------------------------------------- reference


def test_reference_matches_sdpa_and_gpt_max_logit() -> None:
    """attention_ref's max logit is GPT's: signed, pre-softmax, scaled by 1/sqrt(D)."""
    q, k, v = _qkv(2, 2, 33, 16)
    out, max_logit = attention_ref(q, k, v)
    assert max_logit.shape == (2, 2) and max_logit.dtype == torch.float32
    assert not max_logit.requires_grad
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    torch.testing.assert_close(max_logit.amax(dim=0), chunked_max_logits(q, k))
    s = (q @ k.transpose(-2, -1)) / math.sqrt(16)
    s = s.masked_fill(~torch.ones(33, 33, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(max_logit, s.amax(dim=(-2, -1)))


def test_auto_on_cpu_is_the_reference() -> None:
    q, k, v = _qkv(1, 2, 16, 16)
    out, max_logit = attention(q, k, v)
    ref_out, ref_max = attention_ref(q, k, v)
    assert torch.equal(out, ref_out) and torch.equal(max_logit, ref_max)


# ----------------------------------------------------------------------------- Triton


@needs_triton
@pytest.mark.parametrize("T", [16, 33])
def test_forward_fp32_matches_reference(T: int) -> None:
    q, k, v = _qkv(2, 2, T, 16)
    out, max_logit = attention(q, k, v, backend="triton", **BLOCK)
    ref_out, ref_max = attention_ref(q, k, v)
    assert out.dtype == torch.float32 and max_logit.shape == (2, 2)
    assert not max_logit.requires_grad
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(max_logit, ref_max, atol=1e-5, rtol=1e-5)


@needs_triton
def test_forward_row_statistics() -> None:
    """The saved per-row logsumexp and row max (what backward and QK-Clip read)."""
    from workbench.kernels.attention import _flash_forward

    q, k, v = (x.detach() for x in _qkv(1, 2, 33, 16))
    _, lse, rowmax = _flash_forward(q, k, v, 0.25, 16, 16)
    s = (q @ k.transpose(-2, -1)) * 0.25
    s = s.masked_fill(~torch.ones(33, 33, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(rowmax, s.amax(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, s.logsumexp(dim=-1), atol=1e-5, rtol=1e-5)


@needs_triton
def test_backward_fp32_matches_reference() -> None:
    q, k, v = _qkv(2, 2, 33, 16)
    out, _ = attention(q, k, v, backend="triton", **BLOCK)
    ref_out, _ = attention_ref(q, k, v)
    grads = zip(_grads(out, (q, k, v)), _grads(ref_out, (q, k, v)), "qkv", strict=True)
    for got, want, name in grads:
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4,
                                   msg=lambda m, n=name: f"d{n}: {m}")


@needs_triton
@pytest.mark.usefixtures("bf16_dot")
def test_bf16_forward_and_backward() -> None:
    """bf16 in and out, fp32 inside: compared with the fp32 reference on the same values."""
    q, k, v = _qkv(1, 2, 33, 16, dtype=torch.bfloat16)
    out, max_logit = attention(q, k, v, backend="triton", **BLOCK)
    assert out.dtype == torch.bfloat16 and max_logit.dtype == torch.float32
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref_out, ref_max = attention_ref(q32, k32, v32)
    torch.testing.assert_close(out.float(), ref_out, atol=2e-2, rtol=2e-2)
    # Logits come from fp32 dot products of the exact bf16 values: only summation order.
    torch.testing.assert_close(max_logit, ref_max, atol=1e-4, rtol=1e-4)
    for got, want in zip(_grads(out, (q, k, v)), _grads(ref_out, (q32, k32, v32)), strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)


@needs_triton
def test_causal_future_keys_do_not_leak() -> None:
    """Rows before t0 ignore keys >= t0, forward and backward."""
    t0 = 20  # inside the second 16-row tile: the diagonal tile's mask matters
    q, k, v = _qkv(1, 2, 33, 16)
    out, _ = attention(q, k, v, backend="triton", **BLOCK)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, t0:] = torch.randn_like(k2[:, :, t0:]) * 10
    v2[:, :, t0:] = torch.randn_like(v2[:, :, t0:]) * 10
    out2, _ = attention(q, k2, v2, backend="triton", **BLOCK)
    torch.testing.assert_close(out2[:, :, :t0], out[:, :, :t0], atol=0, rtol=0)
    assert not torch.allclose(out2[:, :, t0:], out[:, :, t0:])
    _, dk, dv = torch.autograd.grad(out[:, :, :t0].sum(), (q, k, v))
    assert torch.all(dk[:, :, t0:] == 0) and torch.all(dv[:, :, t0:] == 0)


@needs_triton
def test_strided_inputs_and_gqa() -> None:
    """GPT's layout: q, k, v are [B, T, H, D] views transposed to [B, H, T, D]; one kv head."""
    g = torch.Generator().manual_seed(3)
    q = (torch.randn(1, 33, 2, 16, generator=g)).requires_grad_()
    kv = (torch.randn(1, 33, 2, 16, generator=g)).requires_grad_()  # [.., 0] = k, [.., 1] = v
    qt, k, v = q.transpose(1, 2), kv[:, :, :1].transpose(1, 2), kv[:, :, 1:].transpose(1, 2)
    out, max_logit = attention(qt, k, v, backend="triton", **BLOCK)
    ref_out, ref_max = attention_ref(qt, k.expand(-1, 2, -1, -1), v.expand(-1, 2, -1, -1))
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(max_logit, ref_max, atol=1e-5, rtol=1e-5)
    for got, want in zip(_grads(out, (q, kv)), _grads(ref_out, (q, kv)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize(("D", "dtype"), [(32, torch.float16), (64, torch.float32),
                                          (128, torch.bfloat16)])
def test_other_head_dims(D: int, dtype: torch.dtype, bf16_dot: None) -> None:
    q, k, v = _qkv(1, 1, 40, D, dtype=dtype)
    out, max_logit = attention(q, k, v, backend="triton", block_m=32, block_n=16)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref_out, ref_max = attention_ref(q32, k32, v32)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(max_logit, ref_max, atol=1e-4, rtol=1e-4)
    for got, want in zip(_grads(out, (q, k, v)), _grads(ref_out, (q32, k32, v32)), strict=True):
        torch.testing.assert_close(got.float(), want, atol=3 * tol, rtol=3 * tol)


# ----------------------------------------------------------------------------- refusals


@needs_triton
def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    q, k, v = _qkv(1, 1, 16, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        attention(q, k, v, backend="triton")


@needs_triton
def test_unsupported_shapes_are_refused() -> None:
    q, k, v = _qkv(1, 1, 16, 24)
    with pytest.raises(ValueError, match="head_dim 24"):
        attention(q, k, v, backend="triton")
    q, k, v = _qkv(1, 1, 16, 16)
    with pytest.raises(ValueError, match="block_m"):
        attention(q, k, v, backend="triton", block_m=8)
    with pytest.raises(ValueError, match="share a dtype"):
        attention(q, k.half(), v, backend="triton")


def test_gpt_triton_backend_is_cuda_only() -> None:
    assert "triton" in ATTN_BACKENDS
    model = GPT(GPTConfig(vocab_size=32, seq_len=16, n_layer=1, n_head=2, d_model=32,
                          attn_backend="triton"))
    with pytest.raises(RuntimeError, match='use "auto" or "sdpa"'):
        model(torch.zeros(1, 8, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPT triton backend needs CUDA")
@needs_triton
@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_gpt_triton_cuda_matches_naive(monkeypatch: pytest.MonkeyPatch,
                                       n_kv_head: int | None) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")  # compiled kernels on the GPU
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=37, seq_len=256, n_layer=2, n_head=4, d_model=64,
                          n_kv_head=n_kv_head)).cuda()
    idx = torch.randint(0, 37, (3, 200), device="cuda")  # 200: a ragged last tile
    targets = torch.randint(0, 37, (3, 200), device="cuda")
    results = {}
    for backend in ("naive", "triton"):
        for block in model.blocks:
            block.attn.backend = backend
        model.zero_grad()
        out = model(idx, targets, track_max_logits=True)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[backend] = (out.logits.detach(), out.max_logits, grads)
    (la, ma, ga), (lb, mb, gb) = results["naive"], results["triton"]
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ma, mb, atol=1e-4, rtol=1e-4)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-4, rtol=1e-3, msg=name)


@needs_triton
@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama3"])
def test_kernel_on_a_checkpoint_family_layer(family: str) -> None:
    """The q/k/v a Llama-family layer feeds its attention (biases, QK-norm, llama3 RoPE,
    GQA, head_dim apart from d_model / n_head) go through the kernel: output, gradients
    and max logits equal the reference. What the GPT's "triton" backend runs on CUDA."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
    cfg = GPTConfig(vocab_size=64, seq_len=33, n_layer=1, n_head=4, n_kv_head=2, d_model=48,
                    attn_head_dim=16, qkv_bias=family == "qwen2", qk_norm=family == "qwen3",
                    rope_scaling=scaling if family == "llama3" else None)
    torch.manual_seed(0)
    attn = GPT(cfg).blocks[0].attn
    x = torch.randn(2, 33, 48) * 4
    q, k, v = attn.project(x, attn.cos[:33], attn.sin[:33])
    ins = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    refs = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out, mx = attention(*ins, backend="triton", **BLOCK)
    ref, ref_mx = attention_ref(refs[0], refs[1].repeat_interleave(2, dim=1),
                                refs[2].repeat_interleave(2, dim=1))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mx, ref_mx, atol=1e-4, rtol=1e-4)
    out.square().sum().backward()
    ref.square().sum().backward()
    for a, b in zip(ins, refs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-3, rtol=1e-3)

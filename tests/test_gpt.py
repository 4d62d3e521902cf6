"""The GPT model: config checks, shapes, backends agreeing, and the per-head max logit."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from workbench.models import GPT, GPTConfig, GPTOutput
from workbench.models.gpt import apply_rope, reduce_max_scores

TINY = dict(vocab_size=37, seq_len=32, n_layer=2, n_head=4, d_model=32)


def make(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def batch(cfg: GPTConfig, B: int = 3, T: int | None = None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, T or cfg.seq_len), generator=g)


def set_backend(model: GPT, backend: str) -> GPT:
    for block in model.blocks:
        block.attn.backend = backend
    return model


def grads(model: GPT) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def reference_max_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Materialized reference from the module's weights: [n_layer, n_head]."""
    out = []
    with torch.no_grad():
        x = model.embed(idx)
        B, T = idx.shape
        for block in model.blocks:
            attn = block.attn
            h = block.norm1(x)
            q = attn.q_proj(h).view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(B, T, attn.n_kv_head, attn.head_dim).transpose(1, 2)
            q = apply_rope(q, attn.cos[:T], attn.sin[:T])
            k = apply_rope(k, attn.cos[:T], attn.sin[:T])
            per_head = []
            for hq in range(attn.n_head):
                kv = hq // (attn.n_head // attn.n_kv_head)
                s = q[:, hq] @ k[:, kv].transpose(-1, -2) / math.sqrt(attn.head_dim)
                visible = torch.ones(T, T, dtype=torch.bool).tril()
                per_head.append(s[:, visible].max())
            out.append(torch.stack(per_head))
            x, _ = block(x)
    return torch.stack(out)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(n_head=6, d_model=256), ["n_head (6)", "d_model (256)"]),
        (dict(n_head=4, n_kv_head=3), ["n_kv_head (3)", "n_head (4)"]),
        (dict(n_head=4, d_model=12), ["head_dim", "even"]),
        (dict(attn_backend="flash"), ["attn_backend", "sdpa"]),
        (dict(vocab_size=0), ["vocab_size"]),
        (dict(n_layer=-1), ["n_layer"]),
        (dict(n_kv_head=0), ["n_kv_head"]),
        (dict(ffn_mult=0.0), ["ffn_mult"]),
        (dict(norm_eps=-1e-6), ["norm_eps"]),
    ],
)
def test_config_rejects_with_field_and_fix(overrides, words):
    with pytest.raises(ValueError) as err:
        GPTConfig(**overrides)
    for w in words:
        assert w in str(err.value)


def test_config_defaults_and_derived():
    cfg = GPTConfig()
    assert (cfg.head_dim, cfg.kv_heads, cfg.ffn_hidden) == (64, 4, 704)
    assert GPTConfig(n_kv_head=2).kv_heads == 2
    assert GPTConfig(d_model=192, n_head=4).ffn_hidden == 512  # 8/3 * 192, no float slop


# ----------------------------------------------------------------------------- model basics


def test_shapes_and_loss():
    model = make()
    idx = batch(model.config, B=2, T=10)
    targets = batch(model.config, B=2, T=10, seed=2)
    out = model(idx, targets)
    assert isinstance(out, GPTOutput)
    assert out.logits.shape == (2, 10, model.config.vocab_size)
    assert out.max_logits is None
    expected = F.cross_entropy(out.logits.view(-1, out.logits.size(-1)), targets.view(-1))
    torch.testing.assert_close(out.loss, expected)
    assert model(idx).loss is None
    with pytest.raises(ValueError, match="seq_len"):
        model(batch(model.config, B=1, T=model.config.seq_len + 1))


def test_layout_and_counts():
    model = make(n_kv_head=2)
    attn = model.blocks[0].attn
    assert (attn.n_head, attn.n_kv_head, attn.head_dim) == (4, 2, 8)
    assert attn.q_proj.weight.shape == (32, 32)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (16, 32)
    assert attn.o_proj.weight.shape == (32, 32)
    assert "blocks.0.attn.cos" not in model.state_dict()  # RoPE buffers are not persistent
    assert model.flops_per_token() == 6 * model.num_params() + 12 * 2 * 32 * 32


def test_tied_and_untied_embeddings():
    tied = make(tie_embeddings=True)
    assert tied.lm_head.weight.data_ptr() == tied.embed.weight.data_ptr()
    untied = make(tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.embed.weight.data_ptr()
    v, d = TINY["vocab_size"], TINY["d_model"]
    assert untied.num_params() - tied.num_params() == v * d
    assert untied.flops_per_token() == tied.flops_per_token()  # the lookup is no matmul


def test_causality():
    model = make()
    idx = batch(model.config, B=2, T=16)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


# ----------------------------------------------------------------------------- backends


@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
def test_sdpa_matches_naive_logits_and_grads(n_kv_head):
    model = make(n_kv_head=n_kv_head)
    idx, targets = batch(model.config), batch(model.config, seed=2)
    results = {}
    for backend in ("naive", "sdpa"):
        set_backend(model, backend)
        model.zero_grad()
        out = model(idx, targets)
        out.loss.backward()
        results[backend] = (out.logits.detach(), grads(model))
    (la, ga), (lb, gb) = results["naive"], results["sdpa"]
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
def test_max_logits_match_reference(backend, n_kv_head):
    # T=40 with a chunk of 128 is one chunk; T=300 below checks several chunks.
    model = set_backend(make(n_kv_head=n_kv_head, seq_len=40), backend)
    idx = batch(model.config, B=3)
    got = model(idx, track_max_logits=True).max_logits
    assert got.shape == (2, 4) and got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got, reference_max_logits(model, idx), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.attention_max_logits(idx), got)


def test_max_logits_over_several_chunks():
    model = set_backend(make(n_kv_head=2, seq_len=300, n_layer=1, d_model=16), "sdpa")
    idx = batch(model.config, B=2)
    got = model.attention_max_logits(idx)
    torch.testing.assert_close(got, reference_max_logits(model, idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
def test_tracking_changes_nothing(backend):
    model = set_backend(make(n_kv_head=2), backend)
    idx, targets = batch(model.config), batch(model.config, seed=2)
    runs = []
    for track in (False, True):
        model.zero_grad()
        out = model(idx, targets, track_max_logits=track)
        out.loss.backward()
        runs.append((out.logits.detach(), grads(model)))
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=0, rtol=0)
    for name in runs[0][1]:
        torch.testing.assert_close(runs[0][1][name], runs[1][1][name], atol=0, rtol=0)


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_flex_forward_on_cpu_matches_naive(n_kv_head):
    model = make(n_kv_head=n_kv_head)
    idx = batch(model.config, B=2)
    with torch.no_grad():
        naive = set_backend(model, "naive")(idx, track_max_logits=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flex_attention called without torch.compile"
            flex = set_backend(model, "flex")(idx, track_max_logits=True)
    torch.testing.assert_close(flex.logits, naive.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex.max_logits, naive.max_logits, atol=1e-5, rtol=1e-5)


def test_flex_aux_max_scores_reduction():
    """Our reduction of flex's aux.max_scores [B, H, T] against materialized scores."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    torch.manual_seed(0)
    B, H, T, D = 2, 4, 16, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    expected = scores.amax(dim=(0, 2, 3))
    # the reduction itself, fed the per-row maxima flex would return
    torch.testing.assert_close(reduce_max_scores(scores.amax(dim=-1)), expected)
    mask = create_block_mask(lambda b, h, i, j: i >= j, None, None, T, T, device="cpu")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            request = AuxRequest(max_scores=True)
            _, aux = flex_attention(q, k, v, block_mask=mask, return_aux=request)
    except NotImplementedError as e:
        pytest.skip(f"this torch build has no flex max_scores on CPU ({e}); CUDA test covers it")
    torch.testing.assert_close(reduce_max_scores(aux.max_scores), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex max_scores path needs CUDA")
@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_flex_cuda_matches_naive(n_kv_head):
    model = make(n_kv_head=n_kv_head, seq_len=256, d_model=64).cuda()
    idx, targets = batch(model.config).cuda(), batch(model.config, seed=2).cuda()
    results = {}
    for backend in ("naive", "flex"):
        set_backend(model, backend)
        model.zero_grad()
        out = model(idx, targets, track_max_logits=True)
        out.loss.backward()
        results[backend] = (out.logits.detach(), out.max_logits, grads(model))
    (la, ma, ga), (lb, mb, gb) = results["naive"], results["flex"]
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ma, mb, atol=1e-4, rtol=1e-4)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-4, rtol=1e-3, msg=name)

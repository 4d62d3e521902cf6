"""The recurrent-depth model against Huginn-0125's published architecture, written out
here independently from its modeling file's semantics (fused Wqkv, q/k bias before an
interleaved-pair RoPE, sandwich norms, [state, input] adapter, norm_f twice), on a tiny
random checkpoint in Huginn's layout that the test writes itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from workbench.models.config import RecurrentDepthConfig
from workbench.models.recurrent_depth import (
    RecurrentDepthGPT,
    config_from_huginn,
    load_huginn,
    sample_recurrence,
)

HUGINN = {"model_type": "huginn_raven", "n_embd": 64, "n_heads": 4, "n_layers": 4,
          "n_layers_in_prelude": 1, "n_layers_in_recurrent_block": 2, "n_layers_in_coda": 1,
          "mean_recurrence": 3, "mean_backprop_depth": 2, "vocab_size": 96,
          "padded_vocab_size": 96, "block_size": 32, "intermediate_size": 160,
          "rope_base": 50000, "norm_eps": 1e-6, "qk_bias": True, "bias": False,
          "tie_embeddings": True, "injection_type": "linear", "state_init": "like-init"}


def huginn_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, H, inter, V = cfg["n_embd"], cfg["n_heads"], cfg["intermediate_size"], cfg["vocab_size"]

    def rnd(*shape: int, std: float = 0.08) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    st = {"transformer.wte.weight": rnd(V, h, std=0.05),
          "transformer.adapter.weight": rnd(h, 2 * h),
          "transformer.ln_f.weight": 1 + rnd(h, std=0.1),
          "transformer.freqs_cis": torch.zeros(1, cfg["block_size"], 1, h // H // 2, 2)}
    for part, n in (("prelude", cfg["n_layers_in_prelude"]),
                    ("core_block", cfg["n_layers_in_recurrent_block"]),
                    ("coda", cfg["n_layers_in_coda"])):
        for i in range(n):
            pre = f"transformer.{part}.{i}."
            for j in range(1, 5):
                st[pre + f"norm_{j}.weight"] = 1 + rnd(h, std=0.1)
            st[pre + "attn.Wqkv.weight"] = rnd(3 * h, h)
            st[pre + "attn.qk_bias"] = rnd(2, 1, H, h // H, std=0.3)
            st[pre + "attn.proj.weight"] = rnd(h, h)
            st[pre + "mlp.fc.weight"] = rnd(2 * inter, h)
            st[pre + "mlp.proj.weight"] = rnd(h, inter)
    return st


# ----------------------------------------------------------------------------- reference


def ref_rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def ref_rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Interleaved pairs (x[2i], x[2i+1]) rotated like a complex multiply; x [B, T, H, d]."""
    T, d = x.shape[1], x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out0 = x0 * ang.cos() - x1 * ang.sin()
    out1 = x1 * ang.cos() + x0 * ang.sin()
    return torch.stack([out0, out1], dim=-1).flatten(-2)


def ref_block(st: dict, pre: str, x: torch.Tensor, cfg: dict) -> torch.Tensor:
    B, T, h = x.shape
    H, eps = cfg["n_heads"], cfg["norm_eps"]
    d = h // H
    y = ref_rms(x, st[pre + "norm_1.weight"], eps)
    q, k, v = (y @ st[pre + "attn.Wqkv.weight"].T).view(B, T, 3, H, d).unbind(2)
    q = q + st[pre + "attn.qk_bias"][0]
    k = k + st[pre + "attn.qk_bias"][1]
    q, k = ref_rope(q, cfg["rope_base"]), ref_rope(k, cfg["rope_base"])
    a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True).transpose(1, 2).reshape(B, T, h)
    x = ref_rms(x + a @ st[pre + "attn.proj.weight"].T, st[pre + "norm_2.weight"], eps)
    y = ref_rms(x, st[pre + "norm_3.weight"], eps)
    g_, u = (y @ st[pre + "mlp.fc.weight"].T).chunk(2, dim=-1)
    m = (F.silu(g_) * u) @ st[pre + "mlp.proj.weight"].T
    return ref_rms(x + m, st[pre + "norm_4.weight"], eps)


def ref_forward(st: dict, cfg: dict, ids: torch.Tensor, s0: torch.Tensor, steps: int,
                ) -> torch.Tensor:
    x = st["transformer.wte.weight"][ids] * math.sqrt(cfg["n_embd"])
    for i in range(cfg["n_layers_in_prelude"]):
        x = ref_block(st, f"transformer.prelude.{i}.", x, cfg)
    e, s = x, s0
    for _ in range(steps):
        x = torch.cat([s, e], dim=-1) @ st["transformer.adapter.weight"].T
        for i in range(cfg["n_layers_in_recurrent_block"]):
            x = ref_block(st, f"transformer.core_block.{i}.", x, cfg)
        s = x
    x = ref_rms(s, st["transformer.ln_f.weight"], cfg["norm_eps"])
    for i in range(cfg["n_layers_in_coda"]):
        x = ref_block(st, f"transformer.coda.{i}.", x, cfg)
    x = ref_rms(x, st["transformer.ln_f.weight"], cfg["norm_eps"])
    return x @ st["transformer.wte.weight"].T  # tied lm_head


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_huginn_checkpoint_gives_the_same_logits(tmp_path: Path, steps: int) -> None:
    st = huginn_state(HUGINN)
    save_file(st, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(HUGINN))
    model = load_huginn(tmp_path)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, HUGINN["vocab_size"], (2, 20), generator=g)
    s0 = model.initial_state(torch.empty(2, 20, HUGINN["n_embd"]),
                             torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(ids, steps=steps, state=s0).logits
        want = ref_forward(st, HUGINN, ids, s0, steps)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert got.std() > 0.1  # not a degenerate comparison


def test_config_from_huginn_maps_fields_and_checks_the_type() -> None:
    c = config_from_huginn(HUGINN)
    assert (c.d_model, c.n_head, c.n_prelude, c.n_core, c.n_coda) == (64, 4, 1, 2, 1)
    assert (c.mean_recurrence, c.backprop_depth, c.ffn_hidden, c.seq_len) == (3, 2, 160, 32)
    with pytest.raises(ValueError, match="huginn_raven"):
        config_from_huginn({**HUGINN, "model_type": "llama"})


def test_initial_state_matches_huginn_like_init() -> None:
    """std sqrt(2/(5h)), truncated at 3 std, times sqrt(h): about 0.62 whatever h."""
    model = RecurrentDepthGPT(RecurrentDepthConfig(d_model=256, n_head=4))
    s = model.initial_state(torch.empty(64, 64, 256), torch.Generator().manual_seed(0))
    assert s.abs().max() <= 3 * math.sqrt(2 / 5) + 1e-6
    assert 0.60 < float(s.std()) < 0.64


def test_sample_recurrence_is_lognormal_poisson_plus_one() -> None:
    g = torch.Generator().manual_seed(0)
    draws = [sample_recurrence(8, 3, g) for _ in range(4000)]
    totals = torch.tensor([a + b for a, b in draws], dtype=torch.float64)
    assert abs(float(totals.mean()) - 9.0) < 0.25  # E[Poisson(rate)] + 1, E[rate] = 8
    assert float(totals.var()) > 9.0  # over-dispersed vs a plain Poisson
    assert all(b == min(3, a + b) and a == max(a + b - 3, 0) for a, b in draws)


def test_flops_per_token_is_the_mean_over_the_training_draws() -> None:
    """The recurrence draw is Poisson(rate) + 1 with E[rate] = mean_recurrence: training
    runs mean + 1 iterations on average, not mean. flops_per_token is the average of the
    per-draw FLOPs (6 per weight outside the core, 2 per core weight per iteration plus 4
    more per gradient iteration, 12 * layers * d * T attention)."""
    c = RecurrentDepthConfig(d_model=32, n_head=2, n_prelude=1, n_core=4, n_coda=1,
                             mean_recurrence=4, backprop_depth=2, ffn_hidden=64, seq_len=16,
                             vocab_size=64)
    model = RecurrentDepthGPT(c)
    core = sum(p.numel() for p in model.core.parameters()) + model.adapter.weight.numel()
    rest = model.lm_head.weight.numel() + sum(
        p.numel() for blocks in (model.prelude, model.coda) for p in blocks.parameters())

    def flops(no_grad: int, grad: int) -> int:
        steps = no_grad + grad
        layers = c.n_prelude + c.n_coda + c.n_core * steps
        return 6 * rest + (2 * steps + 4 * grad) * core + 12 * layers * c.d_model * c.seq_len

    g = torch.Generator().manual_seed(0)
    draws = [flops(*sample_recurrence(4, 2, g)) for _ in range(20_000)]
    assert model.flops_per_token() == pytest.approx(sum(draws) / len(draws), rel=0.01)


def test_expected_recurrence_matches_the_sampler() -> None:
    from workbench.models.recurrent_depth import expected_recurrence

    g = torch.Generator().manual_seed(1)
    for mean, backprop in ((8, 4), (2, 3)):
        draws = [sample_recurrence(mean, backprop, g) for _ in range(20_000)]
        total, grad = expected_recurrence(mean, backprop)
        assert total == mean + 1
        assert sum(a + b for a, b in draws) / len(draws) == pytest.approx(total, rel=0.01)
        assert sum(b for _, b in draws) / len(draws) == pytest.approx(grad, rel=0.01)
        assert grad < backprop  # short draws have fewer gradient steps than backprop


def test_training_backprops_only_through_the_last_k_steps() -> None:
    cfg = RecurrentDepthConfig(d_model=32, n_head=2, n_prelude=1, n_core=1, n_coda=1,
                               mean_recurrence=4, backprop_depth=2, ffn_hidden=64, seq_len=16)
    model = RecurrentDepthGPT(cfg).train()
    grad_flags: list[bool] = []
    inner = model.core_step

    def spy(state: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        grad_flags.append(torch.is_grad_enabled())
        return inner(state, e)

    model.core_step = spy  # type: ignore[method-assign]
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    out = model(ids, ids, steps=6)
    assert (out.steps, out.grad_steps) == (6, 2)
    assert grad_flags == [False] * 4 + [True] * 2
    out.loss.backward()
    assert model.adapter.weight.grad is not None
    assert model.core[0].mlp.up_proj.weight.grad.abs().sum() > 0
    grad_flags.clear()
    out = model(ids, ids, generator=torch.Generator().manual_seed(3))  # sampled count
    assert out.grad_steps == min(2, out.steps) and len(grad_flags) == out.steps


def test_qk_clip_scales_the_separate_qk_biases_too() -> None:
    """QK-Clip on a layer with Huginn's per-head q/k biases brings the clipped head's max
    logit to tau exactly and leaves the other heads alone."""
    from workbench.optim import qk_clip

    model = RecurrentDepthGPT(RecurrentDepthConfig(d_model=32, n_head=2, seq_len=16))
    attn = model.core[0].attn
    with torch.no_grad():
        attn.q_bias.normal_(0, 2.0)
        attn.k_bias.normal_(0, 2.0)
        attn.q_proj.weight[:16].mul_(20)  # head 0 far over, head 1 not
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))

    def head_max() -> torch.Tensor:
        from workbench.models.gpt import apply_rope

        q = (attn.q_proj(x).view(2, 16, 2, 16) + attn.q_bias).transpose(1, 2)
        k = (attn.k_proj(x).view(2, 16, 2, 16) + attn.k_bias).transpose(1, 2)
        cos, sin = model.cos[:16], model.sin[:16]
        s = apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2) / 4.0
        s = s.masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf"))
        return s.amax(dim=(0, 2, 3)).detach()

    before = head_max()
    hi = int(before.argmax())
    tau = float(before.sum()) / 2  # between the two heads: only `hi` is over
    qk_clip([attn], before[None, :], tau=tau)
    want = before.clone()
    want[hi] = tau
    torch.testing.assert_close(head_max(), want, rtol=1e-4, atol=1e-4)
    assert float(before[hi]) > 1.5 * tau  # a real clip, not a rounding

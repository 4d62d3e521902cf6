"""Token-by-token decoding of the recurrent-depth model: the full cache reproduces the
parallel forward, the shared cache's memory does not grow with r, and the exit rules."""

from __future__ import annotations

import pytest
import torch

from workbench.engine.depth import DepthDecoder, generate
from workbench.models.config import RecurrentDepthConfig
from workbench.models.recurrent_depth import RecurrentDepthGPT


def tiny(**kw: object) -> RecurrentDepthGPT:
    torch.manual_seed(0)
    args = dict(vocab_size=64, seq_len=48, d_model=32, n_head=2, n_prelude=1, n_core=2,
                n_coda=1, mean_recurrence=4, backprop_depth=2, ffn_hidden=64)
    args.update(kw)
    return RecurrentDepthGPT(RecurrentDepthConfig(**args)).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [1, 3])
def test_full_cache_reproduces_the_parallel_forward(steps: int) -> None:
    model = tiny(state_scale=0.0)  # zero initial state: both sides see the same s_0
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids, steps=steps).logits[0]
    dec = DepthDecoder(model, max_len=20, cache="full", max_steps=steps)
    got = torch.stack([dec.step(int(t))[0] for t in ids[0]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_shared_cache_memory_does_not_grow_with_r() -> None:
    model = tiny()
    prompt = list(range(1, 9))
    shared = {r: generate(model, prompt, 8, steps=r).kv_bytes for r in (1, 4, 32)}
    full = {r: generate(model, prompt, 8, steps=r, cache="full").kv_bytes for r in (1, 4, 32)}
    assert shared[1] == shared[4] == shared[32]
    c = model.config
    per_layer = 2 * c.n_head * 16 * c.head_dim * 4  # K and V, 16 positions, fp32
    assert shared[32] == (c.n_prelude + c.n_coda + c.n_core) * per_layer
    assert full[32] == (c.n_prelude + c.n_coda + 32 * c.n_core) * per_layer
    assert full[1] == shared[1] and full[4] < full[32]


def test_shared_equals_full_at_one_recurrence() -> None:
    model = tiny()
    a = generate(model, [3, 1, 4, 1, 5], 12, steps=1)
    b = generate(model, [3, 1, 4, 1, 5], 12, steps=1, cache="full")
    assert a.tokens == b.tokens and len(a.tokens) == 12


@pytest.mark.parametrize("rule", ["kl", "latent"])
def test_exit_rules_bound_the_steps(rule: str) -> None:
    model = tiny()
    never = generate(model, [1, 2, 3], 6, steps=8, rule=rule, threshold=0.0)
    always = generate(model, [1, 2, 3], 6, steps=8, rule=rule, threshold=float("inf"))
    assert never.steps == [8] * 6
    assert always.prompt_steps == 8 and always.steps == [2] * 6  # the last prompt token exits too
    with pytest.raises(ValueError, match="shared cache"):
        generate(model, [1, 2, 3], 2, steps=4, rule=rule, cache="full")


def test_the_decoder_counts_readouts_per_rule() -> None:
    """The kl rule runs the coda and LM head after every iteration (its exit test needs
    the distribution); latent and none read out once per token; a prefill once per
    position. compute_ratio (recipes/depth) is built on this count."""
    model = tiny()
    for rule, per_token in (("kl", 3), ("latent", 1), ("none", 1)):
        dec = DepthDecoder(model, 8, max_steps=3)
        for tok in (1, 2, 3):
            dec.step(tok, rule, threshold=0.0)  # never exits: 3 iterations each
        assert dec.readouts == 3 * per_token, rule
    dec = DepthDecoder(model, 8, max_steps=3)
    dec.feed([1, 2, 3, 4], 3)
    assert dec.readouts == 4


def test_decode_flops_adds_stages_per_use() -> None:
    """decode_flops: prelude once, core per iteration, coda + head per readout, and
    attention linear in the context length."""
    model = tiny()
    f = model.decode_flops
    core, readout = f(10, 2) - f(10, 1), f(10, 1, 2) - f(10, 1, 1)
    assert core > 0 and readout > 0 and f(10, 5, 3) == f(10, 1, 1) + 4 * core + 2 * readout
    c = model.config
    layers = c.n_prelude + 5 * c.n_core + 3 * c.n_coda
    assert f(11, 5, 3) - f(10, 5, 3) == 4 * c.d_model * layers  # one more key per layer


def test_bad_arguments_are_refused() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="exit rule"):
        DepthDecoder(model, 8).step(1, rule="entropy")
    with pytest.raises(ValueError, match="cache"):
        DepthDecoder(model, 8, cache="compressed")
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, [], 4)
    dec = DepthDecoder(model, 2)
    dec.step(1)
    dec.step(2)
    with pytest.raises(ValueError, match="KV cache full"):
        dec.step(3)


@pytest.mark.parametrize(("draft", "lookahead"), [(1, 3), (2, 5), (3, 1)])
def test_speculative_equals_plain_greedy_at_the_verify_depth(draft: int, lookahead: int) -> None:
    from workbench.engine.depth import generate_speculative

    model = tiny(state_scale=1.0)
    prompt = [5, 9, 2, 7, 1]
    plain = generate(model, prompt, 20, steps=4, cache="full", seed=3)
    spec = generate_speculative(model, prompt, 20, draft_steps=draft, verify_steps=4,
                                lookahead=lookahead, seed=3)
    assert spec.tokens == plain.tokens and len(spec.tokens) == 20
    assert 0 <= spec.accepted <= spec.drafted and 0.0 <= spec.acceptance <= 1.0
    assert spec.rounds >= 19 / (lookahead + 1)


def test_speculative_acceptance_rises_with_draft_depth() -> None:
    """A deeper draft agrees with the verifier more often (here: never less)."""
    from workbench.engine.depth import generate_speculative

    model = tiny()
    rates = [generate_speculative(model, [1, 2, 3], 24, draft_steps=d, verify_steps=6,
                                  lookahead=4).acceptance for d in (1, 5)]
    assert rates[0] <= rates[1]
    with pytest.raises(ValueError, match="draft_steps"):
        generate_speculative(model, [1], 4, draft_steps=6, verify_steps=6)

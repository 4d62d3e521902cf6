"""GRPO (Magistral variant) against a hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.recipes.rl.grpo import group_advantages, grpo_loss, token_logprobs_and_entropy

SQ2 = math.sqrt(2.0)
EPS_ADV = 1e-6


def test_group_advantages_by_hand() -> None:
    """Three groups of G=3.

    group 0  rewards 1.0 0.1 0.1   mean 0.4   A = +0.6 -0.3 -0.3
    group 1  rewards 0.1 0.1 0.1   mean 0.1   A =  0    0    0    -> dropped
    group 2  rewards 1.0 1.0 0.1   mean 0.7   A = +0.3 +0.3 -0.6
    kept A: mean 0, population std = sqrt((0.36+0.09+0.09+0.09+0.09+0.36)/6)
                                   = sqrt(0.18) = 0.3*sqrt(2) = 0.424264
    normalized: 0.6/0.424264 = sqrt(2) = 1.414214, 0.3/0.424264 = 1/sqrt(2) = 0.707107
    (times 0.424264/(0.424264+1e-6), the eps)
    """
    rewards = torch.tensor([1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0, 1.0, 0.1])
    groups = torch.tensor([0, 0, 0, 5, 5, 5, 9, 9, 9])  # any labels
    adv, keep = group_advantages(rewards, groups)
    assert keep.tolist() == [True] * 3 + [False] * 3 + [True] * 3
    std = 0.3 * SQ2
    scale = std / (std + EPS_ADV)
    want = torch.tensor([SQ2, -1 / SQ2, -1 / SQ2, 0, 0, 0, 1 / SQ2, 1 / SQ2, -SQ2]) * scale
    torch.testing.assert_close(adv, want.float(), atol=1e-6, rtol=0)
    assert adv.dtype == torch.float32


def test_zero_advantage_groups_are_dropped() -> None:
    # All right, all wrong, a lone sample: no signal. Order of samples does not matter.
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.7, 1.0])
    groups = torch.tensor([0, 1, 0, 0, 1, 2, 3, 2])
    adv, keep = group_advantages(rewards, groups)
    assert keep.tolist() == [False, False, False, False, False, True, False, True]
    assert adv[~keep].abs().max() == 0
    torch.testing.assert_close(adv[keep], torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)
    adv, keep = group_advantages(torch.ones(4), torch.tensor([0, 0, 1, 1]))
    assert not keep.any() and adv.abs().sum() == 0
    with pytest.raises(ValueError):
        group_advantages(torch.ones(4), torch.zeros(3))


def _example():
    """Three completions of 3 tokens, written as importance ratios rho = exp(logp - old).

    seq  A    rho             mask
    0   +1    1.5 1.1 0.7     1 1 1
    1   -2    0.5 1.5 0.9     1 1 0
    2   +0.5  1.25 1.3 1.0    1 1 0
    """
    ratios = torch.tensor([[1.5, 1.1, 0.7], [0.5, 1.5, 0.9], [1.25, 1.3, 1.0]])
    old = torch.full((3, 3), -1.0)
    logp = (old + ratios.log()).requires_grad_(True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0]], dtype=torch.float32)
    return logp, old, adv, mask


def test_grpo_loss_by_hand() -> None:
    """eps_low 0.2, eps_high 0.28: the clip range is [0.8, 1.28].

    per-token min(rho*A, clip(rho)*A):
      seq 0 (A=+1):   min(1.5, 1.28) = 1.28 (clipped high)  min(1.1, 1.1) = 1.1
                      min(0.7, 0.8) = 0.7 (A > 0: a low ratio is not clipped)
      seq 1 (A=-2):   min(-1.0, -1.6) = -1.6 (clipped low)  min(-3.0, -2.56) = -3.0
                      (masked: -1.8)
      seq 2 (A=+0.5): min(0.625, 0.625) = 0.625   min(0.65, 0.64) = 0.64 (clipped high)
                      (masked)
    sum over the 7 masked tokens = 1.28 + 1.1 + 0.7 - 1.6 - 3.0 + 0.625 + 0.64 = -0.255
    loss = -(-0.255) / 7 = 0.036428571   (token-level: divided by 7 tokens, not 3 seqs)
    clip_frac = 3/7 (high 2/7, low 1/7)
    ratio_mean = (1.5 + 1.1 + 0.7 + 0.5 + 1.5 + 1.25 + 1.3) / 7 = 7.85 / 7 = 1.121429
    kl = mean(old - logp) = -mean(log rho) = -0.341926 / 7 = -0.048847
    d loss / d logp = -A * rho / 7 where unclipped, 0 where clipped or masked.
    """
    logp, old, adv, mask = _example()
    loss, stats = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx(0.255 / 7, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(3 / 7)
    assert stats["clip_high_frac"] == pytest.approx(2 / 7)
    assert stats["clip_low_frac"] == pytest.approx(1 / 7)
    assert stats["ratio_mean"] == pytest.approx(7.85 / 7, abs=1e-6)
    log_sum = sum(math.log(r) for r in (1.5, 1.1, 0.7, 0.5, 1.5, 1.25, 1.3))
    assert log_sum == pytest.approx(0.341926, abs=1e-6)
    assert stats["kl"] == pytest.approx(-0.341926 / 7, abs=1e-6)
    assert stats["tokens"] == 7
    loss.backward()
    want = torch.tensor([[0.0, -1.1 / 7, -0.7 / 7],
                         [0.0, 2 * 1.5 / 7, 0.0],
                         [-0.5 * 1.25 / 7, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, want, atol=1e-6, rtol=0)


def test_clip_higher_is_asymmetric() -> None:
    """Symmetric eps 0.2 clips rho=1.25 (A > 0) too; eps_high 0.28 lets it through."""
    logp, old, adv, mask = _example()
    sym, s_stats = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.2)
    # seq 0 tok 0: min(1.5, 1.2) = 1.2; seq 2: min(0.625, 0.6) = 0.6, min(0.65, 0.6) = 0.6
    assert sym.item() == pytest.approx(-(1.2 + 1.1 + 0.7 - 1.6 - 3.0 + 0.6 + 0.6) / 7)
    assert s_stats["clip_high_frac"] == pytest.approx(3 / 7)
    assert s_stats["clip_low_frac"] == pytest.approx(1 / 7)  # the low side did not move
    higher, h_stats = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert h_stats["clip_high_frac"] == pytest.approx(2 / 7)
    assert higher.item() < sym.item()  # more room upward = a larger objective
    # For A < 0 only eps_low matters: raising eps_high changes nothing there.
    neg = torch.tensor([-1.0, -1.0, -1.0])
    a, _ = grpo_loss(logp, old, neg, mask, eps_low=0.2, eps_high=0.2)
    b, _ = grpo_loss(logp, old, neg, mask, eps_low=0.2, eps_high=5.0)
    assert a.item() == pytest.approx(b.item())


def test_grpo_loss_denominator_for_micro_batches() -> None:
    logp, old, adv, mask = _example()
    full, _ = grpo_loss(logp, old, adv, mask, 0.2, 0.28)
    total = float(mask.sum())
    parts = [grpo_loss(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], 0.2, 0.28,
                       denom=total)[0] for i in range(3)]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), abs=1e-6)
    with pytest.raises(ValueError):
        grpo_loss(logp, old, adv[:2], mask, 0.2, 0.28)


def test_on_policy_ratio_is_one() -> None:
    """Ratio 1 everywhere (trainer == generator): the loss is -mean(A) per token and the
    gradient is the plain policy gradient -A/N."""
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.125]])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = grpo_loss(logp, logp.detach().clone(), adv, mask, 0.2, 0.28)
    assert loss.item() == pytest.approx(-(1 + 1 - 1) / 3)
    assert stats["clip_frac"] == 0 and stats["ratio_mean"] == 1 and stats["kl"] == 0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3, -1 / 3], [1 / 3, 0.0]]))


def test_token_logprobs_and_entropy() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([[1, 2]]))
    torch.testing.assert_close(logp, torch.log(torch.tensor([[0.25, 1 / 3]])))
    h0 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    torch.testing.assert_close(ent, torch.tensor([[h0, math.log(3)]]))


# ----------------------------------------------------------------------------- bucketed update


def test_micro_batches_cover_every_index_within_the_budget() -> None:
    from workbench.recipes.rl.update import micro_batches

    lengths = [5, 90, 7, 300, 12, 12, 40, 64, 3]
    buckets = micro_batches(lengths, budget=128)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for b in buckets:
        assert len(b) * max(lengths[i] for i in b) <= 128 or len(b) == 1
    assert [3] in buckets  # longer than the budget: a bucket of its own
    assert micro_batches(lengths, budget=10**6) == [sorted(range(9), key=lambda i: lengths[i])]


def test_bucketed_update_equals_the_full_batch_gradient() -> None:
    """Accumulating over length buckets gives the gradient (and loss) of one padded
    forward over the whole minibatch with grpo_loss's default token normalization."""
    from dataclasses import dataclass

    from workbench.models.gpt import GPT, GPTConfig
    from workbench.recipes.rl.update import accumulate_grpo, completion_logprobs

    @dataclass
    class R:
        prompt: list[int]
        tokens: list[int]
        logprobs: list[float]

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(seq_len=96, n_layer=2, n_head=2, d_model=16, attn_backend="sdpa"))
    batch = []
    for _ in range(9):
        p = int(torch.randint(2, 20, (), generator=g))
        n = int(torch.randint(1, 70, (), generator=g))
        batch.append(R(torch.randint(0, 256, (p,), generator=g).tolist(),
                       torch.randint(0, 256, (n,), generator=g).tolist(),
                       (-torch.rand(n, generator=g) * 6).tolist()))
    rewards = torch.tensor([1.0, 0.1, 0.0, 0.1, 0.1, 0.1, 1.0, 0.0, 0.1])
    adv, keep = group_advantages(rewards, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    assert not keep[3:6].any()  # a dropped group is in the batch

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out

    logp, old, mask, _ = completion_logprobs(model, batch, torch.device("cpu"))
    ref_loss, _ = grpo_loss(logp, old, adv, mask * keep[:, None].float(), 0.2, 0.28)
    ref_loss.backward()
    ref = grads()
    stats = accumulate_grpo(model, batch, adv, keep, 0.2, 0.28, budget=128,
                            device=torch.device("cpu"))
    got = grads()
    assert stats.micro_batches > 2
    assert stats.padded_tokens < mask.numel()  # less padding than one padded batch
    assert stats.loss == pytest.approx(float(ref_loss.detach()), rel=1e-5, abs=1e-7)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- policy KL


def test_k3_is_nonnegative_and_zero_only_on_agreement() -> None:
    """k3 = (r - 1) - log r with r = p_train / p_gen: >= 0 whichever side is larger (k1,
    old - new, is negative whenever the trainer gives its tokens more probability).
    Computed in float64 from float32 log-probs: a one-ulp difference is not rounded to 0."""
    from workbench.recipes.rl.update import token_k3

    new = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    old = torch.tensor([-1.0, -1.5, -0.7, 0.0])
    old[3] = torch.nextafter(new[3], torch.tensor(0.0))  # one float32 ulp (2.4e-7) away
    k3 = token_k3(new, old)
    assert k3.dtype == torch.float64
    d = new.double() - old.double()
    r = torch.exp(d)
    torch.testing.assert_close(k3, (r - 1) - torch.log(r), atol=1e-12, rtol=1e-6)
    assert (k3 >= 0).all() and k3[0] == 0
    assert float(k3[3]) == pytest.approx(float(d[3]) ** 2 / 2, rel=1e-6) and k3[3] > 0
    assert float((old - new)[2]) < 0  # the k1 term of that token


def test_k3_by_staleness_separates_mismatch_from_drift() -> None:
    """accumulate_grpo's k3 means by staleness = version minus each token's generating
    version, over every completion token (dropped groups too), by hand."""
    from dataclasses import dataclass

    from workbench.models.gpt import GPT, GPTConfig
    from workbench.recipes.rl.update import accumulate_grpo, completion_logprobs, token_k3

    @dataclass
    class R:
        prompt: list[int]
        tokens: list[int]
        logprobs: list[float]
        versions: list[int]

    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = GPT(GPTConfig(seq_len=64, n_layer=1, n_head=2, d_model=16, attn_backend="sdpa"))
    version = 7
    batch = []
    for i in range(6):
        n = 5 + i
        # generated from version 7 - i % 3 on, catching up on the way (in-flight updates)
        versions = [version - max(0, i % 3 - j // 2) for j in range(n)]
        batch.append(R(torch.randint(0, 256, (3,), generator=g).tolist(),
                       torch.randint(0, 256, (n,), generator=g).tolist(),
                       (-torch.rand(n, generator=g) * 6).tolist(), versions))
    adv, keep = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5, 1.0, 0.0]),
                                 torch.tensor([0, 0, 1, 1, 2, 2]))
    assert not keep[2:4].any()
    with torch.no_grad():
        new, old, mask, _ = completion_logprobs(model, batch, torch.device("cpu"), 0.9)
    k3 = token_k3(new, old)
    want: dict[int, list[float]] = {}
    for row, s in enumerate(batch):
        for j, v in enumerate(s.versions):
            want.setdefault(version - v, []).append(float(k3[row, len(s.prompt) - 1 + j]))
    stats = accumulate_grpo(model, batch, adv, keep, 0.2, 0.28, budget=24,
                            device=torch.device("cpu"), temperature=0.9, version=version)
    assert stats.micro_batches > 1
    assert list(stats.k3_by_staleness) == [0, 1, 2]
    for s, values in want.items():
        assert stats.k3_by_staleness[s] == pytest.approx(sum(values) / len(values), rel=1e-5)
    # without a version: no staleness diagnostics (and no need for `versions`)
    model.zero_grad(set_to_none=True)
    assert accumulate_grpo(model, batch, adv, keep, 0.2, 0.28, budget=24,
                           device=torch.device("cpu")).k3_by_staleness == {}


def test_policy_kl_metrics_keys() -> None:
    """rl/mismatch_kl only where staleness-0 tokens exist (absent, not 0, otherwise);
    rl/drift_kl/s<s> for each staleness present."""
    from workbench.recipes.rl.trainer import policy_kl_metrics

    assert policy_kl_metrics({0: 1e-6, 2: 0.03}) == {
        "rl/mismatch_kl": 1e-6, "rl/drift_kl/s0": 1e-6, "rl/drift_kl/s2": 0.03}
    assert policy_kl_metrics({1: 0.01}) == {"rl/drift_kl/s1": 0.01}
    assert policy_kl_metrics({}) == {}

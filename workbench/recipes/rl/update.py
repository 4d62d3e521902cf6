"""The trainer's update: log-probs of sampled completions under the policy, and the
GRPO gradient accumulated over length buckets.

Rollout lengths are heavy-tailed, so padding a whole minibatch to its longest
completion computes mostly padding. `micro_batches` sorts the samples by length into
buckets of at most `budget` padded tokens; each bucket's loss is divided by the whole
minibatch's kept-token count (`grpo_loss(denom=...)`), so the accumulated gradient is
the full-minibatch gradient (tested against it), at a fraction of the compute, and
the budget bounds one forward/backward's activation memory whatever the tail does.

Log-probs are those of the sampling distribution, ``log_softmax(logits / T)`` at the
rollout temperature T, as the engines record them (engine/__init__.py): the importance
ratio exp(new - old) is then 1 on-policy whatever T, and the clip window is measured
against the policy that actually sampled. The entropy is that distribution's too.

Two diagnostics per token, with r = p_train / p_gen = exp(new - old) and Schulman's
non-negative, low-variance KL estimator k3 = (r - 1) - log r (KL(gen || train) in
expectation over the generator's samples), averaged over every completion token of
the minibatch (kept or not: it is a property of the two policies, not of the loss):

- by staleness s = the trained version minus the version that generated the token
  (`k3_by_staleness`): s = 0 isolates the train/inference mismatch (same weights, two
  implementations: the engine's KV cache, in-flight updates, kernels, precision);
  s > 0 adds the drift of s policy updates. The trainer logs them as
  `rl/mismatch_kl` (s = 0) and `rl/drift_kl/s<s>`.
- `kl` (logged as `rl/logprob_kl`): the older k1 estimate mean(old - new) over kept
  tokens, every staleness mixed; it can be negative. Kept for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import torch
from torch import Tensor, nn

from workbench.kernels.logprobs import token_logprobs
from workbench.recipes.rl.grpo import grpo_loss, token_logprobs_and_entropy


class Rollout(Protocol):
    prompt: list[int]
    tokens: list[int]  # the completion
    logprobs: list[float]  # the generator's, one per completion token


class VersionedRollout(Rollout, Protocol):
    versions: list[int]  # the policy version that generated each completion token


@dataclass
class UpdateStats:
    loss: float  # the full-minibatch GRPO loss
    entropy: float  # of the sampling distribution, mean over every completion token
    clip_frac: float  # over kept tokens
    kl: float  # generator-vs-trainer log-prob KL (k1), over kept tokens, staleness mixed
    micro_batches: int
    padded_tokens: int  # tokens actually computed, padding included
    # staleness -> mean k3 over every completion token generated that many versions
    # before the trained weights; only the staleness values present (empty without
    # `version`). See the module doc.
    k3_by_staleness: dict[int, float] = field(default_factory=dict)


def token_k3(logp: Tensor, old: Tensor) -> Tensor:
    """Per-token k3 = (r - 1) - log r with r = exp(logp - old), float64: >= 0, and 0
    only where the two log-probs agree. k3 is about d^2 / 2 for a small difference d,
    which float32 rounds to 0 below |d| ~ 1e-7 (and resolves coarsely above): the
    difference of the two float32 log-probs is taken exactly in float64, then expm1
    keeps its square's size."""
    d = logp.double() - old.double()
    return torch.expm1(d) - d


def token_staleness(samples: Sequence[VersionedRollout], width: int, version: int) -> Tensor:
    """[B, width] long: `version` minus the version that generated each completion token,
    at the positions completion_logprobs aligns them to (-1 elsewhere)."""
    out = torch.full((len(samples), width), -1, dtype=torch.long)
    for i, s in enumerate(samples):
        p, n = len(s.prompt), len(s.tokens)
        out[i, p - 1:p - 1 + n] = version - torch.tensor(s.versions, dtype=torch.long)
    return out


def completion_logprobs(model: nn.Module, samples: Sequence[Rollout],
                        device: torch.device, temperature: float = 1.0,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of each completion under `model` at the sampling
    `temperature` (logits / T, as the engines record them), with the generators'
    log-probs and the mask, all [B, W] (W = longest prompt + completion), aligned to the
    positions that predict each completion token.

    A model with a linear `lm_head` goes through the fused, chunked kernel
    (workbench.kernels.logprobs): the [B, W, vocab] logits are never materialized,
    which is what bounds memory for a large-vocabulary policy.

    Rows are right-padded with id 0, a valid id of any vocabulary: causal attention keeps
    the padding from every real position and the mask drops its outputs, so its value
    never matters (no tokenizer-specific PAD is needed)."""
    width = max(len(s.prompt) + len(s.tokens) for s in samples)
    idx = torch.zeros((len(samples), width), dtype=torch.long)
    targets = torch.zeros(len(samples), width, dtype=torch.long)
    old = torch.zeros(len(samples), width)
    mask = torch.zeros(len(samples), width)
    for i, s in enumerate(samples):
        p, n = len(s.prompt), len(s.tokens)
        idx[i, :p + n] = torch.tensor(s.prompt + s.tokens)
        targets[i, p - 1:p - 1 + n] = torch.tensor(s.tokens)  # position t predicts t + 1
        old[i, p - 1:p - 1 + n] = torch.tensor(s.logprobs)
        mask[i, p - 1:p - 1 + n] = 1.0
    head = getattr(getattr(model, "module", model), "lm_head", None)  # DDP wraps it
    if isinstance(head, nn.Linear):  # fused head + log-softmax: no [B, W, V] logits
        hidden = model(idx.to(device), return_hidden=True).hidden
        logp, ent = token_logprobs(hidden, head.weight, targets.to(device), bias=head.bias,
                                   temperature=temperature)
        return logp, old.to(device), mask.to(device), ent.detach()
    logits = model(idx.to(device)).logits
    logp, ent = token_logprobs_and_entropy(logits.float() / temperature, targets.to(device))
    return logp, old.to(device), mask.to(device), ent


def micro_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped by length so that each group, padded to its longest member, holds
    at most `budget` tokens (a longer single sequence gets a group of its own).

    Rollout lengths are heavy-tailed: padding a whole batch to its longest completion
    computes mostly padding. Sorted buckets cut that waste, and the budget bounds the
    activation memory of one forward/backward whatever the tail does."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:  # ascending, so the newest member is the group's longest
        if out and (len(out[-1]) + 1) * lengths[i] <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def accumulate_grpo(model: nn.Module, batch: Sequence[Rollout], adv: Tensor, keep: Tensor,
                    eps_low: float, eps_high: float, budget: int,
                    device: torch.device, temperature: float = 1.0,
                    version: int | None = None) -> UpdateStats:
    """Backpropagate Magistral's GRPO loss for `batch` into `model`'s .grad (the caller
    zeroes, clips and steps), one length bucket at a time. `temperature`: the rollouts'
    sampling temperature. `version`: the version of `model`'s weights, for the k3
    diagnostics by staleness (the samples then need `versions`); None skips them."""
    keep_list = keep.tolist()
    kept_tokens = float(sum(len(s.tokens) for s, k in zip(batch, keep_list, strict=True) if k))
    denom = max(kept_tokens, 1.0)
    widths = [len(s.prompt) + len(s.tokens) for s in batch]
    loss_sum = ent_sum = tokens = clip = kl = 0.0
    buckets = micro_batches(widths, budget)
    padded = 0
    k3 = StalenessMeans()
    for mb in buckets:
        samples = [batch[i] for i in mb]
        logp, old, mask, ent = completion_logprobs(model, samples, device, temperature)
        padded += mask.numel()
        if version is not None:
            versioned = cast("Sequence[VersionedRollout]", samples)
            stale = token_staleness(versioned, mask.shape[1], version)
            k3.add(token_k3(logp.detach(), old), stale.to(device), mask)
        rows = torch.tensor(mb)
        loss, stats = grpo_loss(logp, old, adv[rows].to(device),
                                mask * keep[rows, None].to(device).float(), eps_low, eps_high,
                                denom=denom)
        if any(keep_list[i] for i in mb):
            loss.backward()
        loss_sum += float(loss.detach())
        ent_sum += float((ent * mask).sum())
        tokens += float(mask.sum())
        clip += stats["clip_frac"] * stats["tokens"]
        kl += stats["kl"] * stats["tokens"]
    return UpdateStats(loss=loss_sum, entropy=ent_sum / max(tokens, 1.0), clip_frac=clip / denom,
                       kl=kl / denom, micro_batches=len(buckets), padded_tokens=padded,
                       k3_by_staleness=k3.means())


class StalenessMeans:
    """Running per-staleness sums of a per-token value, over the buckets of one step."""

    def __init__(self) -> None:
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def add(self, value: Tensor, stale: Tensor, mask: Tensor) -> None:
        """Accumulate `value` [B, W] where `mask` [B, W] is set, by `stale` [B, W]."""
        on = mask > 0
        for s in stale[on].unique().tolist():
            sel = on & (stale == s)
            self.sums[s] = self.sums.get(s, 0.0) + float(value[sel].double().sum())
            self.counts[s] = self.counts.get(s, 0) + int(sel.sum())

    def means(self) -> dict[int, float]:
        """staleness -> mean, for each staleness seen (ascending)."""
        return {s: self.sums[s] / self.counts[s] for s in sorted(self.sums)}

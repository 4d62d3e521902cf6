"""The trainer's update: log-probs of sampled completions under the policy, and the
GRPO gradient accumulated over length buckets.

Rollout lengths are heavy-tailed, so padding a whole minibatch to its longest
completion computes mostly padding. `micro_batches` sorts the samples by length into
buckets of at most `budget` padded tokens; each bucket's loss is divided by the whole
minibatch's kept-token count (`grpo_loss(denom=...)`), so the accumulated gradient is
the full-minibatch gradient (tested against it), at a fraction of the compute, and
the budget bounds one forward/backward's activation memory whatever the tail does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from workbench.kernels.logprobs import token_logprobs
from workbench.recipes.rl.grpo import grpo_loss, token_logprobs_and_entropy


class Rollout(Protocol):
    prompt: list[int]
    tokens: list[int]  # the completion
    logprobs: list[float]  # the generator's, one per completion token


@dataclass
class UpdateStats:
    loss: float  # the full-minibatch GRPO loss
    entropy: float  # mean over every completion token (dropped groups too)
    clip_frac: float  # over kept tokens
    kl: float  # generator-vs-trainer log-prob KL (k1), over kept tokens
    micro_batches: int
    padded_tokens: int  # tokens actually computed, padding included


def completion_logprobs(model: nn.Module, samples: Sequence[Rollout],
                        device: torch.device,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of each completion under `model`, with the
    generators' log-probs and the mask, all [B, W] (W = longest prompt + completion),
    aligned to the positions that predict each completion token.

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
        logp, ent = token_logprobs(hidden, head.weight, targets.to(device), bias=head.bias)
        return logp, old.to(device), mask.to(device), ent.detach()
    logits = model(idx.to(device)).logits
    logp, ent = token_logprobs_and_entropy(logits, targets.to(device))
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
                    device: torch.device) -> UpdateStats:
    """Backpropagate Magistral's GRPO loss for `batch` into `model`'s .grad (the caller
    zeroes, clips and steps), one length bucket at a time."""
    keep_list = keep.tolist()
    kept_tokens = float(sum(len(s.tokens) for s, k in zip(batch, keep_list, strict=True) if k))
    denom = max(kept_tokens, 1.0)
    widths = [len(s.prompt) + len(s.tokens) for s in batch]
    loss_sum = ent_sum = tokens = clip = kl = 0.0
    buckets = micro_batches(widths, budget)
    padded = 0
    for mb in buckets:
        logp, old, mask, ent = completion_logprobs(model, [batch[i] for i in mb], device)
        padded += mask.numel()
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
                       kl=kl / denom, micro_batches=len(buckets), padded_tokens=padded)

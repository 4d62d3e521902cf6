"""GRPO as modified by Magistral (arXiv 2506.10910): advantages and the clipped token loss.

For a minibatch of completions, G per prompt (a "group"):

1. Advantage A_i = r_i - mean(r over i's group). No value model, no reference model,
   no KL term.
2. Groups whose advantages are all zero (every completion equally rewarded: all right
   or all wrong) carry no signal and are dropped (mask False, advantage 0).
3. The kept advantages are normalized over the minibatch:
   A_i <- (A_i - mean_kept(A)) / (std_kept(A) + 1e-6), with the population std
   (unbiased=False). Since every kept group sums to zero, mean_kept(A) is 0 (up to
   rounding): the step only rescales, to unit RMS, which keeps the update size
   independent of the reward scale of the batch.
4. Per token t of completion i, with the importance ratio against the generator's
   log-probs (the behavior policy that actually sampled the token, possibly several
   versions old): rho = exp(logp - old_logp),
       l_it = min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i)
   clip-higher: eps_high > eps_low (0.2 / 0.28) lets unlikely tokens of good
   completions gain probability faster than PPO's symmetric clip, against entropy
   collapse.
5. Loss = -sum_{i,t} mask_it * l_it / sum_{i,t} mask_it: token-level normalization over
   the whole minibatch, so long completions weigh per token, not per sequence (no
   length bias toward short answers).

`grpo_loss(..., denom=N)` divides by N instead of mask.sum(): with gradient
accumulation over micro-batches, pass the minibatch's total token count so the
accumulated gradient equals the full-minibatch one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ADV_EPS = 1e-6
ZERO_ADV_TOL = 1e-8  # |A| below this counts as zero when deciding to drop a group


def group_advantages(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Magistral advantages for a minibatch.

    rewards [N] float, group_ids [N] int (any labels; equal label = same prompt).
    Returns (advantages [N] float32, normalized over the kept samples, 0 where dropped;
    keep [N] bool, False for every member of a zero-advantage group).
    """
    if rewards.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids "
                         f"{tuple(group_ids.shape)} must be the same 1-D shape")
    r = rewards.detach().double()  # float64: group means of a few floats, exactly
    _, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    sums = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, r)
    counts = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(
        0, inv, torch.ones_like(r))
    adv = r - (sums / counts)[inv]
    nonzero = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(
        0, inv, (adv.abs() > ZERO_ADV_TOL).to(r.dtype))
    keep = (nonzero > 0)[inv]
    out = torch.zeros_like(adv)
    if keep.any():
        kept = adv[keep]
        out[keep] = (kept - kept.mean()) / (kept.std(unbiased=False) + ADV_EPS)
    return out.float(), keep


def grpo_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, eps_low: float,
              eps_high: float, denom: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """Clipped token-level policy loss (no KL). See the module doc for the formula.

    logp [B, T]: the trainer's log-probs of the sampled tokens (with grad).
    old_logp [B, T]: the generator's log-probs of the same tokens (behavior policy).
    adv [B]: advantages from `group_advantages`.
    mask [B, T]: 1 for completion tokens that count. It must already exclude dropped
    samples (rows where keep is False) and padding; prompt tokens are never in it.
    denom: the normalizer (default mask.sum()); see the module doc.

    Stats (python floats, over masked tokens): clip_frac, the share of tokens where the
    clip is active (A > 0 and rho > 1 + eps_high, or A < 0 and rho < 1 - eps_low: the
    clipped branch wins and the token's gradient is zero), with clip_high_frac and
    clip_low_frac its two halves; ratio_mean; kl = mean(old_logp - logp), the
    generator-vs-trainer log-prob KL estimate (k1); tokens, the mask sum.
    """
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0 (got {eps_low}, {eps_high})")
    if logp.shape != old_logp.shape or logp.shape != mask.shape or adv.shape != logp.shape[:1]:
        raise ValueError(f"shapes: logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)},"
                         f" mask {tuple(mask.shape)} must match and adv {tuple(adv.shape)} "
                         "must be [B]")
    m = mask.to(logp.dtype)
    a = adv.to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    per_token = torch.minimum(unclipped, clipped)
    n = m.sum()
    norm = n.clamp_min(1.0) if denom is None else torch.as_tensor(float(denom))
    loss = -(per_token * m).sum() / norm
    with torch.no_grad():
        count = float(n.clamp_min(1.0))
        r = ratio.detach()
        high = ((a > 0) & (r > 1.0 + eps_high)).to(m.dtype) * m
        low = ((a < 0) & (r < 1.0 - eps_low)).to(m.dtype) * m
        stats = {
            "clip_frac": float((high + low).sum()) / count,
            "clip_high_frac": float(high.sum()) / count,
            "clip_low_frac": float(low.sum()) / count,
            "ratio_mean": float((r * m).sum()) / count,
            "kl": float(((old_logp.detach() - logp.detach()) * m).sum()) / count,
            "tokens": float(n),
        }
    return loss, stats


def token_logprobs_and_entropy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """log p(target) and the entropy of the next-token distribution, each [B, T].

    logits [B, T, V] at the positions that predict targets [B, T] (i.e. already shifted).
    Computed in float32 (log_softmax), so bf16 logits do not bias the ratio. Entropy is
    returned detached: it is a statistic, not a loss term.
    """
    logprobs = F.log_softmax(logits.float(), dim=-1)
    logp = logprobs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy

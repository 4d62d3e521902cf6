"""Token-by-token decoding of a recurrent-depth model with a KV cache (RESEARCH.md §3).

Prelude and coda layers run once per token and keep one K/V per token. Core layers run
r times per token, and the cache holds either:

- "shared" (default): one K/V per token per core layer, overwritten at every recurrence,
  so each token keeps only the KV of its last recurrence and the memory does not grow
  with r (Huginn's compress-s{R}). Later tokens read it at every one of their own
  iterations. With r = 1 this is exactly the full cache.
- "full": one K/V per token per (recurrence, core layer): iteration i of a token reads
  iteration i of the earlier ones, which is exactly the parallel training forward.
  Memory grows linearly with r; adaptive exit is refused (an exited token would leave
  later iterations without keys).

Per-token exit, tested after each recurrence from the second on (prompt tokens always
run max_steps, as Huginn does):
- "none": always max_steps;
- "kl": KL(p_prev || p_now) of successive readout distributions < threshold (the coda
  runs at every recurrence to get them);
- "latent": ||s_now - s_prev|| / ||s_now|| < threshold.

Batch size 1: the point is per-token depth, not throughput.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.models.recurrent_depth import RecurrentDepthGPT, SandwichBlock

EXIT_RULES = ("none", "kl", "latent")
DEFAULT_THRESHOLD = {"none": 0.0, "kl": 5e-4, "latent": 0.03}  # Huginn's (RESEARCH.md §3)


@dataclass
class DepthGeneration:
    tokens: list[int]  # generated (prompt excluded)
    steps: list[int]  # recurrences per generated token
    prompt_steps: int  # recurrences per prompt token
    kv_bytes: int  # the cache's size at the end


@dataclass
class _KV:
    k: list[Tensor] = field(default_factory=list)  # per layer [H, max_len, D]
    v: list[Tensor] = field(default_factory=list)


class DepthDecoder:
    def __init__(self, model: RecurrentDepthGPT, max_len: int, cache: str = "shared",
                 max_steps: int | None = None) -> None:
        if cache not in ("shared", "full"):
            raise ValueError(f"cache {cache!r} must be 'shared' or 'full'")
        c = model.config
        if not 1 <= max_len <= c.seq_len:
            raise ValueError(f"max_len ({max_len}) must be in [1, seq_len ({c.seq_len})]")
        self.model, self.max_len, self.mode = model.eval(), max_len, cache
        self.max_steps = max_steps or c.mean_recurrence
        p = next(model.parameters())
        self._new = lambda: torch.zeros(c.n_head, max_len, c.head_dim, dtype=p.dtype,
                                        device=p.device)
        self.prelude = self._layers(c.n_prelude)
        self.coda = self._layers(c.n_coda)
        self.core: dict[int, _KV] = {}  # recurrence index (0 when shared) -> layers
        self.length = 0

    def _layers(self, n: int) -> _KV:
        return _KV([self._new() for _ in range(n)], [self._new() for _ in range(n)])

    def _core(self, i: int) -> _KV:
        key = 0 if self.mode == "shared" else i
        if key not in self.core:
            self.core[key] = self._layers(self.model.config.n_core)
        return self.core[key]

    @property
    def kv_bytes(self) -> int:
        kvs = [self.prelude, self.coda, *self.core.values()]
        return sum(t.numel() * t.element_size() for kv in kvs for t in (*kv.k, *kv.v))

    # -- one position through one block, reading and writing the cache

    def _block(self, block: SandwichBlock, x: Tensor, t: int, k_cache: Tensor,
               v_cache: Tensor) -> Tensor:
        a = block.attn
        h = block.norm1(x)  # [1, 1, h]
        q = a.q_proj(h).view(a.n_head, a.head_dim)
        k = a.k_proj(h).view(a.n_head, a.head_dim)
        v = a.v_proj(h).view(a.n_head, a.head_dim)
        if a.q_bias is not None:
            q, k = q + a.q_bias, k + a.k_bias
        cos, sin = self.model.cos[t], self.model.sin[t]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        k_cache[:, t], v_cache[:, t] = k, v
        y = F.scaled_dot_product_attention(q[:, None], k_cache[:, :t + 1],
                                           v_cache[:, :t + 1])  # [H, 1, D]
        x = block.norm2(x + a.o_proj(y.reshape(1, 1, -1)))
        return block.norm4(x + block.mlp(block.norm3(x)))

    def _readout(self, s: Tensor, t: int) -> Tensor:
        m = self.model
        x = m.norm_f(s)
        for j, block in enumerate(m.coda):
            x = self._block(block, x, t, self.coda.k[j], self.coda.v[j])
        return m.lm_head(m.norm_f(x))[0, 0].float()

    @torch.no_grad()
    def step(self, token: int, rule: str = "none", threshold: float | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """Feed one token at the next position: (next-token logits, recurrences run)."""
        if rule not in EXIT_RULES:
            raise ValueError(f"exit rule {rule!r} must be one of {', '.join(EXIT_RULES)}")
        if rule != "none" and self.mode == "full":
            raise ValueError("adaptive exit needs the shared cache (cache='shared')")
        if self.length >= self.max_len:
            raise ValueError(f"KV cache full ({self.max_len} positions)")
        thr = DEFAULT_THRESHOLD[rule] if threshold is None else threshold
        m, t = self.model, self.length
        x = m.embed(torch.tensor([[token]], device=m.cos.device)) * m.config.embed_scale
        for j, block in enumerate(m.prelude):
            x = self._block(block, x, t, self.prelude.k[j], self.prelude.v[j])
        e, s = x, m.initial_state(x, generator)
        logp_prev: Tensor | None = None
        logits: Tensor | None = None
        steps = 0
        for i in range(self.max_steps):
            kv = self._core(i)
            x = m.adapter(torch.cat([s, e], dim=-1))
            for j, block in enumerate(m.core):
                x = self._block(block, x, t, kv.k[j], kv.v[j])
            s_prev, s, steps = s, x, i + 1
            if rule == "kl":
                logits = self._readout(s, t)
                logp = torch.log_softmax(logits, -1)
                if logp_prev is not None and \
                        float((logp_prev.exp() * (logp_prev - logp)).sum()) < thr:
                    break
                logp_prev = logp
            elif rule == "latent" and i > 0 and \
                    float((s - s_prev).norm() / s.norm().clamp_min(1e-12)) < thr:
                break
        if logits is None or rule != "kl":
            logits = self._readout(s, t)
        self.length += 1
        return logits, steps


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE of one position; x [H, D]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return (x.float() * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(x)


@torch.no_grad()
def generate(model: RecurrentDepthGPT, prompt: list[int], max_new_tokens: int, *,
             steps: int | None = None, rule: str = "none", threshold: float | None = None,
             cache: str = "shared", temperature: float = 0.0, eos_id: int | None = None,
             seed: int = 0) -> DepthGeneration:
    """Decode after `prompt` (greedy at temperature 0). Prompt tokens run `steps`
    recurrences with no early exit; generated ones exit by `rule`."""
    if not prompt:
        raise ValueError("empty prompt")
    dec = DepthDecoder(model, min(model.config.seq_len, len(prompt) + max_new_tokens),
                       cache, steps)
    g = torch.Generator(device=model.cos.device).manual_seed(seed)
    for tok in prompt:
        logits, prompt_steps = dec.step(tok, "none", generator=g)
    out: list[int] = []
    per_token: list[int] = []  # recurrences behind the distribution each token came from
    current = prompt_steps
    for i in range(max_new_tokens):
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))
        out.append(nxt)
        per_token.append(current)
        if i == max_new_tokens - 1 or nxt == eos_id or dec.length >= dec.max_len:
            break
        logits, current = dec.step(nxt, rule, threshold, g)
    return DepthGeneration(out, per_token, prompt_steps, dec.kv_bytes)

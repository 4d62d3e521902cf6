"""Token-by-token decoding of a recurrent-depth model with a KV cache (Huginn; Geiping
et al., 2025, "Scaling up Test-Time Compute with Latent Reasoning").

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

Per-token exit, tested after each recurrence from the second on (a prompt's prefill
always runs max_steps, as Huginn does):
- "none": always max_steps;
- "kl": KL(p_prev || p_now) of successive readout distributions < threshold (the coda
  and LM head run at every recurrence to get them: `DepthDecoder.readouts` counts them);
- "latent": ||s_now - s_prev|| / ||s_now|| < threshold (one readout, after the exit).

Batch size 1: the point is per-token depth, not throughput.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from workbench.models.recurrent_depth import RecurrentDepthGPT

EXIT_RULES = ("none", "kl", "latent")
DEFAULT_THRESHOLD = {"none": 0.0, "kl": 5e-4, "latent": 0.03}  # Huginn's (Geiping et al.)


@dataclass
class DepthGeneration:
    tokens: list[int]  # generated (prompt excluded)
    steps: list[int]  # recurrences per generated token
    prompt_steps: int  # recurrences of the prompt's prefill
    kv_bytes: int  # the cache's size at the end


@dataclass
class _KV:
    k: list[Tensor] = field(default_factory=list)  # per layer [1, H, max_len, D]
    v: list[Tensor] = field(default_factory=list)

    @property
    def layers(self) -> list[tuple[Tensor, Tensor]]:
        return list(zip(self.k, self.v, strict=True))


class DepthDecoder:
    def __init__(self, model: RecurrentDepthGPT, max_len: int, cache: str = "shared",
                 max_steps: int | None = None, seed: int = 0) -> None:
        if cache not in ("shared", "full"):
            raise ValueError(f"cache {cache!r} must be 'shared' or 'full'")
        c = model.config
        if not 1 <= max_len <= c.seq_len:
            raise ValueError(f"max_len ({max_len}) must be in [1, seq_len ({c.seq_len})]")
        self.model, self.max_len, self.mode = model.eval(), max_len, cache
        self.max_steps = max_steps or c.mean_recurrence
        self.seed = seed
        p = next(model.parameters())
        self._new = lambda: torch.zeros(1, c.n_head, max_len, c.head_dim, dtype=p.dtype,
                                        device=p.device)
        self.prelude = self._layers(c.n_prelude)
        self.coda = self._layers(c.n_coda)
        self.core: dict[int, _KV] = {}  # recurrence index (0 when shared) -> layers
        self.length = 0
        self.readouts = 0  # coda + LM-head passes so far, one per position read out

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

    def _readout(self, s: Tensor, t: int) -> Tensor:
        """Logits [T, V] of core outputs s [1, T, h] at positions t..t+T-1 (counted in
        `readouts`: the kl rule reads out after every iteration, which costs compute)."""
        self.readouts += s.size(1)
        return self.model.readout(s, self.coda.layers, t)[0].float()

    def _embed(self, tokens: list[int], t: int) -> tuple[Tensor, Tensor]:
        """Prelude output e and the initial states s_0 of positions t..t+T-1. The state of
        a position is a function of (seed, position), so plain and speculative decoding
        start every token from the same s_0."""
        m = self.model
        x = m.embed_input(torch.tensor([tokens], device=m.cos.device), self.prelude.layers, t)
        states = [m.initial_state(x[:, :1], torch.Generator().manual_seed(
            self.seed * 1_000_003 + t + i)) for i in range(len(tokens))]
        return x, torch.cat(states, dim=1)

    def _check_room(self, n: int) -> None:
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache full ({self.max_len} positions)")

    @torch.no_grad()
    def feed(self, tokens: list[int], steps: int) -> Tensor:
        """Feed several tokens at once (a prefill) with a fixed recurrence count and no
        exit: logits [T, V], one per position. The block runs in parallel: at iteration i
        its tokens read each other's iteration i, as in training. Earlier tokens are read
        as the cache holds them: iteration i (full) or their last iteration (shared,
        Huginn's prefill into a shared cache; the block then keeps its last iteration's
        KV too)."""
        self._check_room(len(tokens))
        m, t = self.model, self.length
        e, s = self._embed(tokens, t)
        for i in range(steps):
            s = m.core_step(s, e, self._core(i).layers, t)
        self.length += len(tokens)
        return self._readout(s, t)

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (their slots are overwritten later)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"length {length} not in [0, {self.length}]")
        self.length = length

    @torch.no_grad()
    def step(self, token: int, rule: str = "none", threshold: float | None = None,
             steps: int | None = None) -> tuple[Tensor, int]:
        """Feed one token at the next position: (next-token logits [V], recurrences run)."""
        if rule not in EXIT_RULES:
            raise ValueError(f"exit rule {rule!r} must be one of {', '.join(EXIT_RULES)}")
        if rule != "none" and self.mode == "full":
            raise ValueError("adaptive exit needs the shared cache (cache='shared')")
        self._check_room(1)
        thr = DEFAULT_THRESHOLD[rule] if threshold is None else threshold
        m, t = self.model, self.length
        e, s = self._embed([token], t)
        logp_prev: Tensor | None = None
        logits: Tensor | None = None
        n = 0
        for i in range(steps or self.max_steps):
            s_prev, s, n = s, m.core_step(s, e, self._core(i).layers, t), i + 1
            if rule == "kl":
                logits = self._readout(s, t)[0]
                logp = torch.log_softmax(logits, -1)
                if logp_prev is not None and \
                        float((logp_prev.exp() * (logp_prev - logp)).sum()) < thr:
                    break
                logp_prev = logp
            elif rule == "latent" and i > 0 and \
                    float((s - s_prev).norm() / s.norm().clamp_min(1e-12)) < thr:
                break
        if logits is None or rule != "kl":
            logits = self._readout(s, t)[0]
        self.length += 1
        return logits, n


@torch.no_grad()
def generate(model: RecurrentDepthGPT, prompt: list[int], max_new_tokens: int, *,
             steps: int | None = None, rule: str = "none", threshold: float | None = None,
             cache: str = "shared", temperature: float = 0.0, eos_id: int | None = None,
             seed: int = 0) -> DepthGeneration:
    """Decode after `prompt` (greedy at temperature 0). All prompt tokens but the last
    are one prefill (`feed`) at `steps` recurrences; the last one, whose forward gives
    the first new token, and every generated one are decoding steps that exit by
    `rule` (as Huginn generates)."""
    if not prompt:
        raise ValueError("empty prompt")
    dec = DepthDecoder(model, min(model.config.seq_len, len(prompt) + max_new_tokens),
                       cache, steps, seed)
    g = torch.Generator(device=model.cos.device).manual_seed(seed)
    prompt_steps = dec.max_steps
    if len(prompt) > 1:
        dec.feed(prompt[:-1], prompt_steps)
    logits, current = dec.step(prompt[-1], rule, threshold)
    out: list[int] = []
    per_token: list[int] = []  # recurrences behind the distribution each token came from
    for i in range(max_new_tokens):
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))
        out.append(nxt)
        per_token.append(current)
        if i == max_new_tokens - 1 or nxt == eos_id or dec.length >= dec.max_len:
            break
        logits, current = dec.step(nxt, rule, threshold)
    return DepthGeneration(out, per_token, prompt_steps, dec.kv_bytes)


@dataclass
class SpeculativeGeneration:
    tokens: list[int]
    drafted: int  # draft tokens proposed
    accepted: int  # of which the verifier agreed with
    rounds: int  # draft-then-verify rounds
    kv_bytes: int

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@torch.no_grad()
def generate_speculative(model: RecurrentDepthGPT, prompt: list[int], max_new_tokens: int, *,
                         draft_steps: int, verify_steps: int, lookahead: int = 4,
                         eos_id: int | None = None, seed: int = 0) -> SpeculativeGeneration:
    """Greedy self-speculative decoding: the same model drafts `lookahead` tokens with
    `draft_steps` recurrences, then verifies them in one parallel pass with
    `verify_steps`; the longest agreeing prefix is kept, plus the verifier's own token
    at the first disagreement. Full cache: iteration i of any token does not depend on
    how many iterations later ones run, so the draft reads the verified tokens' first
    draft_steps iterations, and the output equals plain greedy decoding at verify_steps
    (`generate(..., steps=verify_steps, cache="full")`)."""
    if not 1 <= draft_steps < verify_steps:
        raise ValueError(f"need 1 <= draft_steps ({draft_steps}) < verify_steps ({verify_steps})")
    if lookahead < 1 or max_new_tokens < 1 or not prompt:
        raise ValueError("need lookahead >= 1, max_new_tokens >= 1 and a prompt")
    size = min(model.config.seq_len, len(prompt) + max_new_tokens + lookahead)
    dec = DepthDecoder(model, size, "full", verify_steps, seed)
    pending = int(dec.feed(prompt, verify_steps)[-1].argmax())  # emitted, not yet fed
    out, drafted, accepted, rounds = [pending], 0, 0, 0
    while len(out) < max_new_tokens and pending != eos_id and dec.length < dec.max_len:
        start = dec.length
        k = min(lookahead, max_new_tokens - len(out), dec.max_len - start)
        drafts, tok = [], pending
        for _ in range(k):
            tok = int(dec.step(tok, steps=draft_steps)[0].argmax())
            drafts.append(tok)
            if tok == eos_id:
                break
        dec.truncate(start)
        verdict = dec.feed([pending, *drafts[:-1]], verify_steps).argmax(-1).tolist()
        a = 0
        while a < len(drafts) and verdict[a] == drafts[a]:
            a += 1
        rounds, drafted, accepted = rounds + 1, drafted + len(drafts), accepted + a
        new = drafts[:a]
        if a < len(drafts):
            new.append(verdict[a])  # the verifier's token where the draft went wrong
            dec.truncate(start + a + 1)
        out.extend(new)
        pending = new[-1]
    out = out[:max_new_tokens]
    if eos_id is not None and eos_id in out:
        out = out[:out.index(eos_id) + 1]
    return SpeculativeGeneration(out, drafted, accepted, rounds, dec.kv_bytes)

"""A recurrent-depth transformer, compatible with Huginn-0125 (Geiping et al., 2025).

    e     = prelude(embed(ids) * sqrt(h))          the input, once
    s_0   ~ TruncNormal(0, std, +-3 std) * sqrt(h)  a random initial state
    s_i+1 = core(adapter([s_i, e]))                 r times: adapter is Linear 2h -> h
    out   = lm_head(norm_f(coda(norm_f(s_r))))      norm_f used twice, as in Huginn

Every block is a "sandwich": x = n2(x + attn(n1(x))); x = n4(x + mlp(n3(x))), four
RMSNorms (computed in fp32, cast, then scaled). Attention has learned q and k biases
(added before RoPE), no other bias; the MLP is SwiGLU.

Huginn rotates interleaved pairs (x[2i], x[2i+1]); this model uses the rotate-half
RoPE of models/gpt.py. The two agree once the q and k rows of each head are permuted
(even dims first, then odd ones), which `from_huginn_state` does on load: q.k is
invariant under a permutation applied to both.

Training (`forward(idx, steps=None)` in train mode) samples the recurrence count from
Huginn's log-normal Poisson (`sample_recurrence`) and backpropagates only through the
last `backprop_depth` iterations (the earlier ones run under no_grad).

Max attention logits (`track_max_logits=True`, for QK-Clip and the attention map) are
one row per distinct layer, prelude then core then coda: a core layer's row is the max
over every iteration of the forward, with or without gradient (its weights are shared
by all of them, so clipping that row bounds every iteration).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.models.config import RecurrentDepthConfig
from workbench.models.gpt import apply_rope, chunked_max_logits, rope_cache

# Huginn config.json field -> ours
HUGINN_FIELDS = {
    "padded_vocab_size": "vocab_size", "block_size": "seq_len", "n_embd": "d_model",
    "n_heads": "n_head", "n_layers_in_prelude": "n_prelude",
    "n_layers_in_recurrent_block": "n_core", "n_layers_in_coda": "n_coda",
    "mean_recurrence": "mean_recurrence", "mean_backprop_depth": "backprop_depth",
    "intermediate_size": "ffn_hidden", "rope_base": "rope_theta", "norm_eps": "norm_eps",
    "qk_bias": "qk_bias", "bias": "adapter_bias", "tie_embeddings": "tie_embeddings",
}


KVSlot = tuple[Tensor, Tensor, int]  # a layer's key and value cache, and the start position
Layers = list[tuple[Tensor, Tensor]]  # (k, v) cache per layer of a stage


class RMSNorm(nn.Module):
    """Huginn's RMSNorm: normalize in fp32, cast back, then scale (weight, not 1 + w)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * \
            self.weight


class Attention(nn.Module):
    def __init__(self, c: RecurrentDepthConfig):
        super().__init__()
        self.n_head, self.head_dim = c.n_head, c.head_dim
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.o_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        if c.qk_bias:
            self.q_bias = nn.Parameter(torch.zeros(c.n_head, c.head_dim))
            self.k_bias = nn.Parameter(torch.zeros(c.n_head, c.head_dim))
        else:
            self.q_bias = self.k_bias = None
        self.max_logits: Tensor | None = None  # [H], running max while tracking (else None)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVSlot | None = None,
                ) -> Tensor:
        """x [B, T, h] at the positions of cos/sin [T, D]. With `cache` (k, v [B, H, L, D],
        start t): write this block's keys and values at t..t+T-1 and attend over 0..t+T-1
        (every earlier position, causal within the block)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_head, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_head, self.head_dim)
        if self.q_bias is not None:
            q, k = q + self.q_bias, k + self.k_bias
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if self.max_logits is not None:
                self.max_logits = torch.maximum(self.max_logits, chunked_max_logits(q, k))
        else:
            k_cache, v_cache, t = cache
            k_cache[:, :, t:t + T], v_cache[:, :, t:t + T] = k, v
            mask = None
            if T > 1:
                mask = torch.arange(t + T, device=x.device) <= \
                    torch.arange(t, t + T, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k_cache[:, :, :t + T], v_cache[:, :, :t + T],
                                               attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, c: RecurrentDepthConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.d_model, c.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(c.d_model, c.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(c.ffn_hidden, c.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SandwichBlock(nn.Module):
    def __init__(self, c: RecurrentDepthConfig):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(c.d_model, c.norm_eps), RMSNorm(c.d_model, c.norm_eps)
        self.norm3, self.norm4 = RMSNorm(c.d_model, c.norm_eps), RMSNorm(c.d_model, c.norm_eps)
        self.attn, self.mlp = Attention(c), MLP(c)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVSlot | None = None,
                ) -> Tensor:
        x = self.norm2(x + self.attn(self.norm1(x), cos, sin, cache))
        return self.norm4(x + self.mlp(self.norm3(x)))


@dataclass
class RDOutput:
    logits: Tensor  # [B, T, vocab]
    loss: Tensor | None
    state: Tensor  # the last core output [B, T, h] (before norm_f)
    steps: int  # recurrences run
    grad_steps: int  # of which with gradient
    max_logits: Tensor | None = None  # [layers, n_head] when tracked (module docstring)


def sample_recurrence(mean: int, backprop: int, generator: torch.Generator | None = None,
                      sigma: float = 0.5) -> tuple[int, int]:
    """Huginn's training draw: (no-grad steps, grad steps) summing to p = Poisson(rate) + 1,
    rate ~ LogNormal(ln(mean) - sigma^2 / 2, sigma) (so E[rate] = mean); the gradient flows
    through the last min(backprop, p) of them."""
    mu = math.log(mean) - sigma * sigma / 2
    rate = math.exp(mu + sigma * float(torch.randn((), generator=generator)))
    p = int(torch.poisson(torch.tensor(rate), generator=generator)) + 1
    return max(p - backprop, 0), min(backprop, p)


def expected_recurrence(mean: int, backprop: int, sigma: float = 0.5,
                        nodes: int = 64) -> tuple[float, float]:
    """(E[total steps], E[gradient steps]) of `sample_recurrence`'s draw p = Poisson(rate)
    + 1: mean + 1, and E[min(backprop, p)] = sum over j < backprop of P(Poisson(rate) >= j),
    averaged over the log-normal rate by Gauss-Hermite quadrature (the sum has no closed
    form; 64 nodes are exact to float precision for sigma up to about 1)."""
    mu = math.log(mean) - sigma * sigma / 2
    xs, ws = np.polynomial.hermite_e.hermegauss(nodes)  # weight exp(-x^2 / 2)
    grad = 0.0
    for x, w in zip(xs, ws / math.sqrt(2 * math.pi), strict=True):
        rate = math.exp(mu + sigma * float(x))
        below = term = math.exp(-rate)  # P(N <= j) and P(N = j), from j = 0
        at_least = 1.0  # P(N >= j)
        for j in range(backprop):
            grad += float(w) * at_least
            at_least = 1.0 - below
            term *= rate / (j + 1)
            below += term
    return mean + 1.0, grad


def _matmul_params(blocks: nn.Module) -> int:
    """Weights that take part in a matrix multiply (2-D): not norms or biases."""
    return sum(p.numel() for p in blocks.parameters() if p.dim() >= 2)


class RecurrentDepthGPT(nn.Module):
    def __init__(self, config: RecurrentDepthConfig):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.prelude = nn.ModuleList(SandwichBlock(c) for _ in range(c.n_prelude))
        self.adapter = nn.Linear(2 * c.d_model, c.d_model, bias=c.adapter_bias)
        self.core = nn.ModuleList(SandwichBlock(c) for _ in range(c.n_core))
        self.coda = nn.ModuleList(SandwichBlock(c) for _ in range(c.n_coda))
        self.norm_f = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_cache(c.seq_len, c.head_dim, c.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # Huginn's init: truncated normal (+-3 std) with std sqrt(2 / 5h); output
        # projections scaled by 1 / sqrt(2 * expected depth).
        std = c.init_std
        out_std = std / math.sqrt(2 * (c.n_prelude + c.n_coda + c.n_core * c.mean_recurrence))
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            s = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            nn.init.trunc_normal_(p, std=s, a=-3 * s, b=3 * s)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def attn_layers(self) -> list[Attention]:
        """Every distinct attention module, in the row order of `max_logits`."""
        return [b.attn for blocks in (self.prelude, self.core, self.coda) for b in blocks]

    def flops_per_token(self) -> int:
        """Training FLOPs per token, averaged over the recurrence draws training makes:
        `training_flops` at the draw's expected total and gradient steps
        (`expected_recurrence`). The formula is linear in both, so this is the exact mean
        over draws; the mean recurrence itself undercounts by one step (the draw is
        Poisson(rate) + 1)."""
        c = self.config
        return round(self.training_flops(*expected_recurrence(c.mean_recurrence,
                                                              c.backprop_depth)))

    def training_flops(self, steps: float, grad_steps: float) -> float:
        """Training FLOPs per token of one forward and backward with `steps` core
        iterations, `grad_steps` of them with gradient: 2 per weight per use forward, 4 more
        backward where the gradient flows (prelude, coda, head and the gradient steps),
        plus the attention term of models/gpt.py (12 * layers * d_model * seq_len)."""
        c = self.config
        core = sum(p.numel() for p in self.core.parameters()) + self.adapter.weight.numel()
        rest = sum(p.numel() for blocks in (self.prelude, self.coda) for p in blocks.parameters())
        rest += self.lm_head.weight.numel()
        layers = c.n_prelude + c.n_coda + c.n_core * steps
        return 6 * rest + (2 * steps + 4 * grad_steps) * core + \
            12 * layers * c.d_model * c.seq_len

    def decode_flops(self, context: int, steps: int, readouts: int = 1) -> int:
        """Forward FLOPs of decoding one token that attends over `context` positions
        (itself included) with `steps` core iterations and `readouts` coda + LM-head
        passes (the kl exit rule reads out after every iteration; a fixed count once).

        The model, for comparing decoding strategies (engine/depth.py): 2 FLOPs per
        weight of a matrix multiply (embedding lookup, norms, biases, RoPE, softmax and
        the exit test are left out: O(d_model) or O(vocab) per token against O(d_model^2)),
        and per attention layer 4 * d_model * context (scores q.k and the weighted sum
        of v over the cached positions). The prelude runs once, the adapter and core
        layers once per iteration, the coda and LM head once per readout."""
        c = self.config
        attn = 4 * c.d_model * context
        prelude = 2 * _matmul_params(self.prelude) + c.n_prelude * attn
        core = 2 * (_matmul_params(self.core) + self.adapter.weight.numel()) + c.n_core * attn
        readout = 2 * (_matmul_params(self.coda) + self.lm_head.weight.numel()) + \
            c.n_coda * attn
        return prelude + steps * core + readouts * readout

    def initial_state(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """s_0 shaped like `like`. Drawn on the generator's device (a CPU generator
        gives the same numbers whatever device the model is on), then moved."""
        c = self.config
        std = c.init_std * c.state_scale
        where = like.device if generator is None else generator.device
        s = torch.empty(like.shape, dtype=like.dtype, device=where)
        if std <= 0:
            return s.zero_().to(like.device)
        s.normal_(0.0, std, generator=generator)
        return (s.clamp_(-3 * std, 3 * std) * c.embed_scale).to(like.device)

    # Each stage takes optional per-layer caches [(k, v)] and the start position t of its
    # tokens: the decoder (engine/depth.py) runs the same code one position at a time.

    def _blocks(self, blocks: nn.ModuleList, x: Tensor, caches: Layers | None, t: int,
                ) -> Tensor:
        T = x.size(1)
        cos, sin = self.cos[t:t + T], self.sin[t:t + T]
        for j, block in enumerate(blocks):
            x = block(x, cos, sin, None if caches is None else (*caches[j], t))
        return x

    def embed_input(self, idx: Tensor, caches: Layers | None = None, t: int = 0) -> Tensor:
        if t + idx.size(1) > self.config.seq_len:
            raise ValueError(f"sequence length {t + idx.size(1)} exceeds seq_len "
                             f"({self.config.seq_len})")
        return self._blocks(self.prelude, self.embed(idx) * self.config.embed_scale, caches, t)

    def core_step(self, state: Tensor, e: Tensor, caches: Layers | None = None, t: int = 0,
                  ) -> Tensor:
        return self._blocks(self.core, self.adapter(torch.cat([state, e], dim=-1)), caches, t)

    def readout(self, state: Tensor, caches: Layers | None = None, t: int = 0) -> Tensor:
        """Logits from a core output: norm_f, coda, norm_f (again), lm_head."""
        return self.lm_head(self.norm_f(self._blocks(self.coda, self.norm_f(state), caches, t)))

    def forward(self, idx: Tensor, targets: Tensor | None = None, steps: int | None = None,
                state: Tensor | None = None, generator: torch.Generator | None = None,
                track_max_logits: bool = False) -> RDOutput:
        """steps None: in train mode a `sample_recurrence` draw, in eval mode
        mean_recurrence. An explicit `steps` runs them all with gradient in train mode
        only through the last backprop_depth. `state` overrides the random s_0.
        targets [B, T] (-100 = ignore) give the mean cross-entropy."""
        attns = self.attn_layers()
        for a in attns:
            a.max_logits = torch.full((a.n_head,), float("-inf"), device=idx.device) \
                if track_max_logits else None
        try:
            out = self._forward(idx, targets, steps, state, generator)
        finally:
            maxes = [a.max_logits for a in attns]
            for a in attns:
                a.max_logits = None
        if track_max_logits:
            out.max_logits = torch.stack(maxes)  # type: ignore[arg-type]
        return out

    def _forward(self, idx: Tensor, targets: Tensor | None, steps: int | None,
                 state: Tensor | None, generator: torch.Generator | None) -> RDOutput:
        c = self.config
        if steps is None and self.training:
            no_grad, with_grad = sample_recurrence(c.mean_recurrence, c.backprop_depth, generator)
        else:
            total = c.mean_recurrence if steps is None else steps
            with_grad = min(total, c.backprop_depth) if self.training else total
            no_grad = total - with_grad
        e = self.embed_input(idx)
        s = self.initial_state(e, generator) if state is None else state
        with torch.no_grad():
            for _ in range(no_grad):
                s = self.core_step(s, e)
        for _ in range(with_grad):
            s = self.core_step(s, e)
        logits = self.readout(s)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return RDOutput(logits, loss, s, no_grad + with_grad, with_grad)


# ----------------------------------------------------------------------------- Huginn


def config_from_huginn(cfg: dict[str, Any]) -> RecurrentDepthConfig:
    """Our config from a Huginn config.json (model_type "huginn_raven")."""
    if cfg.get("model_type") != "huginn_raven":
        raise ValueError(f"model_type {cfg.get('model_type')!r} is not 'huginn_raven'")
    ours = {name: cfg[key] for key, name in HUGINN_FIELDS.items() if key in cfg}
    if "vocab_size" not in ours and "vocab_size" in cfg:
        ours["vocab_size"] = cfg["vocab_size"]
    known = {f.name for f in fields(RecurrentDepthConfig)}
    return RecurrentDepthConfig(**{k: v for k, v in ours.items() if k in known})


def _interleaved_to_half(w: Tensor, n_head: int) -> Tensor:
    """Reorder each head's dims (the first axis, [H*D, ...]) from interleaved pairs to
    rotate-half order: even dims first, then odd ones."""
    v = w.reshape(n_head, -1, *w.shape[1:])  # [H, D, ...]
    return torch.cat([v[:, 0::2], v[:, 1::2]], dim=1).reshape(w.shape)


def from_huginn_state(state: dict[str, Tensor], config: RecurrentDepthConfig,
                      ) -> dict[str, Tensor]:
    """Huginn checkpoint names and layout -> this model's state_dict (see module doc)."""
    c, h = config, config.d_model
    out: dict[str, Tensor] = {}
    parts = {"prelude": "prelude", "core_block": "core", "coda": "coda"}
    norms = {f"norm_{i}.weight": f"norm{i}.weight" for i in range(1, 5)}
    for key, t in state.items():
        if key.endswith("freqs_cis"):
            continue  # recomputed
        if key == "transformer.wte.weight":
            out["embed.weight"] = t
        elif key == "lm_head.weight":
            out["lm_head.weight"] = t
        elif key == "transformer.ln_f.weight":
            out["norm_f.weight"] = t
        elif key.startswith("transformer.adapter."):
            out["adapter." + key.rsplit(".", 1)[1]] = t
        else:
            _, part, idx, rest = key.split(".", 3)
            if part not in parts:
                raise KeyError(f"unexpected Huginn key {key!r}")
            pre = f"{parts[part]}.{idx}."
            if rest in norms:
                out[pre + norms[rest]] = t
            elif rest == "attn.Wqkv.weight":
                q, k, v = t.split(h, dim=0)
                out[pre + "attn.q_proj.weight"] = _interleaved_to_half(q, c.n_head)
                out[pre + "attn.k_proj.weight"] = _interleaved_to_half(k, c.n_head)
                out[pre + "attn.v_proj.weight"] = v
            elif rest == "attn.qk_bias":
                qb, kb = t.reshape(2, c.n_head * c.head_dim)
                out[pre + "attn.q_bias"] = _interleaved_to_half(qb, c.n_head).view(
                    c.n_head, c.head_dim)
                out[pre + "attn.k_bias"] = _interleaved_to_half(kb, c.n_head).view(
                    c.n_head, c.head_dim)
            elif rest == "attn.proj.weight":
                out[pre + "attn.o_proj.weight"] = t
            elif rest == "mlp.fc.weight":
                gate, up = t.chunk(2, dim=0)
                out[pre + "mlp.gate_proj.weight"] = gate
                out[pre + "mlp.up_proj.weight"] = up
            elif rest == "mlp.proj.weight":
                out[pre + "mlp.down_proj.weight"] = t
            else:
                raise KeyError(f"unexpected Huginn key {key!r}")
    if c.tie_embeddings:
        out.setdefault("lm_head.weight", out["embed.weight"])
    return out


def load_huginn(folder: str | Path) -> RecurrentDepthGPT:
    """A Huginn-format checkpoint folder (config.json + *.safetensors) as our model."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = config_from_huginn(json.loads((folder / "config.json").read_text()))
    state: dict[str, Tensor] = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    for f in files:
        state.update(load_file(str(f)))
    model = RecurrentDepthGPT(config)
    model.load_state_dict(from_huginn_state(state, config), strict=True)
    return model.eval()

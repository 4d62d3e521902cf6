"""A small decoder-only GPT that reports its per-head max attention logit.

Read top to bottom, nanoGPT style: config, RoPE, attention, MLP, block, model.

- RMSNorm (torch.nn.RMSNorm), pre-norm blocks, RoPE (rotate-half convention),
  SwiGLU MLP, multi-head or grouped-query attention, tied or untied embeddings.
- The same module is a Llama-family Hugging Face model when its config says so
  (models/hf.py loads and exports them): q/k/v biases (Qwen2), a per-head RMSNorm on
  q and k before RoPE (Qwen3's QK-norm), Llama 3's RoPE scaling, a head_dim apart from
  d_model / n_head, and an explicit MLP width.
- ``GPT.forward(idx, targets, track_max_logits=True)`` also returns ``max_logits``,
  a float32 [n_layer, n_head] tensor: for each layer and query head h, the largest
  pre-softmax score q_i . k_j / sqrt(head_dim) over all batch rows and all causally
  visible pairs (j <= i). It is the signed max, not max |.|: the value softmax sees
  and the one flex_attention's ``max_scores`` returns. QK-Clip (MuonClip, Kimi K2)
  compares it with tau and rescales the q_proj / k_proj rows of that head.

Parameter layout (QK-Clip relies on it): ``blocks[l].attn.q_proj.weight`` rows
``[h*head_dim:(h+1)*head_dim]`` belong to query head h; ``k_proj`` / ``v_proj`` rows
likewise per kv head; query head h reads kv head ``h // (n_head // n_kv_head)``.

Attention backends (``GPTConfig.attn_backend``):

- "flex": torch.nn.attention.flex_attention with a causal BlockMask (built once per
  (T, device) and cached). On CUDA it is torch.compile'd (lazily, once per process)
  into a fused kernel that never materializes the T x T matrix; with tracking it
  passes ``return_aux=AuxRequest(max_scores=True)`` and reduces the [B, H, T] row
  maxima (already scaled) with an amax over B and T: the max is nearly free.
  On CPU flex runs eagerly (unfused, forward only): torch 2.13 has no flex backward
  on CPU (NotImplementedError) and refuses ``max_scores`` on CPU, so there the max
  comes from the chunked computation described under "sdpa". Never train with flex
  on CPU.
- "sdpa": F.scaled_dot_product_attention(is_causal=True, enable_gqa=...) for the
  output. With tracking, the max is computed alongside under torch.no_grad() from q
  and k, 128 query rows at a time (causal mask, amax): memory O(B*H*128*T), cost one
  extra Q.K^T matmul in the forward pass only, no effect on gradients.
- "naive": softmax(Q K^T / sqrt(d) + causal mask) V with the T x T scores
  materialized (O(B*H*T^2) memory). The reference; tests compare against it.
- "triton": the Triton flash-attention kernel of ``workbench.kernels.attention``
  (forward and backward); its online softmax already keeps the row max, so the
  max logit is free. CUDA only: a CPU forward refuses it.
- "auto": flex on CUDA, sdpa elsewhere (never triton: select it explicitly).

KV-cache decoding (generation engines, workbench/engine/): ``KVCache`` holds per layer
k / v tensors [slots, n_kv_head, max_len, head_dim] and per-slot lengths;
``GPT.forward_cached(idx, cache, slots)`` appends idx [B, T] to the given slots, each at
its own position (RoPE and the attention mask per slot), and returns the logits. Slots of
different lengths share one batched forward: keys past a slot's length are masked out.
It goes through sdpa with an explicit mask whatever ``attn_backend`` says, forward only;
the training forward above is untouched.

The model knows nothing of optimizers or distributed training.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import (
    AuxRequest,
    BlockMask,
    create_block_mask,
    flex_attention,
)

from workbench.kernels.attention import attention as triton_attention
from workbench.models.config import GPTConfig

MAX_LOGIT_CHUNK = 128  # query rows per chunk when the sdpa path computes the max alongside


@dataclass
class GPTOutput:
    logits: Tensor | None  # [B, T, vocab_size]; None when only the hidden states were asked
    loss: Tensor | None = None  # mean cross-entropy when targets were given
    max_logits: Tensor | None = None  # [n_layer, n_head] float32, detached, when tracked
    hidden: Tensor | None = None  # [B, T, d_model] final-norm states, with return_hidden


# ----------------------------------------------------------------------------- RoPE


def rope_cache(seq_len: int, head_dim: int, theta: float,
               scaling: dict | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin, each [seq_len, head_dim], float32, for the rotate-half convention.

    ``scaling`` of type "llama3" (Llama 3.1+) rescales the frequencies as Meta does."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        inv_freq = llama3_inv_freq(inv_freq, scaling)
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def llama3_inv_freq(inv_freq: Tensor, scaling: dict) -> Tensor:
    """Llama 3's long-context RoPE: wavelengths longer than the original context / low
    factor are slowed by ``factor``, shorter than context / high factor kept, and the
    band between interpolated smoothly."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    between = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(between, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, H, T, D] by position; cos/sin [T, D]. Computed in fp32, cast back."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).type_as(x)


# ----------------------------------------------------------------------------- attention


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


@functools.cache
def _causal_block_mask(T: int, device: torch.device) -> BlockMask:
    return create_block_mask(_causal, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def _flex(q: Tensor, k: Tensor, v: Tensor, **kwargs):
    fn = _compiled_flex() if q.device.type == "cuda" else flex_attention
    return fn(q, k, v, **kwargs)


def reduce_max_scores(max_scores: Tensor) -> Tensor:
    """flex_attention's aux.max_scores [B, H, T] (already scaled) -> [H] float32 max."""
    return max_scores.detach().amax(dim=(0, 2)).float()


@torch.no_grad()
def chunked_max_logits(q: Tensor, k: Tensor, chunk: int = MAX_LOGIT_CHUNK) -> Tensor:
    """Causal max of q.k/sqrt(d) per query head, [H] float32, `chunk` query rows at a time.

    q: [B, H, T, D]; k: [B, Hkv, T, D]. Query head h = g_kv * G + g reads kv head g_kv,
    G = H // Hkv, so q is viewed as [B, Hkv, G, T, D] and k broadcast over G (no copy).
    """
    B, H, T, D = q.shape
    Hkv = k.size(1)
    qg = q.view(B, Hkv, H // Hkv, T, D)
    kt = k.unsqueeze(2).transpose(-1, -2)  # [B, Hkv, 1, D, T]
    scale = 1.0 / math.sqrt(D)
    best = torch.full((Hkv, H // Hkv), float("-inf"), device=q.device, dtype=torch.float32)
    for i0 in range(0, T, chunk):
        i1 = min(i0 + chunk, T)
        s = (qg[..., i0:i1, :] @ kt[..., :i1]).float() * scale  # [B, Hkv, G, i1-i0, i1]
        rows = torch.arange(i0, i1, device=q.device).unsqueeze(1)
        cols = torch.arange(i1, device=q.device).unsqueeze(0)
        s = s.masked_fill(cols > rows, float("-inf"))
        best = torch.maximum(best, s.amax(dim=(0, 3, 4)))
    return best.view(H)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.head_dim
        self.backend = config.attn_backend
        d, hd, bias = config.d_model, config.head_dim, config.qkv_bias
        self.q_proj = nn.Linear(d, self.n_head * hd, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_head * hd, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_head * hd, bias=bias)
        self.o_proj = nn.Linear(self.n_head * hd, d, bias=config.o_bias)
        # QK-norm (Qwen3): one RMSNorm over head_dim, shared by every head of the layer.
        self.q_norm = nn.RMSNorm(hd, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(hd, eps=config.norm_eps) if config.qk_norm else None
        cos, sin = rope_cache(config.seq_len, hd, config.rope_theta, config.rope_scaling)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, d_model] -> q [B, H, T, D], k and v [B, Hkv, T, D]: projections (with
        their biases), QK-norm, then RoPE. The logits q.k are exactly the model's."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: Tensor, track_max_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        """x [B, T, d_model] -> (y [B, T, d_model], max logit per head [n_head] or None)."""
        B, T, _ = x.shape
        q, k, v = self.project(x, self.cos[:T], self.sin[:T])
        gqa = self.n_kv_head != self.n_head

        backend = self.backend
        if backend == "auto":
            backend = "flex" if x.device.type == "cuda" else "sdpa"

        max_logits = None
        if backend == "flex":
            mask = _causal_block_mask(T, x.device)
            if track_max_logits and x.device.type not in ("cpu", "mps"):
                y, aux = _flex(
                    q, k, v, block_mask=mask, enable_gqa=gqa,
                    return_aux=AuxRequest(max_scores=True),
                )  # fmt: skip
                max_logits = reduce_max_scores(aux.max_scores)
            else:
                y = _flex(q, k, v, block_mask=mask, enable_gqa=gqa)
                if track_max_logits:  # torch refuses max_scores on CPU/MPS
                    max_logits = chunked_max_logits(q, k)
        elif backend == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            if track_max_logits:
                max_logits = chunked_max_logits(q, k)
        elif backend == "triton":
            if x.device.type != "cuda":
                raise RuntimeError('attn_backend "triton" needs a CUDA device; '
                                   'use "auto" or "sdpa" on CPU')
            y, per_batch = triton_attention(q, k, v, backend="triton")  # [B, H] max logits
            if track_max_logits:
                max_logits = per_batch.amax(dim=0)
        else:  # naive
            if gqa:
                groups = self.n_head // self.n_kv_head
                k = k.repeat_interleave(groups, dim=1)
                v = v.repeat_interleave(groups, dim=1)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~causal, float("-inf"))
            if track_max_logits:
                max_logits = att.detach().amax(dim=(0, 2, 3)).float()
            y = F.softmax(att.float(), dim=-1).type_as(v) @ v

        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.o_proj(y), max_logits

    def forward_cached(self, x: Tensor, k_cache: Tensor, v_cache: Tensor,
                       ctx: CachedStep) -> Tensor:
        """Attend x [B, T, d_model] at positions ctx.pos [B, T] of cache rows ctx.rows [B].

        The new keys / values are written into the cache first, then each query i of
        row b sees the cached keys j <= pos[b, i]: older keys of its own slot and the
        earlier tokens of x, never another slot's nor a stale tail past its length.
        """
        B, T, _ = x.shape
        q, k, v = self.project(x, ctx.cos, ctx.sin)
        # Advanced indices split by a slice put their dims first: [B, T, Hkv, D].
        k_cache[ctx.rows_col, :, ctx.pos] = k.transpose(1, 2).to(k_cache.dtype)
        v_cache[ctx.rows_col, :, ctx.pos] = v.transpose(1, 2).to(v_cache.dtype)
        if ctx.contiguous:  # rows == 0..B-1: read the cache as a view, no gather
            keys, values = k_cache[:B, :, :ctx.kv_len], v_cache[:B, :, :ctx.kv_len]
        else:
            keys, values = k_cache[ctx.rows, :, :ctx.kv_len], v_cache[ctx.rows, :, :ctx.kv_len]
        if keys.dtype != q.dtype:  # a cache kept in another dtype than the model's
            keys, values = keys.to(q.dtype), values.to(q.dtype)
        y = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=ctx.mask,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.o_proj(y)


# ----------------------------------------------------------------------------- MLP, block


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.ffn_hidden
        self.gate_proj = nn.Linear(config.d_model, hidden, bias=False)
        self.up_proj = nn.Linear(config.d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, track_max_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        a, max_logits = self.attn(self.norm1(x), track_max_logits)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return x, max_logits

    def forward_cached(self, x: Tensor, k_cache: Tensor, v_cache: Tensor,
                       ctx: CachedStep) -> Tensor:
        x = x + self.attn.forward_cached(self.norm1(x), k_cache, v_cache, ctx)
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------- KV cache


@dataclass
class KVCache:
    """Preallocated keys and values for ``slots`` sequences of up to ``max_len`` tokens.

    Allocated once (an engine reuses a slot for the next request by resetting its
    length), so decoding never reallocates. ``lengths[s]`` = tokens held by slot s; the
    tail past it is stale and masked out, never read.
    """

    k: list[Tensor]  # per layer [slots, n_kv_head, max_len, head_dim]
    v: list[Tensor]
    lengths: Tensor  # [slots] int64, on the cache's device

    @classmethod
    def empty(cls, config: GPTConfig, slots: int, max_len: int,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> KVCache:
        if max_len > config.seq_len:
            raise ValueError(f"cache max_len ({max_len}) exceeds the model's seq_len "
                             f"({config.seq_len}): RoPE is only tabulated that far")
        shape = (slots, config.kv_heads, max_len, config.head_dim)
        return cls(
            k=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
            v=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
            lengths=torch.zeros(slots, dtype=torch.long, device=device),
        )

    @property
    def slots(self) -> int:
        return self.lengths.numel()

    @property
    def max_len(self) -> int:
        return self.k[0].size(2)


def _visible_bias(pos: Tensor, kv_len: int, dtype: torch.dtype) -> Tensor:
    """Additive attention mask [B, 1, T, kv_len], built once per call (sdpa would convert
    a boolean mask again in every layer)."""
    hidden = torch.arange(kv_len, device=pos.device) > pos.unsqueeze(-1)
    return torch.zeros(hidden.shape, dtype=dtype, device=pos.device).masked_fill_(
        hidden, float("-inf")).unsqueeze(1)


@dataclass
class CachedStep:
    """What every layer of one ``forward_cached`` shares, computed once per call."""

    rows: Tensor  # [B] cache slots
    rows_col: Tensor  # [B, 1]
    pos: Tensor  # [B, T] absolute positions
    cos: Tensor  # [B, 1, T, head_dim]
    sin: Tensor
    mask: Tensor  # [B, 1, T, kv_len] additive: 0 where key j <= pos[b, i], -inf elsewhere
    kv_len: int  # keys read per row: max position + 1
    contiguous: bool  # rows == 0..B-1


# ----------------------------------------------------------------------------- model


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

        # GPT-2 init: N(0, init_std) everywhere, residual output projections scaled
        # by 1/sqrt(2 * n_layer) so the residual stream does not grow with depth.
        std = config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for w in (block.attn.o_proj.weight, block.mlp.down_proj.weight):
                nn.init.normal_(w, mean=0.0, std=std / math.sqrt(2 * config.n_layer))

    @classmethod
    def empty(cls, config: GPTConfig, device: torch.device | str = "cpu") -> GPT:
        """A model whose weights are about to be loaded (a checkpoint, a broadcast): built
        on the meta device and allocated on ``device`` without the cost of a random init.
        The weights hold garbage until loaded; the head is tied and RoPE tabulated."""
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device=device)
        if config.tie_embeddings:  # to_empty allocates each module's tensors apart
            model.lm_head.weight = model.embed.weight
        return model.reset_rope()

    def reset_rope(self) -> GPT:
        """(Re)build the RoPE tables in float32 on the model's device: after to_empty, or
        after casting the model to a low-precision dtype (the tables stay float32)."""
        c = self.config
        cos, sin = rope_cache(c.seq_len, c.head_dim, c.rope_theta, c.rope_scaling)
        device = self.embed.weight.device
        for attn in self.attn_layers():
            attn.cos, attn.sin = cos.to(device), sin.to(device)
        return self

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, track_max_logits: bool = False,
        return_hidden: bool = False,
    ) -> GPTOutput:
        """idx [B, T] token ids (T <= seq_len); targets [B, T] (-100 = ignore) or None.

        `return_hidden`: stop before the LM head and return the final-norm states, so a
        caller can fuse the head with its loss (workbench.kernels.logprobs) instead of
        materializing [B, T, vocab] logits. It still goes through forward, so a
        DDP-wrapped model syncs as usual.
        """
        T = idx.size(1)
        if T > self.config.seq_len:
            raise ValueError(
                f"sequence length {T} exceeds seq_len ({self.config.seq_len}); "
                "raise model.seq_len or feed shorter sequences"
            )
        x = self.embed(idx)
        per_layer = []
        for block in self.blocks:
            x, m = block(x, track_max_logits)
            per_layer.append(m)
        max_logits = torch.stack(per_layer) if track_max_logits else None
        if return_hidden:
            return GPTOutput(logits=None, max_logits=max_logits, hidden=self.norm(x))
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return GPTOutput(logits=logits, loss=loss, max_logits=max_logits)

    @torch.no_grad()
    def forward_cached(self, idx: Tensor, cache: KVCache, slots: Tensor | None = None,
                       return_logits: bool = True) -> Tensor | None:
        """Append idx [B, T] to cache slots ``slots`` [B] (None = slots 0..B-1) and return
        the logits [B, T, vocab_size] (None with ``return_logits=False``, for a prefill
        whose last token is decoded later).

        Row b's tokens take positions ``cache.lengths[slots[b]] + 0..T-1`` (RoPE and mask
        per row), so slots of different lengths decode in one batch; the lengths advance
        by T. Same logits as ``forward`` on the whole sequence, up to float rounding.
        """
        B, T = idx.shape
        contiguous = slots is None
        rows = torch.arange(B, device=idx.device) if slots is None else slots
        start = cache.lengths[rows]
        pos = start.unsqueeze(1) + torch.arange(T, device=idx.device)  # [B, T]
        kv_len = int(pos.max()) + 1
        if kv_len > cache.max_len:
            raise ValueError(f"KV cache overflow: position {kv_len - 1} >= max_len "
                             f"({cache.max_len})")
        attn = self.blocks[0].attn
        ctx = CachedStep(
            rows=rows, rows_col=rows.unsqueeze(1), pos=pos,
            cos=attn.cos[pos].unsqueeze(1), sin=attn.sin[pos].unsqueeze(1),
            mask=_visible_bias(pos, kv_len, self.embed.weight.dtype),
            kv_len=kv_len, contiguous=contiguous,
        )
        x = self.embed(idx)
        for block, k_cache, v_cache in zip(self.blocks, cache.k, cache.v, strict=True):
            x = block.forward_cached(x, k_cache, v_cache, ctx)
        cache.lengths[rows] = start + T
        return self.lm_head(self.norm(x)) if return_logits else None

    @torch.no_grad()
    def attention_max_logits(self, idx: Tensor) -> Tensor:
        """Per (layer, head) max pre-softmax logit for this batch, [n_layer, n_head] float32."""
        return self(idx, track_max_logits=True).max_logits

    def attn_layers(self) -> list[Attention]:
        """The attention module of each layer, in the row order of `max_logits`."""
        return [block.attn for block in self.blocks]

    def num_params(self) -> int:
        """Number of distinct parameters (a tied embedding / lm_head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token, the PaLM / nanoGPT MFU estimate: 6N + 12 L d T.

        N counts the parameters that take part in matmuls: every parameter except an
        untied input embedding (a lookup). The attention term uses the full T x T
        (the usual convention; a causal kernel does about half of it).
        """
        c = self.config
        n = self.num_params()
        if not c.tie_embeddings:
            n -= self.embed.weight.numel()
        return 6 * n + 12 * c.n_layer * c.d_model * c.seq_len

"""GPT hyperparameters, checked on construction. Free of torch, so that validating a
pretrain spec (which builds one) stays fast: `wb launch` refuses a bad spec in well
under a second."""

from __future__ import annotations

import math
from dataclasses import dataclass

# "triton" (workbench.kernels.attention) is CUDA only: GPT.forward refuses it on a CPU.
ATTN_BACKENDS = ("auto", "flex", "sdpa", "naive", "triton")


@dataclass
class GPTConfig:
    vocab_size: int = 260
    seq_len: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None = n_head (plain MHA); must divide n_head
    d_model: int = 256
    ffn_mult: float = 8 / 3  # SwiGLU hidden = ffn_mult * d_model, rounded up to a multiple of 64
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    attn_backend: str = "auto"  # "auto" | "flex" | "sdpa" | "naive" | "triton"
    init_std: float = 0.02
    # Hugging Face families (models/hf.py) need these; our own GPT leaves them unset.
    attn_head_dim: int | None = None  # None = d_model // n_head (Qwen3 sets it apart)
    ffn_hidden_size: int | None = None  # None = from ffn_mult (a checkpoint's intermediate_size)
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2; Llama's attention_bias)
    o_bias: bool = False  # bias on the output projection (Llama's attention_bias)
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    rope_scaling: dict | None = None  # {"rope_type": "llama3", factor, low/high_freq_factor, ...}
    family: str = "llama"  # the Hugging Face model_type an export writes

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} ({value!r}) must be a positive integer")
        for name in ("attn_head_dim", "ffn_hidden_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"{name} ({value!r}) must be a positive integer or None")
        if self.attn_head_dim is None and self.d_model % self.n_head:
            raise ValueError(
                f"n_head ({self.n_head}) must divide d_model ({self.d_model}); "
                f"pick n_head in {_divisors(self.d_model)}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim ({self.head_dim}) must be even for RoPE; "
                "change d_model or n_head"
            )
        if self.n_kv_head is not None:
            if (
                not isinstance(self.n_kv_head, int)
                or isinstance(self.n_kv_head, bool)
                or self.n_kv_head < 1
            ):
                raise ValueError(
                    f"n_kv_head ({self.n_kv_head!r}) must be a positive integer or None (= n_head)"
                )
            if self.n_head % self.n_kv_head:
                raise ValueError(
                    f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}); "
                    f"pick n_kv_head in {_divisors(self.n_head)}"
                )
        for name in ("ffn_mult", "rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0 or math.isinf(value):
                raise ValueError(f"{name} ({value!r}) must be a positive finite number")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(
                f"attn_backend ({self.attn_backend!r}) must be one of {', '.join(ATTN_BACKENDS)}"
            )

        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("llama3", "default"):
                raise ValueError(f"rope_scaling type {kind!r} is not supported; "
                                 "use 'llama3' or none")

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim if self.attn_head_dim is not None else self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """n_kv_head with None resolved to n_head."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_hidden(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        return ffn_hidden(self.d_model, self.ffn_mult)


def ffn_hidden(d_model: int, ffn_mult: float) -> int:
    """SwiGLU hidden size: ffn_mult * d_model rounded up to a multiple of 64. round()
    first so that e.g. 8/3 * 192 = 511.99999... lands on 512, not 576."""
    return 64 * math.ceil(round(ffn_mult * d_model, 6) / 64)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class RecurrentDepthConfig:
    """A recurrent-depth transformer (Huginn; Geiping et al., 2025): a prelude, a core block
    looped r times on a latent state (input injected by a 2h -> h adapter each time),
    and a coda. Field names are ours; `models.recurrent_depth.HUGINN_FIELDS` maps
    Huginn's config.json onto them."""

    vocab_size: int = 260
    seq_len: int = 256
    d_model: int = 128
    n_head: int = 4
    n_prelude: int = 1
    n_core: int = 2
    n_coda: int = 1
    mean_recurrence: int = 8  # eval default and mean of the training sampler
    backprop_depth: int = 4  # training backpropagates through the last k iterations
    ffn_hidden: int = 512
    rope_theta: float = 50000.0
    norm_eps: float = 1e-6
    qk_bias: bool = True
    adapter_bias: bool = False
    tie_embeddings: bool = True
    state_scale: float = 1.0  # multiplies the random initial state's std

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_head", "n_core", "mean_recurrence",
                     "backprop_depth", "ffn_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} ({value!r}) must be a positive integer")
        for name in ("n_prelude", "n_coda"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} ({value!r}) must be an integer >= 0")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"n_head ({self.n_head}) must divide d_model ({self.d_model}) into "
                             "an even head_dim (RoPE)")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0 or math.isinf(value):
                raise ValueError(f"{name} ({value!r}) must be a positive finite number")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def init_std(self) -> float:
        """Huginn's std for weights and the initial state: sqrt(2 / (5 h))."""
        return math.sqrt(2.0 / (5.0 * self.d_model))

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.d_model)

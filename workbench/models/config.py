"""GPT hyperparameters, checked on construction. Free of torch, so that validating a
pretrain spec (which builds one) stays fast: `wb launch` refuses a bad spec in well
under a second."""

from __future__ import annotations

import math
from dataclasses import dataclass

ATTN_BACKENDS = ("auto", "flex", "sdpa", "naive")


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
    attn_backend: str = "auto"  # "auto" | "flex" | "sdpa" | "naive"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} ({value!r}) must be a positive integer")
        if self.d_model % self.n_head:
            raise ValueError(
                f"n_head ({self.n_head}) must divide d_model ({self.d_model}); "
                f"pick n_head in {_divisors(self.d_model)}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = d_model / n_head ({self.head_dim}) must be even for RoPE; "
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

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """n_kv_head with None resolved to n_head."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_hidden(self) -> int:
        # round() first so that e.g. 8/3 * 192 = 511.99999... lands on 512, not 576
        return 64 * math.ceil(round(self.ffn_mult * self.d_model, 6) / 64)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]

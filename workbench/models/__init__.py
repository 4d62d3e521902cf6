"""Models for the workbench's recipes.

`config`: GPTConfig, the hyperparameters (no torch, so specs validate fast).
`gpt`: a decoder-only GPT (RMSNorm, RoPE, SwiGLU, MHA/GQA) whose forward pass can
report the per-(layer, head) max pre-softmax attention logit that QK-Clip needs.
It imports torch and is loaded on first use: `import workbench.models` stays light.
`recurrent_depth`: the Huginn-style recurrent-depth model (its config is in `config`).
`hf_config`, `hf`: Llama / Qwen2 / Qwen3 checkpoint folders, read and written.
`example`: the tiny HF checkpoint of `wb example-model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.models.config import ATTN_BACKENDS, GPTConfig

if TYPE_CHECKING:
    from workbench.models.gpt import GPT, GPTOutput

__all__ = ["ATTN_BACKENDS", "GPT", "GPTConfig", "GPTOutput"]


def __getattr__(name: str) -> Any:
    if name in ("GPT", "GPTOutput"):
        from workbench.models import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module 'workbench.models' has no attribute {name!r}")

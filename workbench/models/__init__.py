"""Models for the workbench's recipes.

`gpt`: a decoder-only GPT (RMSNorm, RoPE, SwiGLU, MHA/GQA) whose forward pass can
report the per-(layer, head) max pre-softmax attention logit that QK-Clip needs.
"""

from workbench.models.gpt import GPT, GPTConfig, GPTOutput

__all__ = ["GPT", "GPTConfig", "GPTOutput"]

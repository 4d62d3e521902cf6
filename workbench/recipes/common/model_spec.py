"""The `model` section of a kind that trains a model (pretrain, depth): a GPT, from
scratch or from a Hugging Face checkpoint, or a recurrent-depth model.

Here, not in a recipe, because pretrain and depth both train it (depth narrows `arch`
to recurrent-depth) and neither may import the other. Free of torch (the model configs
live in models/config.py), so `wb launch` refuses a bad spec before torch loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator

from workbench.data.corpus import VOCAB_SIZE
from workbench.models.config import GPTConfig, RecurrentDepthConfig, ffn_hidden
from workbench.models.hf_config import HF_PREFIX, CheckpointError, hf_folder, load_gpt_config
from workbench.spec import Section

RD_ONLY = ("n_prelude", "n_core", "n_coda", "mean_recurrence", "backprop_depth")
GPT_ONLY = ("n_layer", "n_kv_head", "attn_backend")  # n_layer: ignored by recurrent-depth
# Keys a checkpoint (model.init = "hf:...") decides; setting one is refused, not ignored.
CHECKPOINT_FIXED = ("n_layer", "n_head", "n_kv_head", "d_model", "ffn_mult",
                    "tie_embeddings")


class ModelSection(Section):
    """The network: a GPT, or a recurrent-depth model (Huginn: prelude, a core looped
    r times, coda; models/recurrent_depth.py)."""

    init: str = Field(
        "scratch", description="Initial weights: 'scratch' (random, byte-level tokenizer) or "
        "'hf:<folder>' (a Llama / Qwen2 / Qwen3 checkpoint folder; its config fixes the "
        "shape and its tokenizer tokenizes the corpus).")
    arch: Literal["gpt", "recurrent-depth"] = Field(
        "gpt", description="Architecture: 'gpt' (decoder-only GPT) or 'recurrent-depth' "
        "(prelude + looped core + coda, Huginn-style).")
    n_layer: int = Field(4, ge=1, le=1024, description="Transformer blocks (gpt; recurrent-depth "
                         "has n_prelude / n_core / n_coda instead).")
    n_head: int = Field(4, ge=1, description="Query heads; must divide d_model.")
    n_kv_head: int | None = Field(
        None, ge=1, description="Key/value heads for GQA (must divide n_head); unset = MHA.")
    d_model: int = Field(128, ge=2, description="Residual width.")
    seq_len: int = Field(128, ge=2, description="Context length in tokens (bytes for a model "
                         "from scratch).")
    ffn_mult: float = Field(8 / 3, gt=0, le=64,
                            description="SwiGLU hidden size / d_model (rounded up to 64).")
    tie_embeddings: bool = Field(True, description="Share the input embedding and LM head.")
    attn_backend: Literal["auto", "flex", "sdpa", "naive", "triton"] = Field(
        "auto", description="Attention (gpt): auto (flex on CUDA, sdpa elsewhere), flex, sdpa, "
        "naive, triton (our flash kernel with max logits; CUDA only).")
    n_prelude: int = Field(1, ge=0, le=1024, description="recurrent-depth: blocks before the "
                           "loop (run once).")
    n_core: int = Field(2, ge=1, le=1024, description="recurrent-depth: blocks in the looped "
                        "core.")
    n_coda: int = Field(1, ge=0, le=1024, description="recurrent-depth: blocks after the loop.")
    mean_recurrence: int = Field(8, ge=1, le=1024, description="recurrent-depth: mean of the "
                                 "training draw (log-normal Poisson) and the eval default.")
    backprop_depth: int = Field(4, ge=1, le=1024, description="recurrent-depth: iterations "
                                "with gradient (truncated backprop through the last k).")

    # The embedding's rows for a model from scratch: the data tokenizer's vocabulary
    # (PretrainSpec sets it from data.tokenizer; bytes by default).
    _vocab_size: int = PrivateAttr(VOCAB_SIZE)

    @field_validator("init")
    @classmethod
    def _init_form(cls, init: str) -> str:
        if init == "scratch" or (init.startswith(HF_PREFIX) and init[len(HF_PREFIX):].strip()):
            return init
        raise ValueError("use 'scratch' or 'hf:<folder>' (a Hugging Face checkpoint folder)")

    @property
    def checkpoint(self) -> Path | None:
        """The folder of `init = "hf:<folder>"`, else None (a model from scratch)."""
        return hf_folder(self.init)

    def build_config(self) -> GPTConfig | RecurrentDepthConfig:
        """The config of `arch` (raises ValueError naming the problem; messages that
        name their key in full start with "model.")."""
        if self.checkpoint is not None:
            return self.checkpoint_config()
        fields = type(self).model_fields
        changed = [k for k in (*RD_ONLY, *GPT_ONLY) if getattr(self, k) != fields[k].default]
        if self.arch == "gpt":
            if wrong := [k for k in changed if k in RD_ONLY]:
                raise ValueError(f"{wrong[0]} applies to arch 'recurrent-depth' — set "
                                 "model.arch = \"recurrent-depth\" or drop it")
            return self.gpt_config()
        if wrong := [k for k in changed if k in GPT_ONLY[1:]]:
            raise ValueError(f"{wrong[0]} applies to arch 'gpt'; a recurrent-depth model has "
                             "MHA and sdpa attention — drop it")
        return RecurrentDepthConfig(
            vocab_size=self._vocab_size, seq_len=self.seq_len, d_model=self.d_model,
            n_head=self.n_head, n_prelude=self.n_prelude, n_core=self.n_core,
            n_coda=self.n_coda, mean_recurrence=self.mean_recurrence,
            backprop_depth=self.backprop_depth,
            ffn_hidden=ffn_hidden(self.d_model, self.ffn_mult),
            tie_embeddings=self.tie_embeddings)

    def checkpoint_config(self) -> GPTConfig:
        """The GPTConfig of the `hf:` checkpoint at this seq_len and attention backend.

        The checkpoint decides the shape, so a shape key set here would be silently
        ignored: it is refused instead. Reads config.json only (no torch)."""
        folder = self.checkpoint
        assert folder is not None
        if self.arch != "gpt":
            raise ValueError(f"model.init = {self.init!r} loads a gpt checkpoint; arch "
                             f"{self.arch!r} cannot start from one — use init = 'scratch'")
        fields = type(self).model_fields
        changed = [k for k in (*CHECKPOINT_FIXED, *RD_ONLY)
                   if getattr(self, k) != fields[k].default]
        if changed:
            raise ValueError(f"model.{changed[0]} is fixed by the checkpoint model.init = "
                             f"{self.init!r} — drop it (set only seq_len and attn_backend)")
        try:
            return load_gpt_config(folder, seq_len=self.seq_len, attn_backend=self.attn_backend)
        except CheckpointError as exc:
            key = "model.seq_len" if str(exc).startswith("seq_len ") else "model.init"
            raise ValueError(f"{key}: {exc}") from None

    def gpt_config(self) -> GPTConfig:
        """The GPT of this section: the checkpoint's with `init = "hf:..."`."""
        if self.checkpoint is not None:
            return self.checkpoint_config()
        return GPTConfig(vocab_size=self._vocab_size, seq_len=self.seq_len, n_layer=self.n_layer,
                         n_head=self.n_head, n_kv_head=self.n_kv_head, d_model=self.d_model,
                         ffn_mult=self.ffn_mult, tie_embeddings=self.tie_embeddings,
                         attn_backend=self.attn_backend)

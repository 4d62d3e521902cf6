"""Hugging Face ``config.json`` <-> GPTConfig, for the Llama family of checkpoints.

Free of torch and transformers, so a spec that names a checkpoint folder is validated
(and a bad one refused) before anything heavy loads. The weights live in models/hf.py.

Supported ``model_type`` values (SUPPORTED), each matched exactly by our GPT:

- ``llama``: GQA, tied or untied head, RoPE with ``rope_scaling`` of type ``llama3``,
  ``attention_bias`` (biases on q/k/v/o); ``mlp_bias`` is refused.
- ``qwen2``: biases on q/k/v (always, as Qwen2 has them), none on o.
- ``qwen3``: QK-norm (one RMSNorm over head_dim on q and on k, before RoPE), an
  explicit ``head_dim``, ``attention_bias`` as in Llama.

Sliding-window attention (``use_sliding_window = true``) and other RoPE scalings are
refused in one line: our attention is full causal with plain or llama3 RoPE.

transformers 5 keeps RoPE in ``rope_parameters``; 4.x in ``rope_theta`` and
``rope_scaling``. Both are read, and an export writes both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.models.config import GPTConfig

SUPPORTED = ("llama", "qwen2", "qwen3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
HF_PREFIX = "hf:"


class CheckpointError(ValueError):
    """A checkpoint folder we cannot use; the message is one line naming the fix."""


def hf_folder(init: str) -> Path | None:
    """The folder of an ``hf:<folder>`` init string, expanded; None for anything else."""
    if not init.startswith(HF_PREFIX):
        return None
    return Path(init[len(HF_PREFIX):]).expanduser()


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, checked: a folder with config.json, weights in
    safetensors, and a supported model_type."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder — point hf: at a folder "
                              "with config.json, *.safetensors and the tokenizer files")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json — is this a Hugging Face checkpoint "
                              "folder (save_pretrained's output)?")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    kind = cfg.get("model_type")
    if kind not in SUPPORTED:
        raise CheckpointError(f"{path}: model_type {kind!r} is not supported — supported: "
                              f"{', '.join(SUPPORTED)}")
    if not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"{folder}: no *.safetensors weights — re-save the model with "
                              "save_pretrained(..., safe_serialization=True)")
    return cfg


def rope_settings(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, llama3 scaling dict or None) from either config style."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or None
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type") or (scaling or {}).get("rope_type") \
        or (scaling or {}).get("type") or "default"
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise CheckpointError(f"rope type {kind!r} is not supported — supported: default, "
                              "llama3")
    src = params if params.get("rope_type") == "llama3" else scaling
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in src]
    if missing:
        raise CheckpointError(f"llama3 rope scaling lacks {', '.join(missing)}")
    return theta, {"rope_type": "llama3", **{k: src[k] for k in keys}}


def to_gpt_config(cfg: dict[str, Any], seq_len: int | None = None,
                  attn_backend: str = "auto") -> GPTConfig:
    """A checked config.json -> the GPTConfig of the same network.

    ``seq_len`` is the context we will use (RoPE tables and the KV cache are sized by it);
    unset = max_position_embeddings. It may not exceed max_position_embeddings."""
    kind = cfg["model_type"]
    if cfg.get("use_sliding_window"):
        raise CheckpointError(f"{kind}: use_sliding_window = true is not supported — our "
                              "attention is full causal")
    if cfg.get("mlp_bias"):
        raise CheckpointError(f"{kind}: mlp_bias = true is not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{kind}: hidden_act {act!r} is not supported — SwiGLU (silu) "
                              "only")
    max_pos = int(cfg.get("max_position_embeddings", 2048))
    if seq_len is None:
        seq_len = max_pos
    if seq_len > max_pos:
        raise CheckpointError(f"seq_len {seq_len} exceeds the checkpoint's "
                              f"max_position_embeddings ({max_pos}) — lower it")
    theta, scaling = rope_settings(cfg)
    n_head = int(cfg["num_attention_heads"])
    d_model = int(cfg["hidden_size"])
    head_dim = cfg.get("head_dim") or d_model // n_head
    attn_bias = bool(cfg.get("attention_bias", False))
    try:
        return GPTConfig(
            vocab_size=int(cfg["vocab_size"]), seq_len=int(seq_len),
            n_layer=int(cfg["num_hidden_layers"]), n_head=n_head,
            n_kv_head=int(cfg.get("num_key_value_heads") or n_head), d_model=d_model,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", kind != "llama")),
            rope_theta=theta, norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            attn_backend=attn_backend, init_std=float(cfg.get("initializer_range", 0.02)),
            attn_head_dim=int(head_dim), ffn_hidden_size=int(cfg["intermediate_size"]),
            qkv_bias=attn_bias or kind == "qwen2", o_bias=attn_bias,
            qk_norm=kind == "qwen3", rope_scaling=scaling, family=kind,
        )
    except KeyError as e:
        raise CheckpointError(f"{kind}: config.json lacks {e.args[0]!r}") from None
    except ValueError as e:
        raise CheckpointError(f"{kind}: {e}") from None


def load_gpt_config(folder: str | Path, seq_len: int | None = None,
                    attn_backend: str = "auto") -> GPTConfig:
    return to_gpt_config(read_config(folder), seq_len, attn_backend)


def from_gpt_config(c: GPTConfig, special: dict[str, Any] | None = None,
                    dtype: str = "float32") -> dict[str, Any]:
    """GPTConfig -> a config.json of family ``c.family`` with the same function.

    ``special``: bos/eos/pad token ids (from the tokenizer or the source checkpoint).
    ``dtype``: the weights' dtype, so ``from_pretrained(dtype="auto")`` keeps it."""
    kind = c.family if c.family in SUPPORTED else "llama"
    if kind == "qwen2" and (not c.qkv_bias or c.o_bias or c.qk_norm):
        kind = "llama"  # Qwen2 hard-codes q/k/v biases and nothing else
    if c.qk_norm and kind != "qwen3":
        kind = "qwen3"
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling:
        rope = {**c.rope_scaling, "rope_theta": c.rope_theta}
    cfg: dict[str, Any] = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_hidden,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": rope,  # transformers >= 5
        "rope_scaling": ({k: v for k, v in rope.items() if k != "rope_theta"}
                         if c.rope_scaling else None),
        "hidden_act": "silu",
        "tie_word_embeddings": c.tie_embeddings,
        "initializer_range": c.init_std,
        "torch_dtype": dtype,
        "dtype": dtype,  # transformers >= 5
    }
    if kind == "llama":
        if c.qkv_bias != c.o_bias:
            raise CheckpointError("a llama export needs biases on all of q/k/v/o or none")
        cfg.update(attention_bias=c.qkv_bias, mlp_bias=False)
    elif kind == "qwen3":
        if c.qkv_bias != c.o_bias:
            raise CheckpointError("a qwen3 export needs biases on all of q/k/v/o or none")
        cfg.update(attention_bias=c.qkv_bias, use_sliding_window=False)
    else:
        cfg.update(use_sliding_window=False)
    cfg.update(special or {})
    return cfg

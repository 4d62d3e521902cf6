"""Hugging Face checkpoints <-> our GPT: load a Llama / Qwen2 / Qwen3 folder, export one.

A folder is what ``save_pretrained`` writes: ``config.json`` (models/hf_config.py maps
it), ``*.safetensors`` (one file or shards with ``model.safetensors.index.json``) and the
tokenizer files. Loading maps the tensor names onto ours (``NAME_MAP``); an export maps
them back, writes a config.json of the same family and copies the tokenizer files the
model came with, so ``transformers.AutoModelForCausalLM.from_pretrained`` (and vLLM)
load it as they would the original.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.models.config import GPTConfig
from workbench.models.gpt import GPT
from workbench.models.hf_config import CheckpointError, from_gpt_config, load_gpt_config

# Files a tokenizer or generation setup may consist of; an export copies those present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")

_LAYER_MAP = {
    "norm1.weight": "input_layernorm.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    **{f"attn.{p}_proj.{t}": f"self_attn.{p}_proj.{t}"
       for p in "qkvo" for t in ("weight", "bias")},
    **{f"mlp.{p}_proj.weight": f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")},
}
_TOP_MAP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
            "lm_head.weight": "lm_head.weight"}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)")
_FROM_LAYER = {v: k for k, v in _LAYER_MAP.items()}
_FROM_TOP = {v: k for k, v in _TOP_MAP.items()}


def hf_name(name: str) -> str:
    """Our parameter name -> the checkpoint's (``blocks.3.attn.q_proj.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``). Wrapper prefixes are dropped."""
    for prefix in ("_orig_mod.", "module."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    m = _BLOCK.fullmatch(name)
    if m and m.group(2) in _LAYER_MAP:
        return f"model.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    raise KeyError(f"no Hugging Face name for parameter {name!r}")


def our_name(name: str) -> str:
    """The inverse of ``hf_name``."""
    if name in _FROM_TOP:
        return _FROM_TOP[name]
    m = _HF_BLOCK.fullmatch(name)
    if m and m.group(2) in _FROM_LAYER:
        return f"blocks.{m.group(1)}.{_FROM_LAYER[m.group(2)]}"
    raise KeyError(f"unexpected tensor {name!r} in the checkpoint")


def to_hf_state(state: dict[str, torch.Tensor], tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """Rename a GPT state dict to checkpoint names. With tied embeddings lm_head.weight is
    dropped (the checkpoint ties it to embed_tokens; safetensors refuses shared tensors)."""
    out = {}
    for name, tensor in state.items():
        key = hf_name(name)
        if tie_embeddings and key == "lm_head.weight":
            continue
        out[key] = tensor
    return out


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards its index names, else all."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint under our names."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if not path.is_file():
            raise CheckpointError(f"{path}: a shard named by the index is missing")
        for name, tensor in load_file(str(path)).items():
            if name.endswith("rotary_emb.inv_freq"):  # a buffer some old exports carry
                continue
            try:
                state[our_name(name)] = tensor
            except KeyError as e:
                raise CheckpointError(f"{path.name}: {e.args[0]}") from None
    return state


def load_hf(folder: str | os.PathLike[str], seq_len: int | None = None,
            attn_backend: str = "auto", dtype: torch.dtype = torch.float32) -> GPT:
    """A checkpoint folder as our GPT, in ``dtype``, on the CPU.

    ``seq_len``: the context to size RoPE and caches for (default: the checkpoint's
    max_position_embeddings)."""
    folder = Path(folder).expanduser()
    config = load_gpt_config(folder, seq_len, attn_backend)
    model = GPT.empty(config)
    state = read_state(folder)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
        state["lm_head.weight"] = state.get("embed.weight")
    expected = set(model.state_dict())
    missing = sorted(expected - {k for k, v in state.items() if v is not None})
    extra = sorted(set(state) - expected)
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(f"{folder}: weights do not match config.json ({what})")
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):
            src = state[name]
            if tuple(src.shape) != tuple(p.shape):
                raise CheckpointError(f"{folder}: {hf_name(name)} has shape "
                                      f"{tuple(src.shape)}, config.json implies {tuple(p.shape)}")
            p.copy_(src)
    model = model.to(dtype).reset_rope()  # the RoPE tables stay float32
    return model


@contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` to fill. It replaces ``out`` when the block ends
    without an error and is removed otherwise: a crash never leaves a half folder."""
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_hf(model: nn.Module, folder: Path, special: dict[str, Any] | None = None,
             dtype: torch.dtype = torch.float32) -> None:
    """config.json and model.safetensors of ``model`` (our GPT) into ``folder``."""
    from safetensors.torch import save_file

    cfg: GPTConfig = model.config  # type: ignore[assignment]
    state = to_hf_state(model.state_dict(), cfg.tie_embeddings)
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = from_gpt_config(cfg, special, dtype=str(dtype).removeprefix("torch."))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def save_hf(model: nn.Module, out: str | os.PathLike[str], *,
            tokenizer_from: str | os.PathLike[str] | None = None,
            special: dict[str, Any] | None = None,
            dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` (our GPT) as a checkpoint folder of its family, atomically.

    ``tokenizer_from``: a folder whose tokenizer (and generation) files are copied along.
    ``special``: bos/eos/pad ids for config.json (default: those of the copied
    generation_config.json, if any)."""
    out = Path(out).expanduser()
    src = Path(tokenizer_from).expanduser() if tokenizer_from else None
    if special is None and src is not None and (src / "generation_config.json").is_file():
        gen = json.loads((src / "generation_config.json").read_text())
        special = {k: gen[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                   if gen.get(k) is not None}
    with new_folder(out) as tmp:
        write_hf(model, tmp, special, dtype)
        for name in TOKENIZER_FILES if src is not None else ():
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
    return out

"""A tiny Hugging Face checkpoint the workbench writes itself: try every `hf:` path
without a download (``wb example-model DIR``, and the ``rl-hf-tiny`` spec).

The files are real and in the real formats:

- a byte-level BPE tokenizer (the ``tokenizers`` library) trained on local text: the
  standard library's source and samples of the built-in RL tasks, with ChatML specials
  (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``) and a ChatML chat template,
  saved through transformers as ``tokenizer.json`` + ``tokenizer_config.json``;
- a randomly initialized Qwen2 (q/k/v biases, GQA, tied head) or Llama / Qwen3 model
  sized to that vocabulary, saved as ``config.json`` + ``model.safetensors`` +
  ``generation_config.json``.

Deterministic for a given seed and Python version. Nothing here is trained to solve a
task: it is the smallest honest stand-in for Qwen2.5 / Qwen3 / Llama 3.2 on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FAMILIES = ("qwen2", "qwen3", "llama")
EXAMPLE_SEQ_LEN = 512  # max_position_embeddings of the default example


def _training_text(max_bytes: int, seed: int) -> Iterator[str]:
    """Standard-library source, then the built-in tasks' prompts and worked answers."""
    import numpy as np

    from workbench.data.corpus import iter_documents, stdlib_source
    from workbench.recipes.rl.tasks import TASKS, sample_problem, solution_text

    for _, data, _ in iter_documents(stdlib_source(max_bytes=max_bytes)):
        yield data.decode("utf-8", errors="replace")
    rng = np.random.default_rng(seed)
    for _ in range(3000):
        p = sample_problem(rng, sorted(TASKS))
        yield p.prompt + solution_text(p)


def build_tokenizer(folder: Path, vocab_size: int = 1024, seed: int = 0,
                    max_bytes: int = 1_500_000) -> int:
    """Train and save the BPE tokenizer into ``folder``; returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_training_text(max_bytes, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHATML)
    fast.save_pretrained(str(folder))
    return len(fast)


def write_example_model(folder: str | os.PathLike[str], family: str = "qwen2", seed: int = 0,
                        d_model: int = 64, n_layer: int = 2,
                        seq_len: int = EXAMPLE_SEQ_LEN) -> Path:
    """Write the tiny checkpoint and tokenizer into ``folder`` (replaced if present)."""
    import torch

    from workbench.models.config import GPTConfig
    from workbench.models.gpt import GPT
    from workbench.models.hf import new_folder, write_hf

    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: use one of {', '.join(FAMILIES)}")
    out = Path(folder).expanduser()
    with new_folder(out) as tmp:
        vocab = build_tokenizer(tmp, seed=seed)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tmp), local_files_only=True)
        eos, pad = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
        gen = {"eos_token_id": [eos, pad], "pad_token_id": pad, "bos_token_id": None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        torch.manual_seed(seed)
        config = GPTConfig(vocab_size=vocab, seq_len=seq_len, n_layer=n_layer, n_head=4,
                           n_kv_head=2, d_model=d_model, tie_embeddings=family != "llama",
                           rope_theta=10000.0, qkv_bias=family == "qwen2",
                           qk_norm=family == "qwen3", family=family, norm_eps=1e-6)
        write_hf(GPT(config), tmp, special={"eos_token_id": eos, "pad_token_id": pad})
    return out


def example_folder(cache: str | os.PathLike[str], family: str = "qwen2") -> Path:
    """Where the default example checkpoint of ``family`` lives under a store's cache."""
    return Path(cache).expanduser() / "example-model" / family


def ensure_example_model(cache: str | os.PathLike[str], family: str = "qwen2") -> Path:
    """The default example checkpoint of ``family`` under ``cache/example-model/``, written
    on first use (``policy.init = "hf:example"``). A lock file serializes two runs that
    start on an empty store together; the second finds the folder and reuses it."""
    import fcntl

    folder = example_folder(cache, family)
    if (folder / "config.json").is_file():  # written whole (temporary folder, rename)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{family}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "config.json").is_file():
            write_example_model(folder, family=family)
    return folder

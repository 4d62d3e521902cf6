"""`wb bench engine-hf`: our torch engine against transformers' ``generate`` on the same
Hugging Face checkpoint, the same requests, batched and greedy.

Why: an RL run from a user's checkpoint decodes with our engine (KV cache, continuous
batching, per-token log-probs and versions), so it should not be slower than the
obvious alternative, ``AutoModelForCausalLM.generate``, on the same weights.

Workload: the tiny Qwen2 checkpoint of ``wb example-model`` (written to a temporary
folder), prompts of the built-in RL tasks through its chat template, static batches of
``batch`` requests on both sides (transformers: left padding with an attention mask;
ours: ``continuous=False``), greedy, ``new_tokens`` generated per request with EOS
ignored on both sides so the work is identical. One torch thread on both sides. The
engines' greedy tokens are compared (``outputs_match``: the share of requests whose
tokens are equal). Each side runs ``repeats`` times, alternating; figures are medians.
``speedup`` = ours_tok_s / transformers_tok_s.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from workbench.engine import Request, generate_all
from workbench.engine.torch_engine import TorchEngine


def _prompts(tok: Any, n: int) -> list[list[int]]:
    from workbench.recipes.rl.tasks import sample_problem

    rng = np.random.default_rng(0)
    return [tok.prompt_ids(sample_problem(rng, ["sum", "count"]).prompt) for _ in range(n)]


def _ours(model: Any, prompts: list[list[int]], batch: int, new: int) -> tuple[float, list]:
    engine = TorchEngine(model, max_batch=batch, max_len=model.config.seq_len,
                         temperature=0.0, seed=0, continuous=False, ignore_eos=True)
    reqs = [Request(id=i, prompt=p, max_new_tokens=new) for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    out = generate_all(engine, reqs)
    return time.perf_counter() - t0, [c.tokens for c in out]


def _theirs(model: Any, prompts: list[list[int]], batch: int, new: int,
            pad: int) -> tuple[float, list]:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              eos_token_id=None, pad_token_id=pad, bos_token_id=None)
    outs: list[list[int]] = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        outs += gen[:, width:].tolist()
    return time.perf_counter() - t0, outs


def bench_engine_hf(quick: bool = False, progress: Console | None = None,
                    tiny: bool = False) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from workbench.data.tokenizer import load_tokenizer
    from workbench.models.example import write_example_model
    from workbench.models.hf import load_hf

    say = progress.print if progress else (lambda *a, **k: None)
    n, batch, new, repeats = (64, 16, 64, 1) if quick else (128, 16, 128, 3)
    if tiny:  # tests only
        n, batch, new, repeats = 8, 4, 8, 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_example_model(Path(tmp) / "qwen2", family="qwen2")
            tok = load_tokenizer(f"hf:{folder}")
            ours = load_hf(folder).eval()
            theirs = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        prompts = _prompts(tok, n)
        tokens = n * new
        say(f"engine-hf bench on cpu: tiny Qwen2 ({ours.num_params() / 1e6:.2f}M params, "
            f"vocab {ours.config.vocab_size}), {n} requests of {new} new tokens, static "
            f"batches of {batch}, greedy; {repeats} repeat(s) each, alternating")
        _ours(ours, prompts[:batch], batch, 4)  # warm-up, both sides
        _theirs(theirs, prompts[:batch], batch, 4, tok.eos_id)
        ours_s: list[float] = []
        theirs_s: list[float] = []
        for i in range(repeats):
            dt_o, out_o = _ours(ours, prompts, batch, new)
            dt_t, out_t = _theirs(theirs, prompts, batch, new, tok.eos_id)
            ours_s.append(dt_o)
            theirs_s.append(dt_t)
            say(f"  repeat {i + 1}/{repeats}: ours {tokens / dt_o:.0f} tok/s, transformers "
                f"{tokens / dt_t:.0f} tok/s")
        match = float(np.mean([a == b for a, b in zip(out_o, out_t, strict=True)]))
    finally:
        torch.set_num_threads(threads)
    o, t = statistics.median(ours_s), statistics.median(theirs_s)
    import transformers

    return {
        "ours_tok_s": round(tokens / o, 1),
        "transformers_tok_s": round(tokens / t, 1),
        "speedup": round(t / o, 3),
        "ours_s": round(o, 3),
        "transformers_s": round(t, 3),
        "outputs_match": round(match, 3),
        "requests": n,
        "batch": batch,
        "new_tokens": new,
        "tokens": tokens,
        "prompt_len_mean": round(float(np.mean([len(p) for p in prompts])), 1),
        "params": ours.num_params(),
        "model": "example-model qwen2",
        "transformers": transformers.__version__,
        "threads": 1,
        "device": "cpu",
        "repeats": repeats,
        "quick": quick,
    }

"""`wb bench engine`: generated tokens/s, continuous vs static batching, same workload.

Why: RL rollout lengths are heavily skewed (Magistral, PipelineRL). With static batching a
batch runs as long as its longest member while the finished slots sit idle; continuous
batching refills a slot as soon as its sequence ends. This bench measures what that
buys on the embedded torch engine (workbench/engine/torch_engine.py).

Workload: random-init GPT of the RL policy's size (4 layers, d_model 128, 4 heads,
seq_len 512), ``slots`` KV-cache slots; each request is BOS + 8..32 random bytes with
``max_new_tokens`` drawn from a log-normal (median 40, sigma 1: a heavy tail, p99 about
10x the median), capped at 256 as an RL run caps completion length. 128 requests with
``--quick``, 256 otherwise: with few requests per slot, the total time is dominated by
whichever long request happens to be admitted last. Greedy decoding with EOS ignored,
so every request generates exactly its max_new_tokens and both modes do the same work;
the bench also checks that they produce the same tokens per request (``outputs_match``).
Static mode decodes only the sequences still running (finished ones cost nothing), the
fairest version of the baseline: what it loses is only the batching of a half-empty
batch.

Both modes run the same requests in the same order, alternating (continuous first, then
static, per repeat) so background load hits both alike; each figure is the median over
repeats. One torch thread (``threads``): on a small model a decode step is a few tiny
matmuls, where extra threads add contention, not speed. ``speedup`` = continuous_tok_s /
static_tok_s (target >= 1.5).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
from rich.console import Console

from workbench.data.corpus import BOS
from workbench.engine import Completion, Request, generate_all
from workbench.engine.torch_engine import TorchEngine
from workbench.models.config import GPTConfig
from workbench.models.gpt import GPT


def skewed_requests(n: int, max_len: int, seed: int, median: float = 40.0,
                    sigma: float = 1.0, cap: int = 256) -> list[Request]:
    """n requests: BOS + 8..32 random bytes, log-normal max_new_tokens (heavy tail),
    capped at ``cap`` (the completion-length limit an RL run sets) and so that prompt +
    completion fits max_len."""
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(n):
        prompt = [BOS, *rng.integers(0, 256, int(rng.integers(8, 33))).tolist()]
        new = int(round(rng.lognormal(np.log(median), sigma)))
        reqs.append(Request(id=i, prompt=prompt,
                            max_new_tokens=int(np.clip(new, 2, min(cap, max_len - len(prompt))))))
    return reqs


def _run(model: GPT, reqs: list[Request], slots: int, max_len: int,
         continuous: bool) -> tuple[float, float, TorchEngine, list[Completion]]:
    """(wall s, CPU s of this process, engine, completions) of one full run."""
    engine = TorchEngine(model, max_batch=slots, max_len=max_len, temperature=0.0, seed=0,
                         continuous=continuous, ignore_eos=True)
    t0, c0 = time.perf_counter(), time.process_time()
    out = generate_all(engine, reqs)
    return time.perf_counter() - t0, time.process_time() - c0, engine, out


def bench_engine(quick: bool = False, progress: Console | None = None,
                 tiny: bool = False) -> dict[str, Any]:
    say = progress.print if progress else (lambda *a, **k: None)
    cfg = GPTConfig(seq_len=512, n_layer=4, d_model=128, n_head=4)
    slots, n_requests, repeats = (16, 128, 1) if quick else (16, 256, 3)
    if tiny:  # tests only
        cfg = GPTConfig(seq_len=128, n_layer=2, d_model=32, n_head=2)
        slots, n_requests, repeats = 4, 12, 1
    max_len = cfg.seq_len
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = GPT(cfg).eval()
        reqs = skewed_requests(n_requests, max_len, seed=0,
                               median=12.0 if tiny else 40.0)
        lengths = np.array([r.max_new_tokens for r in reqs])
        say(f"engine bench on cpu: GPT(n_layer={cfg.n_layer}, d_model={cfg.d_model}, "
            f"n_head={cfg.n_head}, {model.num_params() / 1e6:.2f}M params), {slots} slots, "
            f"{n_requests} requests, {int(lengths.sum())} tokens (max_new_tokens p50 "
            f"{int(np.percentile(lengths, 50))}, max {int(lengths.max())}); "
            f"{repeats} repeat(s) each, alternating")
        warm = [Request(r.id, r.prompt, min(r.max_new_tokens, 8)) for r in reqs[:slots]]
        _run(model, warm, slots, max_len, True)  # warm-up
        cont_s: list[float] = []
        stat_s: list[float] = []
        cont_cpu: list[float] = []
        stat_cpu: list[float] = []
        match = True
        for i in range(repeats):
            dt_c, cpu_c, eng_c, out_c = _run(model, reqs, slots, max_len, True)
            dt_s, cpu_s, eng_s, out_s = _run(model, reqs, slots, max_len, False)
            cont_s.append(dt_c)
            stat_s.append(dt_s)
            cont_cpu.append(cpu_c)
            stat_cpu.append(cpu_s)
            match &= all(a.tokens == b.tokens for a, b in zip(out_c, out_s, strict=True))
            say(f"  repeat {i + 1}/{repeats}: continuous {eng_c.tokens_generated / dt_c:.0f} "
                f"tok/s ({eng_c.decode_steps} steps), static "
                f"{eng_s.tokens_generated / dt_s:.0f} tok/s ({eng_s.decode_steps} steps)")
    finally:
        torch.set_num_threads(threads)
    tokens = int(eng_c.tokens_generated)
    c, s = statistics.median(cont_s), statistics.median(stat_s)
    return {
        "continuous_tok_s": round(tokens / c, 1),
        "static_tok_s": round(tokens / s, 1),
        "speedup": round(s / c, 3),
        # Unrounded: at tiny sizes a run takes milliseconds, and times rounded to 1 ms
        # no longer reproduce the speedup (1.167 from them against 1.183).
        "continuous_s": c,
        "static_s": s,
        # CPU seconds of this process: the same comparison, less sensitive to other load
        "cpu_speedup": round(statistics.median(stat_cpu) / statistics.median(cont_cpu), 3),
        "continuous_steps": eng_c.decode_steps,
        "static_steps": eng_s.decode_steps,
        "continuous_occupancy": round(tokens / (eng_c.decode_steps * slots), 3),
        "static_occupancy": round(tokens / (eng_s.decode_steps * slots), 3),
        "outputs_match": bool(match),
        "requests": n_requests,
        "slots": slots,
        "tokens": tokens,
        "len_p50": int(np.percentile(lengths, 50)),
        "len_p90": int(np.percentile(lengths, 90)),
        "len_p99": int(np.percentile(lengths, 99)),
        "len_max": int(lengths.max()),
        "params": model.num_params(),
        "model": f"GPT n_layer={cfg.n_layer} d_model={cfg.d_model} n_head={cfg.n_head}",
        "max_len": max_len,
        "threads": 1,
        "device": "cpu",
        "repeats": repeats,
        "quick": quick,
    }

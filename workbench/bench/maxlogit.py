"""`wb bench maxlogit`: training-step time with and without per-head max-logit tracking.

The model is muon-tiny's (sizes and batch read from the built-in spec
``workbench/specs/muon-tiny.toml``), with ``attn_backend = "auto"``: sdpa on a CPU
(the max comes from a chunked Q.K^T under no_grad), flex on CUDA (compiled, the max
from flex_attention's ``max_scores``) -> ``backend``.

One timed step = zero_grad + forward (``track_max_logits`` on or off) + backward +
an AdamW step on all parameters (AdamW keeps the optimizer share cheap, so the
tracking cost is not diluted by Newton-Schulz). bf16 autocast on CUDA, fp32 on a
CPU, as in the pretrain recipe. The batch is fixed random tokens (timing only).
With tracking, the [n_layer, n_head] max is also reduced to a Python float each
step, as the recipe does when it logs ``attn/max_logit``.

Both variants train the same model; after warm-up the steps alternate
with / without (so drift and background load hit both alike) and each figure is
the median of its steps. ``overhead`` = with_ms / without_ms - 1 (target <= 0.10).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from rich.console import Console

from workbench.models.gpt import GPT


def bench_maxlogit(quick: bool = False, progress: Console | None = None,
                   tiny: bool = False) -> dict[str, Any]:
    from workbench.recipes.common.parallel import pick_device
    from workbench.recipes.common.precision import autocast
    from workbench.spec import load_spec

    say = progress.print if progress else (lambda *a, **k: None)
    spec = load_spec("muon-tiny").spec
    cfg = spec.model.gpt_config()
    batch = spec.train.batch_size
    if tiny:  # tests only
        cfg.n_layer, cfg.d_model, cfg.seq_len, batch = 2, 64, 32, 4
    device = pick_device()
    backend = "flex" if device.type == "cuda" else "sdpa"
    warmup, repeats = (1, 2) if tiny else (5, 40) if quick else (10, 100)

    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.optim.lr,
                            weight_decay=spec.optim.weight_decay)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, cfg.seq_len), generator=gen).to(device)
    y = torch.randint(0, 256, (batch, cfg.seq_len), generator=gen).to(device)

    def step(track: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            out = model(x, y, track_max_logits=track)
        out.loss.backward()
        opt.step()
        if track:
            float(out.max_logits.max())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    say(f"maxlogit bench on {device} ({backend}): GPT(n_layer={cfg.n_layer}, "
        f"d_model={cfg.d_model}, n_head={cfg.n_head}, seq_len={cfg.seq_len}), batch {batch}; "
        f"{warmup} warm-up + {repeats} timed steps each, alternating")
    for _ in range(warmup):  # both variants (on CUDA each compiles its own flex kernel)
        step(True)
        step(False)
    with_ms: list[float] = []
    without_ms: list[float] = []
    for i in range(repeats):
        first = i % 2 == 0  # alternate which variant goes first in each pair
        for track in (first, not first):
            (with_ms if track else without_ms).append(step(track))
        if (i + 1) % max(1, repeats // 4) == 0:
            say(f"  {i + 1}/{repeats}: with {statistics.median(with_ms):.1f} ms, "
                f"without {statistics.median(without_ms):.1f} ms")
    w, wo = statistics.median(with_ms), statistics.median(without_ms)
    return {
        "with_ms": round(w, 3),
        "without_ms": round(wo, 3),
        "overhead": round(w / wo - 1, 4),
        "backend": backend,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "step": "fwd+bwd+AdamW step",
        "n_layer": cfg.n_layer,
        "d_model": cfg.d_model,
        "n_head": cfg.n_head,
        "seq_len": cfg.seq_len,
        "batch_size": batch,
        "repeats": repeats,
        "quick": quick,
    }

"""`wb bench kernels`: the Triton kernels of `workbench.kernels` against torch.

On CUDA, each kernel is timed against what it replaces, and reported as
throughput and as a fraction of the device's peak:
- newton_schulz (batched NS5 with the symmetric Gram kernel) vs the NS inside
  `torch.optim.Muon`: TFLOP/s (the full 5-step count) and the fraction of bf16 peak;
- attention (causal flash attention that also returns per-head max logits) vs
  SDPA (no max logits) and vs flex_attention with `AuxRequest(max_scores=True)`:
  forward TFLOP/s (causal: half of 4*B*H*T*T*D) and the fraction of bf16 peak;
- token_logprobs (fused, chunked log-softmax gather + entropy from hidden states)
  vs the naive logits -> log_softmax path: TFLOP/s of the LM-head product and
  peak memory, since the point of the kernel is not materializing [N, V].

On a CPU there is no GPU figure to take: it says so, and runs every kernel under
the Triton interpreter (TRITON_INTERPRET=1, in a subprocess, small shapes) against
its torch reference, reporting the largest errors (`python -m
workbench.bench.kernels_check`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from typing import Any

from rich.console import Console

from workbench.bench.runs import say
from workbench.selftest.compare import time_cuda

# Dense bf16 tensor-core peak (TFLOP/s) and memory bandwidth (TB/s) by device name
# (vendor data sheets, SXM parts); unknown devices report no fraction.
PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 4.8),
    "H100": (989.0, 3.35),
    "A100": (312.0, 2.0),
    "L40S": (362.0, 0.864),
    "A10": (125.0, 0.6),
}


def device_peak(name: str) -> tuple[float, float] | None:
    for key, peak in PEAKS.items():
        if key in name:
            return peak
    return None


# The selftest's CUDA-event timer, with this bench's longer warm-up and more rounds.
_time_cuda = partial(time_cuda, iters=20, warmup=5)


def _row(name: str, seconds: float, flops: float, peak: tuple[float, float] | None,
         **extra: Any) -> dict[str, Any]:
    tflops = flops / seconds / 1e12
    return {"name": name, "ms": seconds * 1e3, "tflops": tflops,
            "peak_frac": tflops / peak[0] if peak else None, **extra}


def _bench_ns(quick: bool, peak: tuple[float, float] | None) -> list[dict[str, Any]]:
    import torch
    from torch.optim import _muon

    from workbench.kernels.newton_schulz import newton_schulz, ns_flops

    rows = []
    for batch, m, n in ([(8, 1024, 1024)] if quick else [(8, 1024, 1024), (4, 2048, 2048),
                                                         (2, 4096, 4096), (8, 1024, 4096)]):
        g = torch.randn(batch, m, n, device="cuda", dtype=torch.bfloat16)
        flops = batch * ns_flops(m, n, 5)
        coeffs = (3.4445, -4.7750, 2.0315)
        ours = _time_cuda(lambda g=g: newton_schulz(g, steps=5, backend="triton"))
        torch_ns = _time_cuda(lambda g=g: [_muon._zeropower_via_newtonschulz(
            x, coeffs, 5, 1e-7) for x in g])  # noqa: B023 - called in this iteration
        rows.append(_row(f"newton_schulz {batch}x{m}x{n}", ours, flops, peak,
                         vs="torch.optim.Muon NS", speedup=torch_ns / ours,
                         torch_ms=torch_ns * 1e3))
    return rows


def _bench_attention(quick: bool, peak: tuple[float, float] | None) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    from workbench.kernels.attention import attention

    flex = torch.compile(flex_attention)
    rows = []
    for b, h, t, d in ([(4, 16, 2048, 128)] if quick else [(4, 16, 2048, 128),
                                                           (2, 16, 4096, 128),
                                                           (8, 32, 1024, 64)]):
        q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        flops = 2 * b * h * t * t * d  # causal: half of 4*B*H*T*T*D
        mask = create_block_mask(lambda b_, h_, qi, ki: qi >= ki, None, None, t, t,
                                 device="cuda")
        ours = _time_cuda(lambda q=q, k=k, v=v: attention(q, k, v, backend="triton"))
        sdpa = _time_cuda(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True))
        flexed = _time_cuda(lambda q=q, k=k, v=v, mask=mask: flex(
            q, k, v, block_mask=mask, return_aux=AuxRequest(max_scores=True)))
        rows.append(_row(f"attention fwd B{b} H{h} T{t} D{d}", ours, flops, peak,
                         vs="sdpa / flex+max_scores", sdpa_speedup=sdpa / ours,
                         flex_speedup=flexed / ours, sdpa_ms=sdpa * 1e3, flex_ms=flexed * 1e3))
    return rows


def _bench_logprobs(quick: bool, peak: tuple[float, float] | None) -> list[dict[str, Any]]:
    import torch

    from workbench.kernels.logprobs import token_logprobs

    rows = []
    for n, d, vocab in ([(8192, 2048, 32768)] if quick else [(8192, 2048, 32768),
                                                             (16384, 4096, 151936)]):
        hidden = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
        weight = torch.randn(vocab, d, device="cuda", dtype=torch.bfloat16) * d ** -0.5
        targets = torch.randint(0, vocab, (n,), device="cuda")

        def naive(hidden: Any = hidden, weight: Any = weight, targets: Any = targets) -> Any:
            logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1)
            return logp.gather(1, targets[:, None])[:, 0], -(logp.exp() * logp).sum(-1)

        flops = 2 * n * d * vocab
        torch.cuda.reset_peak_memory_stats()
        ours = _time_cuda(lambda h=hidden, w=weight, t=targets: token_logprobs(
            h, w, t, backend="triton"))
        ours_mem = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        base = _time_cuda(naive)
        base_mem = torch.cuda.max_memory_allocated()
        rows.append(_row(f"logprobs N{n} d{d} V{vocab}", ours, flops, peak, vs="naive",
                         speedup=base / ours, naive_ms=base * 1e3,
                         peak_mib=ours_mem / 2**20, naive_peak_mib=base_mem / 2**20))
    return rows


def interpreter_checks(progress: Console | None) -> dict[str, Any]:
    """Every kernel under TRITON_INTERPRET=1 against its torch reference (subprocess:
    the variable must be set before triton is imported)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    say(progress, "no GPU: running the kernels under the Triton interpreter against their "
                  "torch references (small shapes)")
    r = subprocess.run([sys.executable, "-m", "workbench.bench.kernels_check"], env=env,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"interpreter checks failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_kernels(quick: bool = False, progress: Console | None = None) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        say(progress, "the GPU figures (TFLOP/s, fraction of peak) need a CUDA device")
        checks = interpreter_checks(progress)
        return {"device": "cpu", "gpu_figures": "need a CUDA GPU; none here",
                **{f"max_abs_err {k}" if not k.endswith("_s") else f"seconds {k[:-2]}": v
                   for k, v in checks.items()}}
    name = torch.cuda.get_device_name()
    peak = device_peak(name)
    rows: list[dict[str, Any]] = []
    for label, fn in (("newton_schulz", _bench_ns), ("attention", _bench_attention),
                      ("logprobs", _bench_logprobs)):
        say(progress, f"{label} on {name} ...")
        rows += fn(quick, peak)
    flat = {f"{row['name']} {k}": v for row in rows for k, v in row.items()
            if k not in ("name", "vs")}
    return {"device": name, "peak_bf16_tflops": peak[0] if peak else None,
            "peak_tb_per_s": peak[1] if peak else None, **flat}

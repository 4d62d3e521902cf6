"""Kernel checks on CUDA: each Triton kernel of `workbench.kernels` against its torch
twin at the shapes training uses, with times and the kernel/torch ratio.

Why at real shapes: the interpreter tests (tests/test_kernels_*.py) run tiny shapes
in numpy; tiling bugs that need many tiles, bf16 accumulation over long rows, and
compiler problems of a given GPU only show at full size on the device.

- kernels/newton_schulz: NS5 of a 768 x 3072 and a 4096 x 4096 fp32 gradient (bf16
  inside, like Muon) against torch.optim.Muon's own NS (``torch.optim._muon``'s helper
  where this torch has it, else our op-for-op twin ``newton_schulz_ref``).
- kernels/attention: causal GQA attention, T = 2048, head dims 64 and 128, forward and
  backward in bf16 against SDPA (output and gradients) and against flex_attention
  with ``AuxRequest(max_scores=True)`` (the max logits), plus an exact fp32 max logit.
- kernels/logprobs: token log-probs and entropy at Qwen's vocabulary (151,936) against
  the fp32 reference, timed and peak-memory-measured against the naive
  logits -> log_softmax path.

Without CUDA (CPU mode), kernels/interpreter runs every kernel under the Triton
interpreter at small shapes against its torch twin (`python -m
workbench.bench.kernels_check`, as `wb bench kernels` does on a CPU).

The comparisons are `workbench.selftest.compare`'s; their tolerances say why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from workbench.selftest import Context, Outcome, check
from workbench.selftest.compare import (
    ATTN_GRAD,
    ATTN_OUT,
    LOGPROBS,
    MAX_LOGIT,
    NS,
    add,
    compare,
    speed,
    time_cuda,
)

NS_SHAPES = ((768, 3072), (4096, 4096))
ATTN_SHAPE = {"batch": 2, "heads": 16, "kv_heads": 4, "seq": 2048}  # GQA 4:1
ATTN_HEAD_DIMS = (64, 128)
VOCAB = 151_936  # Qwen2.5 / Qwen3
LOGPROBS_D = 1536  # Qwen2.5-1.5B's hidden size
LOGPROBS_TOKENS = {True: 4096, False: 8192}  # quick, full
LOGPROBS_CHUNK = 1024  # rows per chunk of the fp32 reference (bounds its memory)
# The largest error each interpreter check may show (fp32 at small shapes; NS runs in
# bf16 inside, so its outputs carry bf16 rounding: entries near 0.1, ulp 2^-11).
INTERPRETER_TOL = {"ns ": 3e-2, "attention ": 1e-4, "logprobs": 1e-4, "entropy": 1e-4}


def iterations(ctx: Context) -> int:
    return 5 if ctx.quick else 20


def judge_interpreter(errors: dict[str, float]) -> Outcome:
    """Each interpreter error against its bound (INTERPRETER_TOL by key prefix); the
    ``*_s`` entries are the checks' seconds."""
    out = Outcome()
    for key, value in errors.items():
        if key.endswith("_s"):
            out.figures[f"seconds_{key[:-2]}"] = value
            continue
        bound = next((t for p, t in INTERPRETER_TOL.items() if key.startswith(p)), None)
        name = key.replace(" ", "_")
        out.figures[f"{name}_max_abs_err"] = value
        if bound is None:
            out.require(False, f"{key}: no bound known for this figure")
        else:
            out.require(math.isfinite(value) and value <= bound,
                        f"{key}: max abs err {value:.2e} > {bound:.0e}")
    out.require(any(not k.endswith("_s") for k in errors), "the interpreter checks reported "
                                                             "nothing")
    return out


@check("kernels/interpreter", needs=("triton", "no-cuda"),
       summary="every Triton kernel under TRITON_INTERPRET=1 vs its torch twin, small shapes")
def interpreter_check(ctx: Context) -> Outcome:
    from workbench.bench.kernels import interpreter_checks

    out = judge_interpreter(interpreter_checks(None))
    worst = max((v for k, v in out.figures.items() if k.endswith("_max_abs_err")), default=0.0)
    out.headline = f"NS, attention fwd+bwd, logprobs: max abs err {worst:.1e}"
    return out



def torch_muon_ns() -> tuple[Callable[[Any], Any], str]:
    """torch.optim.Muon's Newton-Schulz on one matrix, and what it is called."""
    from workbench.kernels.newton_schulz import NS_COEFFICIENTS, newton_schulz_ref

    try:
        from torch.optim._muon import _zeropower_via_newtonschulz
    except ImportError:
        return (lambda g: newton_schulz_ref(g, steps=5)), "newton_schulz_ref (torch-equal twin)"
    # Its input is fp32 here, so its in-place division hits its own bf16 copy.
    return (lambda g: _zeropower_via_newtonschulz(g, NS_COEFFICIENTS, 5, 1e-7),
            "torch.optim._muon._zeropower_via_newtonschulz")


def ns_case(g: Any, twin: Callable[[Any], Any], iters: int, label: str,
            time_fn: Callable[..., float] = time_cuda) -> Outcome:
    """One NS comparison and timing (``time_fn``: CUDA events on a GPU; tests pass a
    CPU timer and run it under the Triton interpreter)."""
    from workbench.kernels.newton_schulz import newton_schulz

    out = Outcome()
    ours = newton_schulz(g, steps=5, backend="triton")
    add(out, compare(label, ours, twin(g), NS))
    kernel_s = time_fn(lambda: newton_schulz(g, steps=5, backend="triton"), iters)
    torch_s = time_fn(lambda: twin(g), iters)
    out.figures.update(speed(label, kernel_s, torch_s))
    return out


@check("kernels/newton_schulz", needs=("cuda", "triton"),
       summary="Muon NS5 768x3072 and 4096x4096 vs torch.optim.Muon's NS, bf16")
def newton_schulz_check(ctx: Context) -> Outcome:
    import torch

    twin, name = torch_muon_ns()
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = Outcome(detail={"twin": name})
    for m, n in NS_SHAPES:
        g = torch.randn(m, n, device="cuda", generator=gen)
        out.merge(ns_case(g, twin, iterations(ctx), f"{m}x{n}"))
    big = f"{NS_SHAPES[-1][0]}x{NS_SHAPES[-1][1]}"
    out.headline = (f"rel err ≤ {max(out.figures[f'{m}x{n}_rel_err'] for m, n in NS_SHAPES):.1e}; "
                    f"{big} {out.figures[f'{big}_ms']:.2f} ms, "
                    f"{out.figures[f'{big}_kernel_over_torch']:.2f}x torch")
    return out


def exact_max_logits(q: Any, k: Any) -> Any:
    """The causal max of q.k/sqrt(D) per (batch, query head), in fp32, one batch row and
    head group at a time (the [T, T] scores of one head at once)."""
    import torch

    B, H, T, D = q.shape
    groups = H // k.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    out = torch.empty(B, H, dtype=torch.float32, device=q.device)
    for b in range(B):
        for h in range(H):
            s = (q[b, h].float() @ k[b, h // groups].float().T) * D**-0.5
            out[b, h] = s.masked_fill(~causal, float("-inf")).amax()
    return out


def attention_case(q: Any, k: Any, v: Any, dout: Any, *, flex: Callable[..., Any] | None,
                   iters: int, label: str, time_fn: Callable[..., float] = time_cuda,
                   ) -> Outcome:
    """Our kernel (forward, backward, max logits) against SDPA, flex (when given) and
    the exact fp32 max logits, with fwd+bwd times. q [B, H, T, D]; k, v [B, Hkv, T, D]."""
    import torch
    import torch.nn.functional as F

    from workbench.kernels.attention import attention

    out = Outcome()
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]

    def ours() -> tuple[Any, Any, tuple[Any, ...]]:
        o, m = attention(*leaves, backend="triton")
        return o, m, torch.autograd.grad(o, leaves, dout)

    def sdpa() -> tuple[Any, tuple[Any, ...]]:
        o = F.scaled_dot_product_attention(*leaves, is_causal=True,
                                           enable_gqa=k.size(1) != q.size(1))
        return o, torch.autograd.grad(o, leaves, dout)

    o, m, grads = ours()
    o_ref, grads_ref = sdpa()
    add(out, compare(f"{label}_out", o, o_ref, ATTN_OUT))
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref, strict=True):
        add(out, compare(f"{label}_{name}", g, g_ref, ATTN_GRAD))
    add(out, compare(f"{label}_max_logit_vs_fp32", m, exact_max_logits(q, k), MAX_LOGIT))
    kernel_s = time_fn(ours, iters)
    out.figures.update(speed(f"{label}_fwd_bwd_vs_sdpa", kernel_s, time_fn(sdpa, iters)))
    if flex is not None:
        def flexed() -> tuple[Any, Any]:
            o_f, aux = flex(*leaves)
            return aux.max_scores, torch.autograd.grad(o_f, leaves, dout)

        max_scores, _ = flexed()
        add(out, compare(f"{label}_max_logit_vs_flex", m, max_scores.amax(dim=-1).float(),
                         MAX_LOGIT))
        out.figures.update(speed(f"{label}_fwd_bwd_vs_flex", kernel_s, time_fn(flexed, iters)))
    return out


def compiled_flex(seq: int, gqa: bool) -> Callable[..., Any]:
    """flex_attention, compiled, causal, asked for its max scores (what the GPT uses)."""
    import torch
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, seq, seq, device="cuda")
    fn = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: fn(q, k, v, block_mask=mask, enable_gqa=gqa,
                              return_aux=AuxRequest(max_scores=True))


@check("kernels/attention", needs=("cuda", "triton"),
       summary="flash attention fwd+bwd, T 2048, D 64/128, causal GQA, max logits vs "
               "SDPA and flex")
def attention_check(ctx: Context) -> Outcome:
    import torch

    s = ATTN_SHAPE
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = Outcome()
    flex = compiled_flex(s["seq"], gqa=s["kv_heads"] != s["heads"])
    for d in ATTN_HEAD_DIMS:
        ctx.say(f"  attention D={d} (flex compiles on first use)")

        def rnd(heads: int, d: int = d) -> Any:
            return torch.randn(s["batch"], heads, s["seq"], d, device="cuda",
                               dtype=torch.bfloat16, generator=gen)

        q, k, v = rnd(s["heads"]), rnd(s["kv_heads"]), rnd(s["kv_heads"])
        out.merge(attention_case(q, k, v, rnd(s["heads"]), flex=flex,
                                 iters=iterations(ctx), label=f"d{d}"))
    worst = max(v for k, v in out.figures.items() if k.endswith("_rel_err"))
    out.headline = (f"rel err ≤ {worst:.1e}; D128 fwd+bwd "
                    f"{out.figures['d128_fwd_bwd_vs_sdpa_kernel_over_torch']:.2f}x SDPA, "
                    f"{out.figures.get('d128_fwd_bwd_vs_flex_kernel_over_torch', 0):.2f}x flex")
    return out


def reference_logprobs(hidden: Any, weight: Any, targets: Any,
                       chunk: int = LOGPROBS_CHUNK) -> tuple[Any, Any]:
    """token_logprobs_ref (fp32, materialized) a chunk of rows at a time."""
    import torch

    from workbench.kernels.logprobs import token_logprobs_ref

    parts = [token_logprobs_ref(hidden[i:i + chunk], weight, targets[i:i + chunk])
             for i in range(0, hidden.size(0), chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def naive_logprobs(hidden: Any, weight: Any, targets: Any) -> tuple[Any, Any]:
    """What the kernel replaces: [N, V] logits, log_softmax, gather, entropy."""
    import torch

    logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1)
    return logp.gather(1, targets[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


def peak_bytes(fn: Callable[[], Any]) -> int:
    """CUDA memory allocated at the peak of ``fn`` beyond what was allocated before."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    del result
    return torch.cuda.max_memory_allocated() - base


def logprobs_case(hidden: Any, weight: Any, targets: Any, *, iters: int,
                  time_fn: Callable[..., float] = time_cuda,
                  peak_fn: Callable[[Callable[[], Any]], int] | None = peak_bytes) -> Outcome:
    """token_logprobs (Triton) against the fp32 reference, then time and peak memory
    against the naive path; the kernel must need less than half the naive memory."""
    from workbench.kernels.logprobs import token_logprobs

    out = Outcome()

    def ours() -> tuple[Any, Any]:
        return token_logprobs(hidden, weight, targets, backend="triton")

    lp, ent = ours()
    lp_ref, ent_ref = reference_logprobs(hidden, weight, targets)
    add(out, compare("logprobs", lp, lp_ref, LOGPROBS))
    add(out, compare("entropy", ent, ent_ref, LOGPROBS))
    out.figures.update(speed("fwd", time_fn(ours, iters),
                             time_fn(lambda: naive_logprobs(hidden, weight, targets), iters)))
    if peak_fn is not None:
        mine = peak_fn(ours)
        naive = peak_fn(lambda: naive_logprobs(hidden, weight, targets))
        out.figures.update({"peak_mib": mine / 2**20, "naive_peak_mib": naive / 2**20,
                            "peak_over_naive": mine / naive if naive else 0.0})
        out.require(mine < naive / 2, f"peak memory {mine / 2**20:.0f} MiB is not below half "
                                      f"the naive path's {naive / 2**20:.0f} MiB")
    return out


@check("kernels/logprobs", needs=("cuda", "triton"),
       summary="token log-probs + entropy at vocab 151,936 vs fp32 reference; time and "
               "peak memory vs the naive path")
def logprobs_check(ctx: Context) -> Outcome:
    import torch

    n = LOGPROBS_TOKENS[ctx.quick]
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(n, LOGPROBS_D, device="cuda", dtype=torch.bfloat16, generator=gen)
    weight = (torch.randn(VOCAB, LOGPROBS_D, device="cuda", generator=gen)
              * LOGPROBS_D**-0.5).to(torch.bfloat16)
    targets = torch.randint(0, VOCAB, (n,), device="cuda", generator=gen)
    out = logprobs_case(hidden, weight, targets, iters=iterations(ctx))
    out.detail["shape"] = {"tokens": n, "d": LOGPROBS_D, "vocab": VOCAB}
    f = out.figures
    out.headline = (f"N {n}: rel err {f['logprobs_rel_err']:.1e}; {f['fwd_ms']:.1f} ms "
                    f"({f['fwd_kernel_over_torch']:.2f}x naive), peak {f['peak_mib']:.0f} vs "
                    f"{f['naive_peak_mib']:.0f} MiB")
    return out

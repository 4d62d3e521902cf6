"""The kernels' correctness on this machine: `TRITON_INTERPRET=1 python -m
workbench.bench.kernels_check` prints one JSON line of the largest absolute
errors of each Triton kernel against its torch reference, at small shapes (the
interpreter runs a kernel's programs one by one in numpy). Used by
`wb bench kernels` where there is no GPU."""

from __future__ import annotations

import json
import time
from typing import Any


def _err(a: Any, b: Any) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def check_newton_schulz() -> dict[str, float]:
    import torch

    from workbench.kernels.newton_schulz import newton_schulz, newton_schulz_ref

    g = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    for b, m, n in ((2, 16, 24), (2, 32, 32)):
        x = torch.randn(b, m, n, generator=g)
        out[f"ns {b}x{m}x{n}"] = _err(newton_schulz(x, steps=5, backend="triton"),
                                      newton_schulz_ref(x, steps=5))
    return out


def check_attention() -> dict[str, float]:
    import torch

    from workbench.kernels.attention import attention, attention_ref

    g = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    q, k, v = (torch.randn(1, 2, 33, 16, generator=g, requires_grad=True) for _ in range(3))
    o, m = attention(q, k, v, backend="triton")
    o_ref, m_ref = attention_ref(q, k, v)
    dout = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), dout)
    grads_ref = torch.autograd.grad(o_ref, (q, k, v), dout)
    out["attention out"] = _err(o, o_ref)
    out["attention max_logit"] = _err(m, m_ref)
    for name, a, b in zip(("dq", "dk", "dv"), grads, grads_ref, strict=True):
        out[f"attention {name}"] = _err(a, b)
    return out


def check_logprobs() -> dict[str, float]:
    import torch

    from workbench.kernels.logprobs import token_logprobs, token_logprobs_ref

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g)
    weight = torch.randn(101, 16, generator=g)
    targets = torch.randint(0, 101, (37,), generator=g)
    lp, ent = token_logprobs(hidden, weight, targets, backend="triton")
    lp_ref, ent_ref = token_logprobs_ref(hidden, weight, targets)
    return {"logprobs": _err(lp, lp_ref), "entropy": _err(ent, ent_ref)}


def main() -> None:
    results: dict[str, Any] = {}
    for check in (check_newton_schulz, check_attention, check_logprobs):
        t0 = time.perf_counter()
        results.update(check())
        results[f"{check.__name__}_s"] = time.perf_counter() - t0
    print(json.dumps(results))


if __name__ == "__main__":
    main()

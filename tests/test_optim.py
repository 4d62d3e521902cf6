"""workbench.optim: parameter routing, Muon (vs torch.optim.Muon), QK-Clip, distributed Muon."""

from __future__ import annotations

import copy
import math
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.optim import (
    ClipResult,
    Muon,
    adjust_lr,
    build_optimizers,
    newton_schulz,
    qk_clip,
    route,
)

try:  # the real model, when it is importable; the stand-ins below mirror its layout
    from workbench.models.gpt import GPT, GPTConfig
except Exception:  # pragma: no cover - depends on a file someone else is writing
    GPT = GPTConfig = None


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one intra-op thread is fastest, and on a busy 2-core machine a
    2-thread pool turns a microsecond bf16 matmul into milliseconds of barrier waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- stand-ins


class Attn(nn.Module):
    def __init__(self, d: int, n_head: int, n_kv_head: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, d // n_head
        hd = self.head_dim
        self.q_proj = nn.Linear(d, n_head * hd, bias=False)
        self.k_proj = nn.Linear(d, n_kv_head * hd, bias=False)
        self.v_proj = nn.Linear(d, n_kv_head * hd, bias=False)
        self.o_proj = nn.Linear(n_head * hd, d, bias=False)


class Mlp(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)


class Blk(nn.Module):
    def __init__(self, d: int, n_head: int, n_kv_head: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d)
        self.attn = Attn(d, n_head, n_kv_head)
        self.norm2 = nn.RMSNorm(d)
        self.mlp = Mlp(d, 3 * d)


class TinyGPT(nn.Module):
    """Same parameter names as workbench.models.gpt.GPT."""

    def __init__(self, vocab: int = 50, d: int = 16, n_layer: int = 2, n_head: int = 4,
                 n_kv_head: int | None = None, tie: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Blk(d, n_head, n_kv_head or n_head) for _ in range(n_layer))
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight


HIDDEN = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# ----------------------------------------------------------------------------- routing


def test_route_tied_model() -> None:
    model = TinyGPT(tie=True)
    r = route(model)
    muon = [n for n, _ in r.muon]
    adamw = [n for n, _ in r.adamw]
    assert muon == [f"blocks.{i}.{m}.weight" for i in range(2) for m in HIDDEN]
    assert set(adamw) == {"embed.weight", "norm.weight"} | {
        f"blocks.{i}.norm{j}.weight" for i in range(2) for j in (1, 2)}
    # the tied embedding / head appears exactly once, under the first name
    assert "lm_head.weight" not in muon + adamw
    all_params = [p for _, p in r.muon + r.adamw]
    assert len({id(p) for p in all_params}) == len(all_params) == len(list(model.parameters()))
    # every 1-D parameter goes to AdamW
    assert all(p.ndim == 2 for _, p in r.muon)
    assert all(p.ndim == 1 for n, p in r.adamw if n != "embed.weight")

    rows = {row["name"]: row for row in r.table()}
    assert set(rows) == set(muon + adamw)
    emb = rows["embed.weight"]
    assert emb["optimizer"] == "adamw" and emb["shape"] == [50, 16] and emb["numel"] == 800
    assert "embedding" in emb["reason"] and "lm_head.weight" in emb["reason"]
    q = rows["blocks.0.attn.q_proj.weight"]
    assert q == {"name": "blocks.0.attn.q_proj.weight", "shape": [16, 16], "numel": 256,
                 "optimizer": "muon", "reason": "2-D hidden matrix"}
    assert rows["norm.weight"]["reason"] == "norm"
    assert set(r.summary()) == {"muon", "adamw"}
    assert r.summary()["muon"]["tensors"] == 14


def test_route_untied_head_bias_frozen_and_text() -> None:
    model = TinyGPT(tie=False)
    model.blocks[0].mlp.up_proj.bias = nn.Parameter(torch.zeros(48))  # a bias
    model.scale = nn.Parameter(torch.ones(()))  # 0-D
    model.conv = nn.Parameter(torch.zeros(2, 3, 4))  # 3-D
    model.frozen = nn.Parameter(torch.zeros(4, 4), requires_grad=False)
    r = route(model)
    muon = {n for n, _ in r.muon}
    adamw = {n for n, _ in r.adamw}
    assert "lm_head.weight" in adamw and "embed.weight" in adamw
    assert {"blocks.0.mlp.up_proj.bias", "scale", "conv"} <= adamw
    assert "frozen" not in muon | adamw
    assert len(muon) == 14
    rows = {row["name"]: row for row in r.table()}
    assert rows["lm_head.weight"]["reason"].startswith("LM head")
    assert rows["blocks.0.mlp.up_proj.bias"]["reason"] == "bias"
    assert rows["frozen"]["optimizer"] == "none"
    assert rows["scale"]["shape"] == [] and rows["scale"]["numel"] == 1

    # head detection by name is configurable
    assert "lm_head.weight" in {n for n, _ in route(model, head_names=("nothing",)).muon}

    text = r.format_table()
    lines = text.splitlines()
    assert lines[0].split() == ["name", "shape", "numel", "optimizer", "reason"]
    col = lines[0].index("optimizer")
    body = lines[2:-1]
    assert len(body) == len(r.table())
    for line in body:  # aligned: the optimizer column starts at the same offset
        assert line[col:].split()[0] in ("muon", "adamw", "none")
    q = next(ln for ln in body if ln.startswith("blocks.0.attn.q_proj.weight"))
    assert "16x16" in q and "256" in q and "2-D hidden matrix" in q
    assert lines[-1].startswith("total: ") and "muon: 14 tensors" in lines[-1]


@pytest.mark.skipif(GPT is None, reason="workbench.models.gpt not importable yet")
def test_route_real_gpt() -> None:
    for tie in (True, False):
        model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=4, n_kv_head=2,
                              d_model=32, tie_embeddings=tie))
        r = route(model)
        assert [n for n, _ in r.muon] == [f"blocks.{i}.{m}.weight"
                                          for i in range(2) for m in HIDDEN]
        adamw = {n for n, _ in r.adamw}
        assert "embed.weight" in adamw and ("lm_head.weight" in adamw) != tie
        assert len(r.muon) + len(r.adamw) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- Muon


SHAPES = [(32, 32), (32, 32), (64, 16), (64, 16), (16, 48), (8, 8)]  # square, tall, wide


def _problem(shapes=SHAPES, steps: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen) * 0.1 for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    return init, grads


def _run(opt_cls, init, grads, **kwargs) -> list[torch.Tensor]:
    params = [nn.Parameter(t.clone()) for t in init]
    opt = opt_cls(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def test_newton_schulz_batched_equals_single_and_torch() -> None:
    from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns

    gen = torch.Generator().manual_seed(1)
    for shape in [(24, 24), (40, 12), (12, 40)]:
        G = torch.randn(3, *shape, generator=gen)
        batched = newton_schulz(G)
        assert batched.dtype == torch.bfloat16 and batched.shape == G.shape
        for i in range(3):
            single = newton_schulz(G[i])
            ref = torch_ns(G[i], (3.4445, -4.7750, 2.0315), 5, 1e-7)
            # one-matrix path: the same op sequence as torch.optim.Muon, bit for bit
            assert torch.equal(single, ref)
            # batched path: baddbmm instead of addmm; allow 2 bf16 ulps (2^-7 relative)
            # of the largest entry, in case a BLAS reduces a batch in another order
            torch.testing.assert_close(batched[i].float(), single.float(), rtol=0,
                                       atol=2**-7 * single.float().abs().max().item())
            s = torch.linalg.svdvals(single.float())
            assert 0.4 < s.min() and s.max() < 1.6  # roughly orthogonal, not exactly
    G = torch.randn(5, 5, generator=gen).bfloat16()
    before = G.clone()
    newton_schulz(G)
    assert torch.equal(G, before)  # input never modified
    with pytest.raises(ValueError):
        newton_schulz(torch.randn(5))


@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", "original"])
def test_muon_matches_torch_muon(adjust_lr_fn: str) -> None:
    init, grads = _problem()
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True,
              adjust_lr_fn=adjust_lr_fn)
    ours = _run(Muon, init, grads, **kw)
    ref = _run(torch.optim.Muon, init, grads, **kw)
    for p0, a, b in zip(init, ours, ref, strict=True):
        # Tolerance: grads, momentum and weight decay are the same fp32 ops, so the only
        # possible difference is the bf16 Newton-Schulz output (ours batches same-shape
        # matrices). Its entries are below ~1.5 (singular values 0.5..1.5); allow 4 bf16
        # ulps (4 * 2^-8 relative) of that per step, times the shape-adjusted lr, 3 steps.
        adj = adjust_lr(0.02, adjust_lr_fn, p0.shape)
        atol = 3 * adj * 1.5 * 4 * 2**-8
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
        assert (b - p0).abs().max() > 5 * atol  # the test has teeth: params really moved


def test_muon_matches_torch_without_nesterov_and_state() -> None:
    init, grads = _problem(shapes=[(20, 10), (20, 10), (10, 30)], steps=2)
    kw = dict(lr=0.05, weight_decay=0.0, nesterov=False, adjust_lr_fn="original")
    params = [nn.Parameter(t.clone()) for t in init]
    ref_params = [nn.Parameter(t.clone()) for t in init]
    ours, ref = Muon(params, **kw), torch.optim.Muon(ref_params, **kw)
    for step_grads in grads:
        for p, q, g in zip(params, ref_params, step_grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=2 * 0.05 * 2 * 1.5 * 4 * 2**-8)
        assert torch.equal(ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])
    # torch's state_dict loads into ours (same state key), and the next step still agrees
    copies = [nn.Parameter(q.detach().clone()) for q in ref_params]
    ours2 = Muon(copies, **kw)
    ours2.load_state_dict(copy.deepcopy(ref.state_dict()))  # else buffers are shared
    for p, q, g in zip(copies, ref_params, grads[0], strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    ours2.step()
    ref.step()
    for p, q in zip(copies, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0.05 * 2 * 1.5 * 4 * 2**-8)


def test_muon_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.zeros(4))])
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.zeros(2, 2, 2))])
    with pytest.raises(ValueError, match="match_rms_adamw"):
        Muon([nn.Parameter(torch.zeros(4, 4))], adjust_lr_fn="nope")
    assert adjust_lr(1.0, "match_rms_adamw", (16, 64)) == pytest.approx(0.2 * 8)
    assert adjust_lr(1.0, "original", (64, 16)) == pytest.approx(2.0)
    assert adjust_lr(1.0, "original", (16, 64)) == pytest.approx(1.0)


def test_ns_dtype_float32() -> None:
    """fp32 NS (for CPUs without bf16 matmuls) agrees with bf16 NS to bf16 precision."""
    G = torch.randn(2, 24, 40, generator=torch.Generator().manual_seed(5))
    o32 = newton_schulz(G, dtype=torch.float32)
    assert o32.dtype == torch.float32
    torch.testing.assert_close(o32, newton_schulz(G).float(), rtol=0, atol=0.05)
    init, grads = _problem(shapes=[(24, 40), (40, 24)], steps=2)
    a = _run(Muon, init, grads, lr=0.02, ns_dtype=torch.float32)
    b = _run(Muon, init, grads, lr=0.02)
    for p0, x, y in zip(init, a, b, strict=True):
        adj = adjust_lr(0.02, "match_rms_adamw", p0.shape)
        torch.testing.assert_close(x, y, rtol=0, atol=2 * adj * 0.05)
    with pytest.raises(ValueError, match="bf16"):
        build_optimizers(TinyGPT(), "muon", lr=1e-3, weight_decay=0.1, impl="torch",
                         ns_dtype=torch.float32)


def test_muon_skips_params_without_grad() -> None:
    a, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4, 4))
    before = b.detach().clone()
    a.grad = torch.randn(4, 4)
    Muon([a, b], lr=0.1).step()
    assert torch.equal(b.detach(), before) and b not in Muon([a, b]).state


# ----------------------------------------------------------------------------- build_optimizers


def _fill_grads(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


@pytest.mark.parametrize("name", ["muon", "muonclip", "adamw"])
@pytest.mark.parametrize("impl", ["ours", "torch"])
def test_build_optimizers(name: str, impl: str) -> None:
    model = TinyGPT(tie=False)
    opts = build_optimizers(model, name, lr=1e-3, weight_decay=0.1, impl=impl)
    ids = [id(p) for o in opts for g in o.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    if name == "adamw":
        assert len(opts) == 1 and type(opts[0]) is torch.optim.AdamW
        assert opts[0].defaults["betas"] == (0.9, 0.95)
    else:
        muon_cls = Muon if impl == "ours" else torch.optim.Muon
        assert [type(o) for o in opts] == [muon_cls, torch.optim.AdamW]
        routed = [id(p) for _, p in route(model).muon]
        assert [id(p) for p in opts[0].param_groups[0]["params"]] == routed
        assert opts[0].defaults["adjust_lr_fn"] == "match_rms_adamw"
        assert opts[0].defaults["lr"] == opts[1].defaults["lr"] == 1e-3
    before = [p.detach().clone() for p in model.parameters()]
    _fill_grads(model)
    for o in opts:
        o.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_build_optimizers_errors() -> None:
    model = TinyGPT()
    with pytest.raises(ValueError, match="muon, muonclip, adamw"):
        build_optimizers(model, "sgd", lr=1e-3, weight_decay=0.1)
    with pytest.raises(ValueError, match="ours, torch"):
        build_optimizers(model, "muon", lr=1e-3, weight_decay=0.1, impl="jax")
    with pytest.raises(ValueError, match="distributed"):
        build_optimizers(model, "muon", lr=1e-3, weight_decay=0.1, impl="torch",
                         distributed=True)


# ----------------------------------------------------------------------------- QK-Clip


def naive_max_logits(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Materialized reference: per query head, causal amax of (x Wq_h^T)(x Wk_g^T)^T/sqrt(d)."""
    hd, T = attn.head_dim, x.shape[1]
    group = attn.n_head // attn.n_kv_head
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    out = []
    with torch.no_grad():
        for h in range(attn.n_head):
            g = h // group
            q = x @ attn.q_proj.weight[h * hd:(h + 1) * hd].T
            k = x @ attn.k_proj.weight[g * hd:(g + 1) * hd].T
            scores = (q @ k.mT) / math.sqrt(hd)
            out.append(scores.masked_fill(~causal, float("-inf")).amax())
    return torch.stack(out)


def _clip_setup(n_kv_head: int, boost: dict[tuple[int, int], float]):
    torch.manual_seed(0)
    layers = [Attn(32, 4, n_kv_head) for _ in range(2)]
    hd = 8
    with torch.no_grad():
        for (layer, h), factor in boost.items():  # blow up chosen heads' query rows
            layers[layer].q_proj.weight[h * hd:(h + 1) * hd] *= factor
    x = torch.randn(2, 12, 32)
    S = torch.stack([naive_max_logits(a, x) for a in layers])
    return layers, x, S


def _snapshot(layers):
    return [(a.q_proj.weight.detach().clone(), a.k_proj.weight.detach().clone()) for a in layers]


@pytest.mark.parametrize("n_kv_head", [4, 2])  # MHA, GQA
def test_qk_clip(n_kv_head: int) -> None:
    boost = {(0, 1): 40.0, (1, 3): 60.0}
    layers, x, S = _clip_setup(n_kv_head, boost)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    for lh in boost:
        mask[lh] = True
    tau = float(S[~mask].max()) * 2  # above every normal head, below every boosted one
    assert bool((S[mask] > tau).all())
    before = _snapshot(layers)

    res = qk_clip(layers, S, tau=tau)
    assert isinstance(res, ClipResult)
    assert res.clipped == 2 and torch.equal(res.mask, mask)
    torch.testing.assert_close(res.gamma[mask], tau / S[mask])
    assert torch.equal(res.gamma[~mask], torch.ones(6))
    assert res.to_event()["heads"] == [[0, 1], [1, 3]]

    hd, group = 8, 4 // n_kv_head
    for layer, (attn, (q0, k0)) in enumerate(zip(layers, before, strict=True)):
        S_new = naive_max_logits(attn, x)
        for h in range(4):
            rows = slice(h * hd, (h + 1) * hd)
            g = float(res.gamma[layer, h])
            if mask[layer, h]:
                torch.testing.assert_close(S_new[h], torch.tensor(tau), rtol=1e-4, atol=0)
                if n_kv_head == 4:  # MHA: sqrt(gamma) on both sides
                    torch.testing.assert_close(attn.q_proj.weight[rows], q0[rows] * g**0.5)
                    torch.testing.assert_close(attn.k_proj.weight[rows], k0[rows] * g**0.5)
                else:  # GQA: gamma on the query rows alone
                    torch.testing.assert_close(attn.q_proj.weight[rows], q0[rows] * g)
            else:
                assert torch.equal(attn.q_proj.weight[rows], q0[rows])
                assert S_new[h] == S[layer, h]  # bit-identical weights, identical logit
        if n_kv_head == 4:
            for h in range(4):
                if not mask[layer, h]:
                    rows = slice(h * hd, (h + 1) * hd)
                    assert torch.equal(attn.k_proj.weight[rows], k0[rows])
        else:  # shared key heads are never touched; siblings of a clipped head keep S
            assert torch.equal(attn.k_proj.weight, k0)
            assert group == 2


def test_qk_clip_log_only_and_no_op() -> None:
    layers, x, S = _clip_setup(2, {(0, 0): 50.0})
    before = _snapshot(layers)
    res = qk_clip(layers, S, tau=float(S.median()), log_only=True)
    assert res.clipped > 0 and res.log_only
    assert (res.gamma[res.mask] < 1).all()
    for attn, (q0, k0) in zip(layers, before, strict=True):
        assert torch.equal(attn.q_proj.weight, q0) and torch.equal(attn.k_proj.weight, k0)
    res = qk_clip(layers, S, tau=float(S.max()) + 1)  # nothing over tau: nothing changes
    assert res.clipped == 0 and torch.equal(res.gamma, torch.ones_like(S))
    for attn, (q0, k0) in zip(layers, before, strict=True):
        assert torch.equal(attn.q_proj.weight, q0) and torch.equal(attn.k_proj.weight, k0)
    with pytest.raises(ValueError):
        qk_clip(layers, S[:1], tau=1.0)


@pytest.mark.skipif(GPT is None, reason="workbench.models.gpt not importable yet")
@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_qk_clip_on_real_gpt_with_rope(n_kv_head: int) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=4, n_kv_head=n_kv_head,
                          d_model=32, attn_backend="naive"))
    # Clipped heads sit in the last layer: clipping a head changes the input of every
    # later layer, so an earlier layer's clip would move later layers' logits too.
    with torch.no_grad():
        model.blocks[1].attn.q_proj.weight[0:8] *= 300.0  # head 0 of layer 1
        model.blocks[1].attn.q_proj.weight[24:32] *= 200.0  # head 3 of layer 1
    idx = torch.randint(0, 64, (2, 16))
    S = model.attention_max_logits(idx)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1, 0] = mask[1, 3] = True
    tau = float(S[~mask].max()) * 2
    assert bool((S[mask] > tau).all())
    res = qk_clip([b.attn for b in model.blocks], S, tau=tau)
    assert torch.equal(res.mask, mask)
    S_new = model.attention_max_logits(idx)
    torch.testing.assert_close(S_new[mask], torch.full((2,), tau), rtol=1e-4, atol=0)
    assert torch.equal(S_new[~mask], S[~mask])


# ----------------------------------------------------------------------------- distributed


DIST_SHAPES = [(8, 16), (16, 8), (8, 16), (12, 12), (8, 16), (12, 12)]  # odd bucket sizes


def _dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=30))
    import workbench.optim.muon as muon_module

    done = [0]  # matrices this rank orthogonalized
    ns = muon_module.newton_schulz

    def counting_ns(G, **kw):
        done[0] += G.shape[0] if G.ndim == 3 else 1
        return ns(G, **kw)

    muon_module.newton_schulz = counting_ns
    try:
        init, grads = _problem(DIST_SHAPES, steps=3, seed=7)
        out = _run(Muon, init, grads, lr=0.02, weight_decay=0.1, distributed=True)
        # QK-Clip under data parallelism: each rank saw a different max; both must clip
        # the union of heads by the same gamma
        torch.manual_seed(0)
        attn = Attn(16, 2, 2)
        S = torch.full((1, 2), 50.0)
        S[0, rank] = 200.0 + rank
        clip = qk_clip([attn], S, tau=100.0, distributed=True)
        torch.save({"params": out, "ns": done[0], "clip_mask": clip.mask,
                    "clip_gamma": clip.gamma, "q": attn.q_proj.weight.detach()},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_muon_matches_single_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_dist_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 60
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "distributed Muon workers timed out"
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    res0, res1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # the work was split: round-robin within each shape bucket, 3 steps
    # (8x16: 3 -> 2 + 1, 12x12: 2 -> 1 + 1, 16x8: 1 -> 1 + 0)
    assert (res0["ns"], res1["ns"]) == (3 * 4, 3 * 2)
    r0, r1 = res0["params"], res1["params"]
    for res in (res0, res1):
        assert res["clip_mask"].all()
        torch.testing.assert_close(res["clip_gamma"], torch.tensor([[100 / 200, 100 / 201]]))
    assert torch.equal(res0["q"], res1["q"])
    init, grads = _problem(DIST_SHAPES, steps=3, seed=7)
    single = _run(Muon, init, grads, lr=0.02, weight_decay=0.1)
    for a, b, s, p0 in zip(r0, r1, single, init, strict=True):
        assert torch.equal(a, b)  # replicas stay identical
        atol = 3 * adjust_lr(0.02, "match_rms_adamw", p0.shape) * 1.5 * 4 * 2**-8
        torch.testing.assert_close(a, s, rtol=0, atol=atol)

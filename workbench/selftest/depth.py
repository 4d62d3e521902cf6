"""Recurrent depth: a Huginn-format checkpoint, decoded in bf16 on the GPU.

Why: `load_huginn` and the decoder (engine/depth.py) are tested on CPU in fp32 only;
a GPU host runs them in bf16, where the recurrence (tens of core iterations per
token) could amplify rounding, and the KL exit rule compares distributions whose
bf16 noise could be mistaken for convergence.

The check writes a checkpoint in Huginn-0125's published layout and architecture
(prelude 2 / core 4 / coda 2 layers, head_dim 96, intermediate = 3.39 x hidden,
vocabulary 65,536, mean recurrence 32) scaled down to 4 heads (hidden 384), with
random weights; loads it with ``load_huginn``; decodes greedily in bf16 on CUDA with
``rule="kl"`` and the shared KV cache, keeping each position's logits and recurrence
count; then replays the same tokens, with the same recurrence count per position, in
fp32 on the CPU and compares the logits position by position (``replay`` and
``compare_logits``; tests/test_selftest.py runs them with a CPU bf16 model standing
in for the GPU one).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.selftest import Context, Outcome, check
from workbench.selftest.compare import Tolerance, add, compare

# Huginn-0125 (Geiping et al. 2025, arXiv 2502.05171; its config.json), scaled from 55 heads to 4.
PUBLISHED = {"n_embd": 5280, "n_heads": 55, "intermediate_size": 17920}
HEADS = 4
HEAD_DIM = PUBLISHED["n_embd"] // PUBLISHED["n_heads"]  # 96
HIDDEN = HEADS * HEAD_DIM  # 384
SCALED: dict[str, Any] = {
    "model_type": "huginn_raven", "architectures": ["RavenForCausalLM"],
    "n_embd": HIDDEN, "n_heads": HEADS, "n_layers": 8, "n_layers_in_prelude": 2,
    "n_layers_in_recurrent_block": 4, "n_layers_in_coda": 2, "mean_recurrence": 32,
    "mean_backprop_depth": 8, "vocab_size": 65536, "padded_vocab_size": 65536,
    "block_size": 512,
    "intermediate_size": round(HIDDEN * PUBLISHED["intermediate_size"] / PUBLISHED["n_embd"]
                               / 64) * 64,  # 1280
    "rope_base": 50000, "norm_eps": 1e-6, "qk_bias": True, "bias": False,
    "tie_embeddings": True, "injection_type": "linear", "state_init": "like-init",
}
# Per-position logits of bf16 decoding against fp32, same tokens and recurrences.
LOGITS = Tolerance(rel=5e-2)
# Where the greedy token differs, the fp32 logits must be a near-tie there: the fp32 logit
# of the bf16 run's token within TIE_REL standard deviations of the fp32 maximum. With
# 65,536 random logits the top two are often that close (measured on CPU in bf16 at
# these shapes: 1 flip in 8 positions at a gap of 0.06 std, logits rel err 2.4e-2), so a
# bound on the share of equal tokens fails by chance; wrong weights give gaps of
# several standard deviations.
TIE_REL = 0.15
DECODE = {True: (8, 16), False: (24, 32)}  # quick / full: (new tokens, max recurrences)


def huginn_state(cfg: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Random weights under Huginn's checkpoint names and layouts (fused Wqkv, qk_bias
    [2, 1, H, D], fused gate/up ``mlp.fc``, ``freqs_cis``), std ~ 0.64 / sqrt(hidden)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, n_head, inter, vocab = (cfg["n_embd"], cfg["n_heads"], cfg["intermediate_size"],
                               cfg["vocab_size"])
    std = 0.64 / math.sqrt(h)

    def rnd(*shape: int, scale: float = std) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    st = {"transformer.wte.weight": rnd(vocab, h, scale=0.4 / math.sqrt(h)),
          "transformer.adapter.weight": rnd(h, 2 * h),
          "transformer.ln_f.weight": 1 + rnd(h, scale=0.1),
          "transformer.freqs_cis": torch.zeros(1, cfg["block_size"], 1, h // n_head // 2, 2)}
    for part, n in (("prelude", cfg["n_layers_in_prelude"]),
                    ("core_block", cfg["n_layers_in_recurrent_block"]),
                    ("coda", cfg["n_layers_in_coda"])):
        for i in range(n):
            pre = f"transformer.{part}.{i}."
            for j in range(1, 5):
                st[pre + f"norm_{j}.weight"] = 1 + rnd(h, scale=0.1)
            st[pre + "attn.Wqkv.weight"] = rnd(3 * h, h)
            st[pre + "attn.qk_bias"] = rnd(2, 1, n_head, h // n_head, scale=0.3)
            st[pre + "attn.proj.weight"] = rnd(h, h)
            st[pre + "mlp.fc.weight"] = rnd(2 * inter, h)
            st[pre + "mlp.proj.weight"] = rnd(h, inter)
    return st


def write_checkpoint(folder: Path, cfg: dict[str, Any] = SCALED, seed: int = 0) -> Path:
    """A Huginn-format folder: config.json and model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(huginn_state(cfg, seed), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@dataclass
class Trace:
    """A greedy decode: the tokens fed, and per fed position its logits and recurrences."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)  # generated
    steps: list[int] = field(default_factory=list)  # recurrences per decode step
    logits: list[Any] = field(default_factory=list)  # [V] float32 per decode step, on CPU


def decode(model: Any, prompt: list[int], new_tokens: int, max_steps: int,
           rule: str = "kl", seed: int = 0) -> Trace:
    """Greedy decoding as engine/depth.generate does it (prefill all but the last prompt
    token at ``max_steps``, then one step per token with exit ``rule``, shared cache),
    keeping each step's logits and recurrence count."""
    from workbench.engine.depth import DepthDecoder

    dec = DepthDecoder(model, len(prompt) + new_tokens, "shared", max_steps, seed)
    trace = Trace(list(prompt))
    if len(prompt) > 1:
        dec.feed(prompt[:-1], max_steps)
    token = prompt[-1]
    for _ in range(new_tokens):
        logits, n = dec.step(token, rule)
        trace.logits.append(logits.float().cpu())
        trace.steps.append(n)
        token = int(logits.argmax())
        trace.tokens.append(token)
    return trace


def replay(model: Any, trace: Trace, max_steps: int, seed: int = 0) -> list[Any]:
    """The logits of every decode step of ``trace`` recomputed by ``model`` with the same
    fed tokens and the same recurrence count per position (no exit rule)."""
    from workbench.engine.depth import DepthDecoder

    dec = DepthDecoder(model, len(trace.prompt) + len(trace.tokens), "shared", max_steps, seed)
    if len(trace.prompt) > 1:
        dec.feed(trace.prompt[:-1], max_steps)
    fed = [trace.prompt[-1], *trace.tokens[:-1]]
    out = []
    for token, steps in zip(fed, trace.steps, strict=True):
        logits, _ = dec.step(token, "none", steps=steps)
        out.append(logits.float().cpu())
    return out


def compare_logits(trace: Trace, reference: list[Any], max_steps: int) -> Outcome:
    """Logits of each position within LOGITS (relative Frobenius, worst position); the
    greedy token the same, or a near-tie of the fp32 logits (TIE_REL); figures on the
    exit rule's work."""
    import torch

    out = Outcome()
    got = torch.stack(trace.logits)
    want = torch.stack(reference)
    worst = max((compare(f"pos{i}", g, w, LOGITS) for i, (g, w) in enumerate(
        zip(got, want, strict=True))), key=lambda c: c.rel)
    add(out, compare("logits", got, want, LOGITS))
    out.figures["worst_position_rel_err"] = worst.rel
    out.require(worst.ok, f"worst position: {worst.message()}")
    chosen = got.argmax(-1)
    top1 = float((chosen == want.argmax(-1)).float().mean())
    out.figures["top1_agree"] = top1
    gap = (want.amax(-1) - want.gather(-1, chosen[:, None])[:, 0]) / want.std(-1).clamp(
        min=1e-12)  # 0 where the tokens agree
    out.figures["worst_tie_gap_std"] = float(gap.max())
    far = [i for i, g in enumerate(gap.tolist()) if not g <= TIE_REL]
    out.require(not far, f"the greedy token differs at positions {far[:5]} where the fp32 "
                         f"logits are no near-tie (gap up to {float(gap.max()):.2f} std, "
                         f"allowed {TIE_REL})")
    out.figures["steps_mean"] = sum(trace.steps) / len(trace.steps)
    out.figures["early_exit_frac"] = sum(s < max_steps for s in trace.steps) / len(trace.steps)
    out.require(float(got.std()) > 0.1, "the logits are nearly constant: a degenerate "
                                         "comparison")
    return out


@check("depth/huginn-bf16", needs=("cuda",),
       summary="Huginn-format checkpoint (published shapes, scaled): load_huginn in bf16, "
               "kl exit + shared cache vs CPU fp32")
def huginn_check(ctx: Context) -> Outcome:
    import torch

    from workbench.models.recurrent_depth import load_huginn

    folder = write_checkpoint(ctx.tmp / "huginn-scaled")
    new_tokens, max_steps = DECODE[ctx.quick]
    prompt = [int(t) for t in torch.randint(
        0, SCALED["vocab_size"], (12,), generator=torch.Generator().manual_seed(1))]
    gpu = load_huginn(folder).to("cuda", torch.bfloat16)
    trace = decode(gpu, prompt, new_tokens, max_steps, rule="kl")
    del gpu
    torch.cuda.empty_cache()
    reference = replay(load_huginn(folder), trace, max_steps)
    out = compare_logits(trace, reference, max_steps)
    out.detail.update({"config": SCALED, "steps": trace.steps})
    f = out.figures
    out.headline = (f"{new_tokens} tokens, {f['steps_mean']:.1f}/{max_steps} recurrences per "
                    f"token; logits rel err ≤ {f['worst_position_rel_err']:.1e}, top-1 "
                    f"{f['top1_agree']:.0%}")
    return out

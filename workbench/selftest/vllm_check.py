"""vLLM: export, generate with log-probs, update the weights in flight.

Why: the vLLM engine (engine/vllm.py) is written against vLLM's API without a GPU to
run it on; everything vLLM-free is tested, vLLM itself is not. This check runs the
RL generator's whole contract on a GPU host:

1. a small policy (our GPT, byte vocabulary, GQA) is exported (``export_hf``) and
   loaded by vLLM;
2. 16 prompts are decoded greedily, both by vLLM and by our torch engine in bf16;
   after ``SPLIT`` steps both load new weights (another seed) in flight, KV caches
   kept, and decode on;
3. the same prompts through a torch engine that never updates: the control.

Pass when (``compare_engines``):
- both engines tag the same tokens with the new version, and some tokens have it;
- before the update vLLM's tokens are the torch engine's (greedy; a bf16 near-tie may
  flip a token, after which a sequence diverges: at least 75% of the positions are in
  the common prefix);
- on the common prefix the log-probs agree within bf16 tolerance (calibrated below);
- after the update vLLM follows the updated torch engine and clearly not the
  never-updated one: of the sequences that agreed up to the update, at least 75% have
  the updated engine's first new-version token, and that share is at least 0.25
  above the share that has the never-updated engine's token there. Only the first
  token is judged: after a bf16 near-tie flips one token a sequence goes its own
  way, so the share of later positions that agree (``after_update_agree_*``, a
  figure) measures luck with near-ties as much as the update.

Calibration (on CPU, where bf16 rounds as on a GPU): one legitimate implementation
difference, vLLM's fused SiluAndMul (``silu(gate) * up`` in fp32, rounded once),
against our bf16 torch engine gives log-prob differences up to 0.2 (mean 0.026), 93%
of the positions before the update agreeing, and 61-79% of the later positions after
the update; bf16 against fp32 gives up to 0.37 (mean 0.048). A wrong weight or a
missed update gives differences of whole nats and first tokens from the old weights.

vLLM runs in a process of its own (``python -m workbench.selftest.vllm_check``): it
reserves GPU memory, which is then released with the process. ``scenario`` and
``compare_engines`` are engine-agnostic; tests/test_selftest.py runs them with a torch
engine standing in for vLLM on CPU, and with a stand-in that ignores weight updates,
which must fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from workbench.selftest import Context, Outcome, check

SPLIT = 12  # decode steps on the old weights before the update
MAX_NEW = {True: 32, False: 64}  # tokens per sequence: quick, full
PROMPTS = 16
LOGPROB_MAX = 0.75  # bf16 on both sides, different kernels (see Calibration above)
LOGPROB_MEAN = 0.08
AGREE = 0.75
FOLLOW_MARGIN = 0.25  # first new-version tokens: new weights' share over the old ones'
TIMEOUT_S = 900.0


SHARPNESS = 4.0  # the final norm's weight: logits of std ~6 instead of ~1.6


def policy(seed: int) -> Any:
    """A small GPT (byte vocabulary, GQA) with peaked next-token distributions: init std
    0.1 and the final RMSNorm's weight at SHARPNESS. Greedy decoding then rarely meets a
    near-tie that bf16 rounding could flip, and a sampled token's log-prob is near 0."""
    import torch

    from workbench.data.corpus import VOCAB_SIZE
    from workbench.models.config import GPTConfig
    from workbench.models.gpt import GPT

    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB_SIZE, seq_len=256, n_layer=4, n_head=4,
                          n_kv_head=2, d_model=256, init_std=0.1)).eval()
    with torch.no_grad():
        model.norm.weight.fill_(SHARPNESS)
    return model


def prompts(n: int = PROMPTS, seed: int = 0) -> list[list[int]]:
    """BOS + 6..20 printable bytes."""
    import random

    from workbench.data.corpus import BOS

    rng = random.Random(seed)
    return [[BOS, *(rng.randrange(32, 127) for _ in range(rng.randrange(6, 21)))]
            for _ in range(n)]


def scenario(engine: Any, new_state: dict[str, Any] | None, prompt_ids: Sequence[list[int]],
             split: int, max_new: int) -> list[Any]:
    """Decode ``prompt_ids`` greedily; after ``split`` steps load ``new_state`` as version 1
    (None: never), keep decoding until all finish. Completions in prompt order."""
    from workbench.engine import Request

    for i, p in enumerate(prompt_ids):
        engine.add(Request(i, list(p), max_new))
    done: dict[int, Any] = {}
    steps = 0
    while engine.has_work():
        if steps == split and new_state is not None:
            engine.load_weights(new_state, version=1)
        for c in engine.step():
            done[c.id] = c
        steps += 1
    return [done[i] for i in range(len(prompt_ids))]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def compare_engines(got: Sequence[Any], ref: Sequence[Any], old: Sequence[Any],
                    split: int) -> Outcome:
    """``got`` (the engine under test) against ``ref`` (the torch engine, same update)
    and ``old`` (the torch engine, no update): see the module docstring. ``split`` is
    where the update happens when no token carries a version (figures only)."""
    out = Outcome()
    before = before_agree = after = after_new = after_old = 0
    agreed = first_new = first_old = 0
    diffs: list[float] = []
    tagged = 0
    versions_differ = []
    for i, (g, r, o) in enumerate(zip(got, ref, old, strict=True)):
        if list(g.versions) != list(r.versions):
            versions_differ.append(i)
        tagged += sum(1 for v in g.versions if v == 1)
        # The first token of the new weights (the reference's tags), else ``split``.
        first = next((j for j, v in enumerate(r.versions) if v == 1), split)
        k = common_prefix(g.tokens, r.tokens)
        pre = min(first, len(g.tokens), len(r.tokens))
        before += pre
        before_agree += min(k, pre)
        diffs += [abs(float(g.logprobs[j]) - float(r.logprobs[j])) for j in range(k)]
        if k >= first and len(g.tokens) > first and len(r.tokens) > first:
            agreed += 1  # agreed until the update
            first_new += g.tokens[first] == r.tokens[first]
            first_old += len(o.tokens) > first and g.tokens[first] == o.tokens[first]
            after += len(g.tokens) - first
            after_new += k - first
            after_old += max(0, common_prefix(g.tokens, o.tokens) - first)
    f = out.figures
    f["before_update_agree"] = before_agree / before if before else 0.0
    f["after_update_agree_new"] = after_new / after if after else 0.0
    f["after_update_agree_old"] = after_old / after if after else 0.0
    f["first_after_update_new"] = first_new / agreed if agreed else 0.0
    f["first_after_update_old"] = first_old / agreed if agreed else 0.0
    f["sequences_agreed_to_update"] = float(agreed)
    f["logprob_max_abs_diff"] = max(diffs, default=float("inf"))
    f["logprob_mean_abs_diff"] = sum(diffs) / len(diffs) if diffs else float("inf")
    f["tokens_new_version"] = float(tagged)
    out.require(not versions_differ, f"version tags differ from the torch engine's in "
                                     f"sequences {versions_differ[:5]}")
    out.require(tagged > 0, "no token carries the new weights' version")
    out.require(f["before_update_agree"] >= AGREE,
                f"only {f['before_update_agree']:.0%} of the tokens before the update match "
                f"the torch engine's")
    out.require(f["logprob_max_abs_diff"] <= LOGPROB_MAX
                and f["logprob_mean_abs_diff"] <= LOGPROB_MEAN,
                f"log-probs differ by up to {f['logprob_max_abs_diff']:.3f} (mean "
                f"{f['logprob_mean_abs_diff']:.4f}; allowed {LOGPROB_MAX}, {LOGPROB_MEAN})")
    if out.require(agreed > 0, "no sequence agreed with the torch engine up to the update"):
        new, stale = f["first_after_update_new"], f["first_after_update_old"]
        out.require(new >= AGREE and new >= stale + FOLLOW_MARGIN,
                    f"after the update {new:.0%} of the sequences' first new tokens are the "
                    f"new weights' and {stale:.0%} the old ones'")
    return out


def torch_engine(model: Any, device: str, dtype: Any, max_len: int, batch: int) -> Any:
    import copy

    from workbench.engine.torch_engine import TorchEngine

    m = copy.deepcopy(model).to(device=device, dtype=dtype).reset_rope()
    return TorchEngine(m, max_batch=batch, max_len=max_len, temperature=0.0, device=device,
                       ignore_eos=True)


def run_all(make_engine: Callable[[Any, int, int], Any], *, quick: bool, device: str,
            dtype: Any) -> Outcome:
    """The whole check with ``make_engine(model, max_len, batch)`` as the engine under
    test, the torch engine on ``device`` in ``dtype`` as the reference."""
    model_a, model_b = policy(0), policy(1)
    ids = prompts()
    max_new = MAX_NEW[quick]
    max_len = max(len(p) for p in ids) + max_new + 1
    state_b = {k: v.detach().clone() for k, v in model_b.state_dict().items()}
    got = scenario(make_engine(model_a, max_len, len(ids)), state_b, ids, SPLIT, max_new)
    ref = scenario(torch_engine(model_a, device, dtype, max_len, len(ids)), state_b, ids,
                   SPLIT, max_new)
    old = scenario(torch_engine(model_a, device, dtype, max_len, len(ids)), None, ids,
                   SPLIT, max_new)
    out = compare_engines(got, ref, old, SPLIT)
    out.detail["sample"] = {"prompt": ids[0], "tokens": list(got[0].tokens),
                            "versions": list(got[0].versions)}
    return out


def vllm_engine(model: Any, max_len: int, batch: int) -> Any:
    """Our VLLMEngine around ``model`` (exported to a temporary folder), greedy, eager
    (no CUDA graph capture: a faster start), a quarter of the GPU's memory."""
    from workbench.engine.vllm import VLLMEngine

    return VLLMEngine(model, max_batch=batch, max_len=max_len, temperature=0.0, seed=0,
                      ignore_eos=True, gpu_memory_utilization=0.25,
                      engine_kwargs={"enforce_eager": True})


def main(quick: bool) -> None:
    """The vLLM side, in its own process: one JSON line on stdout."""
    import os
    import time

    import torch

    t0 = time.perf_counter()
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # vLLM's banners go to stderr; stdout carries the answer alone
    try:
        out = run_all(vllm_engine, quick=quick, device="cuda", dtype=torch.bfloat16)
        import vllm

        out.detail["vllm"] = vllm.__version__
        out.figures["seconds_total"] = time.perf_counter() - t0
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    print(json.dumps({"figures": out.figures, "failures": out.failures,
                      "detail": out.detail}), flush=True)


@check("vllm/inflight-update", needs=("cuda", "vllm"),
       summary="export a policy to vLLM, greedy log-probs vs the torch engine, in-flight "
               "weight update")
def vllm_check(ctx: Context) -> Outcome:
    ctx.say("  starting vLLM in its own process (about a minute)")
    cmd = [sys.executable, "-m", "workbench.selftest.vllm_check", *(["--quick"] if ctx.quick
                                                                     else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                       stdin=subprocess.DEVNULL)
    sys.stderr.write(r.stderr[-20000:])  # into the selftest's log
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the vLLM process exited {r.returncode}: {tail}")
    data = json.loads(lines[-1])
    out = Outcome(figures=data["figures"], failures=data["failures"], detail=data["detail"])
    f = out.figures
    out.headline = (f"vLLM {out.detail.get('vllm', '?')}: {f['before_update_agree']:.0%} tokens "
                    f"= torch, log-prob diff ≤ {f['logprob_max_abs_diff']:.3f}; first tokens "
                    f"after the update {f['first_after_update_new']:.0%} new / "
                    f"{f['first_after_update_old']:.0%} old")
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])

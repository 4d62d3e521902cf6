"""Generation engines: KV-cache decoding, continuous batching, log-probs, in-flight
weight updates, the vLLM adapter's pure parts, and `wb bench engine`."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import wb
from workbench.data.corpus import BOS, EOS
from workbench.engine import Completion, Engine, Request, generate_all, make_engine
from workbench.engine.torch_engine import TorchEngine
from workbench.engine.vllm import (
    BYTE_SPECIAL,
    INSTALL_HINT,
    VLLMEngine,
    export_hf,
    sampling_kwargs,
    vllm_unavailable_reason,
)
from workbench.models.config import GPTConfig
from workbench.models.gpt import GPT, KVCache
from workbench.models.hf import hf_name, to_hf_state
from workbench.models.hf_config import from_gpt_config

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(vocab_size=260, seq_len=96, n_layer=2, n_head=4, d_model=64)


def make_model(seed: int = 0, **overrides: Any) -> GPT:
    torch.manual_seed(seed)
    # init_std 0.1: peaked logits, so greedy choices are far from float-rounding ties
    return GPT(GPTConfig(**{**SMALL, "init_std": 0.1, **overrides})).eval()


def requests(n: int, seed: int = 0, max_new: tuple[int, int] = (3, 30)) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        plen = int(torch.randint(1, 12, (), generator=g))
        prompt = [BOS, *torch.randint(0, 256, (plen,), generator=g).tolist()]
        new = int(torch.randint(max_new[0], max_new[1] + 1, (), generator=g))
        out.append(Request(id=i, prompt=prompt, max_new_tokens=new, meta={"i": i}))
    return out


def engine(model: GPT, **kw: Any) -> TorchEngine:
    args = dict(max_batch=4, max_len=SMALL["seq_len"], temperature=0.0, seed=0)
    return make_engine("torch", model, **{**args, **kw})  # type: ignore[return-value]


def full_logprobs(model: GPT, c: Completion, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) of each completion token by one full forward on prompt + completion,
    at `temperature` (logits / T)."""
    seq = torch.tensor([c.prompt + c.tokens])
    with torch.no_grad():
        logp = F.log_softmax(model(seq).logits[0].float() / temperature, dim=-1)
    P = len(c.prompt)
    return logp[P - 1:-1].gather(1, torch.tensor(c.tokens).unsqueeze(1)).squeeze(1)


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_cached_decode_matches_full_forward(n_kv_head: int | None) -> None:
    """Slots of different lengths (prefilled in chunks, decoded together, some slots
    idle, not in slot order) give the full forward's logits."""
    model = make_model(n_kv_head=n_kv_head, init_std=0.02)
    cfg = model.config
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 260, (n,), generator=g) for n in (40, 9, 23)]
    with torch.no_grad():
        full = [model(s[None]).logits[0] for s in seqs]
    cache = KVCache.empty(cfg, slots=5, max_len=64)
    slots = torch.tensor([3, 0, 4])
    prefill = [7, 2, 12]
    got: list[list[torch.Tensor]] = [[] for _ in seqs]
    for i, (s, p) in enumerate(zip(seqs, prefill, strict=True)):
        got[i].append(model.forward_cached(s[None, :p], cache, slots[i:i + 1])[0])
    for step in range(40):
        live = [i for i, s in enumerate(seqs) if prefill[i] + step < len(s)]
        if not live:
            break
        idx = torch.stack([seqs[i][prefill[i] + step] for i in live]).unsqueeze(1)
        logits = model.forward_cached(idx, cache, slots[live])
        for row, i in enumerate(live):
            got[i].append(logits[row])
    for i, s in enumerate(seqs):
        assert int(cache.lengths[slots[i]]) == len(s)
        torch.testing.assert_close(torch.cat(got[i]), full[i], atol=2e-5, rtol=1e-5)


def test_cached_contiguous_batch_and_overflow() -> None:
    model = make_model(init_std=0.02)
    seq = torch.randint(0, 260, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(seq).logits
    cache = KVCache.empty(model.config, slots=2, max_len=12)
    a = model.forward_cached(seq[:, :5], cache)  # slots=None: rows 0..B-1
    b = model.forward_cached(seq[:, 5:], cache)
    torch.testing.assert_close(torch.cat([a, b], dim=1), full, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="overflow"):
        model.forward_cached(seq[:, :1], cache)
    with pytest.raises(ValueError, match="seq_len"):
        KVCache.empty(model.config, slots=1, max_len=model.config.seq_len + 1)


# ----------------------------------------------------------------------------- torch engine


def test_batching_does_not_change_greedy_outputs() -> None:
    """Continuous (4 slots, 10 requests), static, and one-at-a-time agree per request."""
    model = make_model()
    reqs = requests(10)
    cont = generate_all(engine(model), reqs)
    static = generate_all(engine(model, continuous=False), reqs)
    alone = [generate_all(engine(model, max_batch=1), [r])[0] for r in reqs]
    for c, s, a, r in zip(cont, static, alone, reqs, strict=True):
        assert c.id == s.id == a.id == r.id and c.meta == {"i": r.id}
        assert c.tokens == s.tokens == a.tokens
        assert c.finish == s.finish == a.finish
        assert c.logprobs == pytest.approx(a.logprobs, abs=1e-5)
        assert c.versions == [0] * len(c.tokens)
        assert len(c.tokens) == r.max_new_tokens or c.tokens[-1] == EOS


def test_shared_prompts_prefill_once_and_match_alone() -> None:
    """Groups of equal prompts (GRPO) and prompts of other lengths admitted together:
    one batched prefill per admission, each distinct prompt computed once, and every
    request's greedy output and log-probs equal to generating it alone."""
    model = make_model()
    base = requests(3, seed=5)
    reqs = [Request(id=10 * k + j, prompt=list(r.prompt), max_new_tokens=r.max_new_tokens,
                    meta={"i": r.id}) for k, r in enumerate(base) for j in range(3)]
    e = engine(model, max_batch=len(reqs))
    together = generate_all(e, reqs)
    assert e.prefills == len(reqs)
    assert e.prefill_tokens == sum(len(r.prompt) - 1 for r in reqs)
    for c, r in zip(together, reqs, strict=True):
        alone = generate_all(engine(model, max_batch=1), [r])[0]
        assert c.tokens == alone.tokens
        assert c.logprobs == pytest.approx(alone.logprobs, abs=1e-5)


def test_continuous_admits_as_slots_free() -> None:
    model = make_model()
    reqs = [Request(i, [BOS, 65 + i], max_new_tokens=n) for i, n in enumerate([2, 9, 9, 3])]
    for continuous, admitted_after_3_steps in ((True, 3), (False, 2)):
        e = engine(model, max_batch=2, continuous=continuous, ignore_eos=True)
        for r in reqs:
            e.add(r)
        done: list[int] = []
        for _ in range(3):
            done += [c.id for c in e.step()]
        assert done == [0]
        # continuous: request 2 took the slot request 0 freed; static: it waits for 1
        assert e.prefills == admitted_after_3_steps
        assert e.num_active() + e.num_waiting() + len(done) == 4
        while e.has_work():
            e.step()
        assert e.prefills == 4


def test_static_batching_waits_for_the_whole_batch() -> None:
    model = make_model()
    e = engine(model, max_batch=2, continuous=False, ignore_eos=True)
    for i, n in enumerate([2, 6, 2]):
        e.add(Request(i, [BOS], max_new_tokens=n))
    steps_active = []
    while e.has_work():
        e.step()
        steps_active.append(e.num_active())
    # request 2 enters only after request 1 (6 tokens) finished: 6 + 2 decode steps
    assert e.decode_steps == 8 and steps_active[:6] == [2, 1, 1, 1, 1, 0]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_full_forward(temperature: float) -> None:
    """Sampled tokens' log-probs = the sampling distribution's, log_softmax(logits / T),
    recomputed by a plain forward on prompt + completion (what the trainer does)."""
    model = make_model()
    out = generate_all(engine(model, temperature=temperature, seed=5), requests(8, seed=1))
    for c in out:
        torch.testing.assert_close(torch.tensor(c.logprobs),
                                   full_logprobs(model, c, temperature), atol=1e-4, rtol=1e-4)
    assert len({tuple(c.tokens) for c in out}) > 1


def test_greedy_logprobs_are_the_plain_log_softmax() -> None:
    """Temperature 0 samples no distribution: the recorded log-probs are T = 1's."""
    model = make_model()
    for c in generate_all(engine(model, temperature=0.0), requests(4, seed=3)):
        torch.testing.assert_close(torch.tensor(c.logprobs), full_logprobs(model, c),
                                   atol=1e-4, rtol=1e-4)


def test_on_policy_ratio_is_one_at_temperature_07() -> None:
    """Issue 17 item 1: at T = 0.7 with no weight change, the trainer's recomputation of
    the engine's tokens (update.completion_logprobs, the fused chunked kernel) gives an
    importance ratio exp(new - old) of 1 to 1e-5 on every token, and a GRPO step on them
    clips nothing. (Before, the engine recorded T = 1 log-probs and the trainer
    recomputed T = 1 ones: the clip window was measured against the wrong policy.)"""
    from dataclasses import dataclass

    from workbench.recipes.rl.grpo import group_advantages
    from workbench.recipes.rl.update import accumulate_grpo, completion_logprobs

    @dataclass
    class Rollout:
        prompt: list[int]
        tokens: list[int]
        logprobs: list[float]
        versions: list[int]

    torch.manual_seed(0)
    model = make_model()
    out = generate_all(engine(model, temperature=0.7, seed=5), requests(8, seed=1))
    batch = [Rollout(c.prompt, c.tokens, c.logprobs, c.versions) for c in out]
    cpu = torch.device("cpu")
    with torch.no_grad():
        new, old, mask, _ = completion_logprobs(model, batch, cpu, temperature=0.7)
        at_1, *_ = completion_logprobs(model, batch, cpu, temperature=1.0)
    on = mask > 0
    assert int(on.sum()) == sum(len(c.tokens) for c in out) > 50
    ratio = torch.exp(new - old)[on]
    assert float((ratio - 1).abs().max()) < 1e-5
    assert float((torch.exp(at_1 - old)[on] - 1).abs().max()) > 0.1  # T matters here
    rewards = torch.tensor([1.0, 0.0] * 4)
    adv, keep = group_advantages(rewards, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    stats = accumulate_grpo(model, batch, adv, keep, 0.2, 0.28, budget=4096, device=cpu,
                            temperature=0.7, version=0)
    assert stats.clip_frac == 0.0
    assert list(stats.k3_by_staleness) == [0] and stats.k3_by_staleness[0] < 1e-9


def test_sampling_is_seeded() -> None:
    model = make_model()
    reqs = requests(6, seed=2)
    a = generate_all(engine(model, temperature=1.0, seed=11), reqs)
    b = generate_all(engine(model, temperature=1.0, seed=11), reqs)
    c = generate_all(engine(model, temperature=1.0, seed=12), reqs)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in c]


def test_stop_on_eos_and_on_length() -> None:
    model = make_model()
    prompt = [BOS, 72, 105]
    free = generate_all(engine(model, ignore_eos=True),
                        [Request(0, prompt, max_new_tokens=12)])[0]
    assert free.finish == "length" and len(free.tokens) == 12
    # Make the 4th generated token the stop token (first occurrence): it stops there,
    # stop token included.
    k = next(i for i, t in enumerate(free.tokens) if i >= 3 and t not in free.tokens[:i])
    stop = generate_all(engine(model, eos_id=free.tokens[k]),
                        [Request(0, prompt, max_new_tokens=12)])[0]
    assert stop.finish == "stop" and stop.tokens == free.tokens[:k + 1]
    # The cache length: prompt + completion never exceeds max_len.
    short = generate_all(engine(model, max_len=10, ignore_eos=True),
                         [Request(1, prompt, max_new_tokens=50)])[0]
    assert short.finish == "length" and len(short.tokens) == 10 - len(prompt)
    e = engine(model, max_len=10)
    with pytest.raises(ValueError, match="no room"):
        e.add(Request(2, [BOS] * 10, max_new_tokens=1))
    with pytest.raises(ValueError, match="max_new_tokens"):
        e.add(Request(3, prompt, max_new_tokens=0))
    e.add(Request(4, prompt, max_new_tokens=1))
    with pytest.raises(ValueError, match="already"):
        e.add(Request(4, prompt, max_new_tokens=1))


def test_inflight_weight_update_keeps_the_kv_cache() -> None:
    """load_weights between steps: versions switch exactly there, no prefill is redone,
    the cached keys/values of the prefix are untouched, later tokens use new weights."""
    model = make_model()
    new_model = make_model(seed=1)
    e = engine(model, max_batch=3, ignore_eos=True)
    reqs = [Request(i, [BOS, 40 + i, 50 + i], max_new_tokens=10) for i in range(3)]
    for r in reqs:
        e.add(r)
    for _ in range(4):
        assert e.step() == []
    slot = e.slot_of(1)
    assert slot is not None
    length = int(e.cache.lengths[slot])
    before = [(k[slot, :, :length].clone(), v[slot, :, :length].clone())
              for k, v in zip(e.cache.k, e.cache.v, strict=True)]
    prefills = (e.prefills, e.prefill_tokens)

    e.load_weights(new_model.state_dict(), version=7)
    assert e.version == 7 and e.weight_loads == 1
    torch.testing.assert_close(e.state_dict()["blocks.0.attn.q_proj.weight"],
                               new_model.blocks[0].attn.q_proj.weight, atol=0, rtol=0)
    done = {}
    while e.has_work():
        done.update({c.id: c for c in e.step()})
    assert (e.prefills, e.prefill_tokens) == prefills
    for (k0, v0), k, v in zip(before, e.cache.k, e.cache.v, strict=True):
        assert torch.equal(k[slot, :, :length], k0) and torch.equal(v[slot, :, :length], v0)
    for c in done.values():
        assert c.versions == [0] * 4 + [7] * 6
    # Version-0 tokens carry the old weights' log-probs; the cache the later tokens saw
    # was computed by the old weights, so a full forward with the new weights differs.
    old = full_logprobs(make_model(), done[0])
    torch.testing.assert_close(torch.tensor(done[0].logprobs[:4]), old[:4], atol=1e-4,
                               rtol=1e-4)
    assert not torch.allclose(torch.tensor(done[0].logprobs[4:]), old[4:], atol=1e-3)


def test_load_weights_accepts_wrapped_names_and_rejects_partial() -> None:
    model = make_model()
    e = engine(model)
    other = make_model(seed=4).state_dict()
    e.load_weights({f"_orig_mod.{k}": v for k, v in other.items()}, version=1)
    assert torch.equal(model.embed.weight, other["embed.weight"])
    with pytest.raises(RuntimeError, match="Missing"):
        e.load_weights({"embed.weight": other["embed.weight"]}, version=2)


def test_make_engine_protocol_and_errors() -> None:
    e = engine(make_model())
    assert isinstance(e, Engine)
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("tgi", make_model(), max_batch=1, max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        engine(make_model(), max_len=SMALL["seq_len"] + 1)


# ----------------------------------------------------------------------------- vLLM


def test_hf_names_cover_every_parameter() -> None:
    for tie in (True, False):
        model = make_model(tie_embeddings=tie, n_kv_head=2)
        hf = to_hf_state(model.state_dict(), tie)
        assert len(hf) == len(model.state_dict()) - (1 if tie else 0)
        assert "model.layers.1.self_attn.k_proj.weight" in hf
        assert ("lm_head.weight" in hf) is (not tie)
    assert hf_name("_orig_mod.blocks.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(KeyError):
        hf_name("blocks.0.attn.cos")
    cfg = from_gpt_config(GPTConfig(d_model=192, n_head=6, n_kv_head=2, seq_len=300),
                          BYTE_SPECIAL)
    assert cfg["intermediate_size"] == 512 and cfg["num_key_value_heads"] == 2
    assert cfg["head_dim"] == 32 and cfg["max_position_embeddings"] == 300
    assert cfg["eos_token_id"] == EOS and cfg["architectures"] == ["LlamaForCausalLM"]


def test_export_matches_hf_llama(tmp_path) -> None:
    """The checkpoint vLLM loads is a Llama with our function: same logits in
    transformers (vLLM's Llama implements the same model)."""
    transformers = pytest.importorskip("transformers", reason="transformers not installed "
                                       "(it comes with vLLM: pip install workbench-lab[gpu])")
    for tie, kv in ((True, None), (False, 2)):
        model = make_model(tie_embeddings=tie, n_kv_head=kv)
        export_hf(model, tmp_path / str(tie))
        hf = transformers.LlamaForCausalLM.from_pretrained(
            str(tmp_path / str(tie)), torch_dtype=torch.float32).eval()
        x = torch.randint(0, 260, (2, 30))
        with torch.no_grad():
            torch.testing.assert_close(hf(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)


def test_sampling_kwargs() -> None:
    r = Request(3, [BOS] * 10, max_new_tokens=100)
    kw = sampling_kwargs(r, max_len=64, temperature=1.0, seed=2)
    assert kw["max_tokens"] == 54 and kw["logprobs"] == 0 and kw["stop_token_ids"] == [EOS]
    assert kw["seed"] == 2 * 1_000_003 + 3 and kw["detokenize"] is False
    greedy = sampling_kwargs(r, max_len=64, temperature=0.0, seed=2, ignore_eos=True)
    assert "seed" not in greedy and greedy["stop_token_ids"] == [] and greedy["ignore_eos"]


class FakeVLLM:
    """Stands in for vllm.LLMEngine: add_request / step (DELTA outputs with vLLM's shape)
    / collective_rpc("wb_load_weights"), backed by our torch engine."""

    def __init__(self, model: GPT) -> None:
        self.inner = TorchEngine(model, max_batch=8, max_len=SMALL["seq_len"],
                                 temperature=0.0)
        self.reverse = {hf_name(k): k for k in model.state_dict()}
        self.params: dict[int, dict] = {}
        self.seen: dict[int, int] = {}

    def add_request(self, request_id: str, prompt: dict, params: dict) -> None:
        rid = int(request_id)
        self.params[rid] = params
        self.inner.add(Request(rid, prompt["prompt_token_ids"], params["max_tokens"]))

    def step(self) -> list[SimpleNamespace]:
        outs = []
        before = {self.inner._slot_req[s].id: int(self.inner._n_gen[s])  # type: ignore[union-attr]
                  for s in range(self.inner.num_active())}
        finished = {c.id: c for c in self.inner.step()}
        live = {self.inner._slot_req[s].id: s  # type: ignore[union-attr]
                for s in range(self.inner.num_active())}
        for rid in set(before) | set(finished) | set(live):
            if rid in finished:
                c = finished[rid]
                toks, lps = c.tokens, c.logprobs
            else:
                s = live[rid]
                k = int(self.inner._n_gen[s])
                toks = self.inner._tokens[s, :k].tolist()
                lps = self.inner._logprobs[s, :k].tolist()
            start = self.seen.get(rid, 0)
            self.seen[rid] = len(toks)
            comp = SimpleNamespace(
                token_ids=toks[start:],
                logprobs=[{t: SimpleNamespace(logprob=lp)}
                          for t, lp in zip(toks[start:], lps[start:], strict=True)],
                finish_reason=(finished[rid].finish if rid in finished else None))
            outs.append(SimpleNamespace(request_id=str(rid), outputs=[comp],
                                        finished=rid in finished))
        return outs

    def collective_rpc(self, method: str, args: tuple = ()) -> list[int]:
        assert method == "wb_load_weights"
        (pairs,) = args
        state = {self.reverse[n]: t for n, t in pairs}
        self.inner.load_weights(state, self.inner.version + 1)
        return [len(pairs)]


def test_vllm_engine_adapter_with_a_fake_backend() -> None:
    """Admission, DELTA -> Completion conversion, log-probs and version tagging at an
    in-flight update, without vLLM."""
    model = make_model()
    fake = FakeVLLM(make_model())
    e = VLLMEngine(model, max_batch=3, max_len=SMALL["seq_len"], temperature=0.0,
                   backend=fake)
    assert isinstance(e, Engine)
    reqs = [Request(i, [BOS, 60 + i], max_new_tokens=8) for i in range(5)]
    for r in reqs:
        e.add(r)
    e.step()
    assert e.num_active() == 3 and e.num_waiting() == 2
    e.step()
    e.load_weights(make_model(seed=1).state_dict(), version=3)
    done = {}
    while e.has_work():
        done.update({c.id: c for c in e.step()})
    assert sorted(done) == list(range(5))
    reference = {c.id: c for c in generate_all(engine(make_model()), reqs)}
    for i in range(3):  # in flight at the update: 2 tokens on version 0, then version 3
        c = done[i]
        assert c.versions[:2] == [0, 0] and set(c.versions[2:]) == {3}
        assert c.tokens[:2] == reference[i].tokens[:2]
        assert c.logprobs[:2] == pytest.approx(reference[i].logprobs[:2], abs=1e-6)
        assert c.finish in ("stop", "length") and len(c.logprobs) == len(c.tokens)
    assert set(done[4].versions) == {3}
    assert e.state_dict()["embed.weight"].shape == (260, 64)


def test_vllm_static_admission_with_a_fake_backend() -> None:
    e = VLLMEngine(make_model(), max_batch=2, max_len=SMALL["seq_len"], temperature=0.0,
                   continuous=False, backend=FakeVLLM(make_model()))
    for i, n in enumerate([2, 5, 2]):
        e.add(Request(i, [BOS], max_new_tokens=n))
    waits = []
    while e.has_work():
        e.step()
        waits.append(e.num_waiting())
    assert waits[:6] == [1, 1, 1, 1, 1, 0]  # request 2 waits for request 1's 5 tokens


def test_vllm_missing_is_one_clear_line() -> None:
    reason = vllm_unavailable_reason()
    if reason is None:
        pytest.skip("vLLM and a GPU are present")
    with pytest.raises((ImportError, RuntimeError)) as info:
        make_engine("vllm", make_model(), max_batch=2, max_len=32)
    msg = str(info.value)
    assert "\n" not in msg
    if "not installed" in reason:
        assert INSTALL_HINT in msg


@pytest.mark.skipif(vllm_unavailable_reason() is not None,
                    reason=f"vLLM engine: {vllm_unavailable_reason()}")
def test_vllm_generates_with_logprobs_and_inflight_update() -> None:  # pragma: no cover
    """On a GPU host with vLLM: greedy tokens match the torch engine, log-probs match
    a full forward, and an in-flight update switches versions."""
    model = make_model()
    reqs = requests(6)
    e = make_engine("vllm", model, max_batch=4, max_len=SMALL["seq_len"], temperature=0.0,
                    dtype="float32", gpu_memory_utilization=0.2)
    out = generate_all(e, reqs)
    ref = generate_all(engine(model), reqs)
    for c, r in zip(out, ref, strict=True):
        assert c.tokens == r.tokens and c.finish == r.finish
        assert c.logprobs == pytest.approx(r.logprobs, abs=1e-3)
    for r in reqs:
        e.add(Request(r.id + 100, r.prompt, 20))
    e.step()
    e.step()
    e.load_weights(make_model(seed=1).state_dict(), version=1)
    later = []
    while e.has_work():
        later += e.step()
    assert e.version == 1 and len(later) == len(reqs)
    assert any(c.versions[0] == 0 and c.versions[-1] == 1 for c in later)


# ----------------------------------------------------------------------------- bench


def test_bench_engine_tiny() -> None:
    from workbench.bench import BENCHES

    r = BENCHES["engine"](quick=True, progress=None, tiny=True)
    for key in ("continuous_tok_s", "static_tok_s", "speedup", "tokens", "requests", "slots",
                "params"):
        assert isinstance(r[key], int | float) and math.isfinite(r[key]) and r[key] > 0, key
    assert r["outputs_match"] is True
    assert r["static_steps"] > r["continuous_steps"]
    # The bench returns its times unrounded: only the speedup's own rounding to 3
    # places (at most 5e-4) separates the two, whatever the machine's speed.
    assert r["speedup"] == pytest.approx(r["static_s"] / r["continuous_s"], abs=1e-3)


def test_bench_engine_quick_through_the_cli() -> None:
    proc = wb("bench", "engine", "--quick", "--json", check=True, timeout=170)
    r = json.loads(proc.stdout)
    for key in ("continuous_tok_s", "static_tok_s", "speedup", "requests", "slots", "tokens",
                "params"):
        assert key in r
    assert r["quick"] is True and r["outputs_match"] is True


def test_vllm_reports_the_sampling_distributions_logprobs() -> None:
    """vLLM's processed log-probs are after temperature, as the torch engine's; a vLLM
    without logprobs_mode (raw, T = 1 only) is refused at any other temperature."""
    from dataclasses import dataclass

    from workbench.engine.vllm import LOGPROBS_MODE, check_logprobs_mode

    @dataclass
    class OldEngineArgs:
        model: str = ""

    @dataclass
    class NewEngineArgs:
        model: str = ""
        logprobs_mode: str = "raw_logprobs"

    assert LOGPROBS_MODE == "processed_logprobs"
    for t in (0.0, 0.7, 1.0):
        check_logprobs_mode(NewEngineArgs, t)
    check_logprobs_mode(OldEngineArgs, 1.0)
    check_logprobs_mode(OldEngineArgs, 0.0)
    with pytest.raises(RuntimeError, match=r"temperature = 0\.7 needs vLLM 0\.10\.2"):
        check_logprobs_mode(OldEngineArgs, 0.7)


def test_engine_args_drop_what_an_older_vllm_lacks() -> None:
    from dataclasses import dataclass

    from workbench.engine.vllm import engine_args_for

    @dataclass
    class OldEngineArgs:
        model: str = ""
        seed: int = 0

    args = {"model": "m", "seed": 1, "logprobs_mode": "processed_logprobs",
            "async_scheduling": False}
    assert engine_args_for(OldEngineArgs, args) == {"model": "m", "seed": 1}
    assert engine_args_for(OldEngineArgs, {"bogus": 1}) == {"bogus": 1}  # a typo still fails

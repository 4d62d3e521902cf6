"""Generation engines for RL rollouts: one interface, two implementations.

- ``torch``  (engine/torch_engine.py): embedded, the default. Our GPT with a preallocated
  KV cache, continuous batching over a fixed number of slots, per-token log-probs and
  policy versions, and in-flight weight updates (Magistral: the KV cache is kept).
  Runs anywhere torch does, CPU included.
- ``vllm``   (engine/vllm.py): the same interface over vLLM, for GPU hosts. vLLM is
  imported only when this engine is built (``pip install workbench-lab[gpu]``).

The contract a generator relies on:

- ``add(req)`` queues a request; ``step()`` admits waiting requests into free slots
  (prefill), decodes ONE token for every active sequence in one batched forward, and
  returns the completions that finished in that step.
- Every generated token carries ``logprobs[i]`` = log p(token) under the distribution it
  was sampled from: the weights that sampled it, at the sampling temperature T,
  ``log_softmax(logits / T)`` (T = 0, greedy: the plain log-softmax). That is the
  behaviour-policy log-prob GRPO's importance ratio divides by; a trainer recomputes it
  with the same T (``completion_logprobs(temperature=T)``), so that the ratio is 1
  on-policy whatever T. ``versions[i]`` = the policy version of those weights.
- ``load_weights(state, version)`` swaps the weights in place between two steps. Sequences
  in flight keep their KV cache (not recomputed) and continue under the new weights, so a
  completion can span several versions (Magistral's in-flight update). A generator that
  wants "finish on the old weights" (``rollout.inflight = false``) stops adding, calls
  ``step()`` until ``num_active() == 0`` (``step(admit=False)`` keeps queued requests
  waiting), then loads.
- A sequence stops at the first of its stop ids (``finish = "stop"``, that token kept as
  the last of ``tokens``), at ``max_new_tokens``, or when prompt + completion fills
  ``max_len`` (``finish = "length"``). Stop ids: our byte EOS by default; a chat model's
  generator passes its tokenizer's ``stop_ids`` (EOS and the template's end-of-turn
  token, e.g. ``<|im_end|>``): torch takes them as ``eos_id=[...]``, vLLM as
  ``stop_ids=[...]``.
- ``continuous=False`` is static batching: new requests enter only once every slot is
  free (the baseline of ``wb bench engine``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.engine.types import Completion, Engine, Request

if TYPE_CHECKING:
    from workbench.models.gpt import GPT

ENGINES = ("torch", "vllm")

__all__ = ["ENGINES", "Completion", "Engine", "Request", "generate_all", "make_engine"]


def make_engine(name: str, model: GPT | None, *, max_batch: int, max_len: int,
                temperature: float = 1.0, seed: int = 0, device: str = "cpu",
                continuous: bool = True, **kw: Any) -> Engine:
    """Build engine ``name`` ("torch" or "vllm") around ``model``.

    ``max_batch`` = sequences decoded together (slots); ``max_len`` = longest prompt +
    completion (the KV cache length, at most the model's seq_len). Extra keywords go to
    the engine (torch: ``ignore_eos``, ``eos_id`` (one id or a list: stop on any); vllm:
    ``stop_ids``, ``model_dir`` (a checkpoint folder to load as is), see VLLMEngine).
    """
    if name == "torch":
        from workbench.engine.torch_engine import TorchEngine

        if model is None:
            raise ValueError("the torch engine needs a model (a workbench GPT)")
        return TorchEngine(model, max_batch=max_batch, max_len=max_len,
                           temperature=temperature, seed=seed, device=device,
                           continuous=continuous, **kw)
    if name == "vllm":
        from workbench.engine.vllm import VLLMEngine

        return VLLMEngine(model, max_batch=max_batch, max_len=max_len,
                          temperature=temperature, seed=seed, device=device,
                          continuous=continuous, **kw)
    raise ValueError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")


def generate_all(engine: Engine, requests: list[Request]) -> list[Completion]:
    """Queue ``requests``, step until the engine is idle; completions in request order."""
    for req in requests:
        engine.add(req)
    done: dict[int, Completion] = {}
    while engine.has_work():
        for c in engine.step():
            done[c.id] = c
    return [done[r.id] for r in requests]

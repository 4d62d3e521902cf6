"""The engine interface over vLLM, for GPU hosts (``engine.name = "vllm"``).

vLLM is imported only when a ``VLLMEngine`` is built; without it the error is one line
naming ``pip install workbench-lab[gpu]``. Everything vLLM-free (the checkpoint export,
the request -> SamplingParams mapping, the output -> Completion conversion, admission
and version tagging) is plain Python over a backend object and is tested without vLLM.

How it maps onto vLLM (written against vLLM's V1 engine, 0.10 and later):

- Model. Our GPT is a Llama, Qwen2 or Qwen3 (models/hf.py). An hf: policy's own
  checkpoint folder is loaded as is (``model_dir``); any other policy (byte models) is
  written by ``export_hf`` (models/hf.py's ``save_hf``: config.json of its family +
  model.safetensors, names mapped by ``hf_name``). vLLM loads either natively: no custom
  model class. ``skip_tokenizer_init=True``: prompts go in as token ids
  (``{"prompt_token_ids": ...}``), outputs come back as ids. ``generation_config="vllm"``:
  a folder's generation_config.json does not change our sampling.
- Stepping. ``vllm.LLMEngine.from_engine_args(EngineArgs(...))``, ``add_request`` and
  ``step()``. With ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set here unless the caller set
  it) the engine core runs in this process, so one ``step()`` is one scheduler step and
  nothing generates between our calls: a weight update lands exactly between two steps
  and the tokens after it are tagged with the new version. ``RequestOutputKind.DELTA``:
  each step returns only the new tokens of each request.
- Log-probs. ``SamplingParams(logprobs=0)`` returns the sampled token's log-prob, and
  ``logprobs_mode="processed_logprobs"`` makes it the log-prob under the distribution
  the token was sampled from: after temperature (and top-k / top-p / penalties, none of
  which we set), i.e. ``log_softmax(logits / T)``, as the torch engine reports and the
  trainer recomputes. (vLLM's default, ``raw_logprobs``, is the model's T = 1
  log-softmax: at T != 1 the importance ratio would not be 1 on-policy.) A vLLM older
  than 0.10.2 has no ``logprobs_mode`` and reports raw log-probs only: it is refused at
  T != 1 (``check_logprobs_mode``). Greedy requests (T = 0) skip the temperature step:
  their log-probs are the T = 1 ones, as in the torch engine. ``async_scheduling=False``
  keeps a step's tokens on the weights that were loaded when the step was scheduled.
- Stop. ``stop_token_ids`` = the ``stop_ids`` given (the policy tokenizer's EOS and
  end-of-turn ids; default our byte EOS: vLLM has no tokenizer to say what EOS is);
  ``max_tokens`` = min(max_new_tokens, max_len - prompt); vLLM's finish_reason "stop" /
  "length" carries over.
- Weights. ``load_weights`` maps our names to the HF names and calls
  ``LLMEngine.collective_rpc("wb_load_weights", args=(pairs,))``; the method lives on
  ``WorkbenchWorkerExtension``, mixed into vLLM's worker through
  ``EngineArgs(worker_extension_cls=...)`` (the mechanism of vLLM's own RLHF examples),
  and runs ``self.model_runner.model.load_weights(weights=pairs)``: vLLM's Llama / Qwen2
  / Qwen3 loaders fuse q/k/v (biases too) and gate/up themselves. The KV cache is not
  touched (in-flight update). Prefix caching is off, since a cached prefix computed
  under old weights would leak into new requests. For several nodes, vLLM's NCCL
  weight-transfer API
  (``init_weight_transfer_engine`` / ``update_weights``) replaces the RPC payload.
- Static batching (``continuous=False``): vLLM always batches continuously, so requests
  are handed to it only when none is in flight. Admission is ours in both modes (at most
  ``max_batch`` in flight; ``max_num_seqs = max_batch``).

Not verified here (no GPU, no vLLM on the development machines): a run of vLLM itself.
Verified without vLLM: the export against our model (tests/test_engine.py compares
logits with transformers' LlamaForCausalLM), the names of every family's parameters
(tests/test_rl_hf.py), the request/output conversion and version tagging against a fake
backend.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.data.corpus import BOS, EOS, PAD, VOCAB_SIZE
from workbench.engine.types import Completion, Request
from workbench.models.config import GPTConfig
from workbench.models.hf import save_hf, to_hf_state
from workbench.models.hf_config import load_gpt_config

INSTALL_HINT = "pip install workbench-lab[gpu]"

# ----------------------------------------------------------------------------- export

# config.json's special ids for a byte-level policy (a checkpoint's own come with it).
BYTE_SPECIAL = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD}


def export_hf(model: torch.nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (a workbench GPT of any supported family) as a checkpoint folder
    vLLM loads natively (models/hf.py: Llama, Qwen2 with its q/k/v biases, Qwen3 with
    q_norm / k_norm). Used for policies that have no folder of their own (byte models);
    an hf: policy's original folder is loaded as is (``model_dir``)."""
    cfg: GPTConfig = model.config  # type: ignore[assignment]
    special = BYTE_SPECIAL if cfg.vocab_size == VOCAB_SIZE else None
    out = save_hf(model, path, special=special)
    if special is not None:
        (out / "generation_config.json").write_text(json.dumps(special))
    return out


# ----------------------------------------------------------------------------- vLLM side


class WorkbenchWorkerExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``): methods callable with
    ``collective_rpc``. ``self.model_runner`` is the worker's (vLLM's attribute)."""

    def wb_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        model = self.model_runner.model  # type: ignore[attr-defined]
        device = next(model.parameters()).device
        model.load_weights(weights=[(n, t.to(device)) for n, t in weights])
        return len(weights)


def import_vllm() -> Any:
    """``import vllm`` or one clear line on how to get it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"the vllm engine needs vLLM, which is not installed: "
                          f"{INSTALL_HINT} (on a CUDA host)") from exc
    return vllm


def vllm_unavailable_reason() -> str | None:
    """Why the vLLM engine cannot run here, or None (tests skip with this reason)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed ({INSTALL_HINT})"
    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and none is visible"
    return None


LOGPROBS_MODE = "processed_logprobs"  # after temperature: the sampling distribution's


def check_logprobs_mode(engine_args_cls: Any, temperature: float) -> None:
    """Refuse a vLLM without ``logprobs_mode`` (before 0.10.2) at a temperature other than
    0 or 1: it reports T = 1 log-probs, which are not the behaviour policy's."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(engine_args_cls)}
    if "logprobs_mode" not in known and temperature not in (0.0, 1.0):
        raise RuntimeError(f"rollout.temperature = {temperature:g} needs vLLM 0.10.2 or later "
                           "(logprobs_mode = processed_logprobs); this vLLM reports T = 1 "
                           "log-probs only — upgrade vLLM or sample at temperature 1")


def engine_args_for(engine_args_cls: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Drop the optional settings this vLLM's EngineArgs lacks: ``logprobs_mode`` (0.10.2+;
    before it log-probs were raw, which `check_logprobs_mode` allows at T = 1 only) and
    ``async_scheduling`` (off: with it, the step launched before a weight update would
    still run on the old weights while its tokens came back after the update, tagged with
    the new version)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(engine_args_cls)}
    optional = {"logprobs_mode", "async_scheduling", "generation_config"}
    return {k: v for k, v in args.items() if k in known or k not in optional}


def sampling_kwargs(req: Request, *, max_len: int, temperature: float, seed: int,
                    ignore_eos: bool = False, stop_ids: list[int] | None = None,
                    ) -> dict[str, Any]:
    """The SamplingParams keywords for ``req`` (output_kind is added by the engine).
    ``stop_ids``: the tokenizer's (EOS and end-of-turn); default our byte EOS."""
    kw: dict[str, Any] = {
        "n": 1,
        "max_tokens": max(1, min(req.max_new_tokens, max_len - len(req.prompt))),
        "temperature": float(temperature),
        "logprobs": 0,  # the sampled token's log-prob (processed: after temperature)
        "stop_token_ids": [] if ignore_eos else list(stop_ids or [EOS]),
        "ignore_eos": ignore_eos,
        "skip_special_tokens": False,
        "detokenize": False,
    }
    if temperature > 0:
        kw["seed"] = (seed * 1_000_003 + req.id) % (2**63)
    return kw


@dataclass
class _Running:
    req: Request
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)


def _sampled_logprob(entry: Any, token: int) -> float:
    """One position of vLLM's ``CompletionOutput.logprobs`` -> float log p(token)."""
    if isinstance(entry, dict):
        value = entry[token]
        return float(getattr(value, "logprob", value))
    return float(entry)  # flat logprobs (FlatLogprobs rows, or a fake backend)


class VLLMEngine:
    """The engine interface over a vLLM ``LLMEngine`` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module | None, *, max_batch: int, max_len: int,
                 temperature: float = 1.0, seed: int = 0, device: str = "cuda",
                 continuous: bool = True, model_dir: str | None = None,
                 dtype: str = "bfloat16", gpu_memory_utilization: float = 0.3,
                 ignore_eos: bool = False, stop_ids: list[int] | None = None,
                 version: int = 0, backend: Any = None,
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        """``model``: our GPT (its weights are the starting state; its config maps the
        names of later updates). ``model_dir``: a checkpoint folder vLLM loads as is (an
        hf: policy's own); without it ``model`` is exported to a temporary folder.
        ``stop_ids``: the tokenizer's stop ids (default our byte EOS)."""
        self.max_batch, self.max_len = max_batch, max_len
        self.temperature, self.seed = float(temperature), seed
        self.continuous, self.ignore_eos = continuous, ignore_eos
        self.stop_ids = list(stop_ids or [EOS])
        self.version = int(version)
        self._waiting: deque[Request] = deque()
        self._running: dict[str, _Running] = {}
        self._state: dict[str, torch.Tensor] = {}
        self.weight_loads = 0
        if model is not None:
            self.config: GPTConfig = model.config  # type: ignore[assignment]
            self._state = {k: v.detach().to("cpu", copy=True)
                           for k, v in model.state_dict().items()}
        elif model_dir is not None:
            self.config = load_gpt_config(model_dir)
        else:
            raise ValueError("the vllm engine needs a model or a model_dir")
        if max_len > self.config.seq_len:
            raise ValueError(f"max_len ({max_len}) exceeds the model's seq_len "
                             f"({self.config.seq_len})")
        if backend is not None:  # tests: any object with add_request / step
            self._engine = backend
            self._kind = None
            return

        reason = vllm_unavailable_reason()
        if reason is not None:
            if "not installed" in reason:
                import_vllm()  # raises the one-line ImportError
            raise RuntimeError(f"the vllm engine cannot run here: {reason}")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = import_vllm()
        from vllm.sampling_params import RequestOutputKind

        self._kind = RequestOutputKind.DELTA
        folder_given = model_dir is not None
        if model_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="wb-vllm-")
            model_dir = str(export_hf(model, self._tmp.name))  # type: ignore[arg-type]
        args: dict[str, Any] = dict(
            model=model_dir, skip_tokenizer_init=True, max_model_len=max_len,
            max_num_seqs=max_batch, dtype=dtype, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=False,
            # Sampling is ours alone: not the folder's generation_config.json defaults
            # (temperature, top_p, extra eos ids) on top of it.
            generation_config="vllm",
            worker_extension_cls=f"{__name__}.WorkbenchWorkerExtension",
            # Said explicitly where this vLLM has them (see engine_args_for):
            logprobs_mode=LOGPROBS_MODE, async_scheduling=False,
        )
        args.update(engine_kwargs or {})
        check_logprobs_mode(vllm.EngineArgs, self.temperature)
        self._engine = vllm.LLMEngine.from_engine_args(
            vllm.EngineArgs(**engine_args_for(vllm.EngineArgs, args)))
        if folder_given and model is not None:
            # The folder gave the architecture; the model's weights (a resumed run's, say)
            # are the ones to generate with.
            self._engine.collective_rpc("wb_load_weights", args=(self._hf_pairs(self._state),))

    # ------------------------------------------------------------------ interface

    def add(self, req: Request) -> None:
        if not req.prompt or len(req.prompt) >= self.max_len:
            raise ValueError(f"request {req.id}: prompt length {len(req.prompt)} must be in "
                             f"[1, max_len ({self.max_len}))")
        if req.max_new_tokens < 1:
            raise ValueError(f"request {req.id}: max_new_tokens ({req.max_new_tokens}) < 1")
        self._waiting.append(req)

    def step(self, admit: bool = True) -> list[Completion]:
        if admit:
            self._admit()
        if not self._running:
            return []
        finished = []
        for out in self._engine.step():
            run = self._running.get(str(out.request_id))
            if run is None:
                continue
            comp = out.outputs[0]
            new = list(comp.token_ids)
            run.tokens += new
            if new:
                if comp.logprobs is None:
                    raise RuntimeError("vLLM returned no logprobs (SamplingParams.logprobs=0)")
                run.logprobs += [_sampled_logprob(e, t)
                                 for e, t in zip(comp.logprobs, new, strict=True)]
                run.versions += [self.version] * len(new)
            if out.finished:
                del self._running[str(out.request_id)]
                finish = "stop" if comp.finish_reason == "stop" else "length"
                finished.append(Completion(
                    id=run.req.id, prompt=list(run.req.prompt), meta=run.req.meta,
                    tokens=run.tokens, logprobs=run.logprobs, versions=run.versions,
                    finish=finish))
        return finished

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def num_active(self) -> int:
        return len(self._running)

    def num_waiting(self) -> int:
        return len(self._waiting)

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        self._engine.collective_rpc("wb_load_weights", args=(self._hf_pairs(state),))
        self._state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        self.version = int(version)
        self.weight_loads += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The last weights given (our names, CPU); vLLM's own copy is not read back."""
        return dict(self._state)

    # ------------------------------------------------------------------ internals

    def _hf_pairs(self, state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """Our state dict as (checkpoint name, CPU tensor) pairs for vLLM's loader."""
        return [(k, v.detach().to("cpu"))
                for k, v in to_hf_state(state, self.config.tie_embeddings).items()]

    def _admit(self) -> None:
        if not self.continuous and self._running:
            return
        while self._waiting and len(self._running) < self.max_batch:
            req = self._waiting.popleft()
            kw = sampling_kwargs(req, max_len=self.max_len, temperature=self.temperature,
                                 seed=self.seed, ignore_eos=self.ignore_eos,
                                 stop_ids=self.stop_ids)
            if self._kind is not None:
                from vllm import SamplingParams

                params: Any = SamplingParams(output_kind=self._kind, **kw)
            else:
                params = kw
            self._engine.add_request(str(req.id), {"prompt_token_ids": list(req.prompt)},
                                     params)
            self._running[str(req.id)] = _Running(req)

"""The engine interface over vLLM, for GPU hosts (``engine.name = "vllm"``).

vLLM is imported only when a ``VLLMEngine`` is built; without it the error is one line
naming ``pip install workbench-lab[gpu]``. Everything vLLM-free (the checkpoint export,
the request -> SamplingParams mapping, the output -> Completion conversion, admission
and version tagging) is plain Python over a backend object and is tested without vLLM.

How it maps onto vLLM (written against vLLM's V1 engine, 0.10 and later):

- Model. Our GPT is a Llama: RMSNorm, rotate-half RoPE, SwiGLU, GQA, no biases, optional
  tied embeddings. ``export_hf_llama`` writes a Hugging Face ``LlamaForCausalLM``
  checkpoint (config.json + model.safetensors, names mapped by ``hf_name``) that vLLM
  loads natively: no custom model class. ``skip_tokenizer_init=True``: prompts go in as
  token ids (``{"prompt_token_ids": ...}``), outputs come back as ids.
- Stepping. ``vllm.LLMEngine.from_engine_args(EngineArgs(...))``, ``add_request`` and
  ``step()``. With ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set here unless the caller set
  it) the engine core runs in this process, so one ``step()`` is one scheduler step and
  nothing generates between our calls: a weight update lands exactly between two steps
  and the tokens after it are tagged with the new version. ``RequestOutputKind.DELTA``:
  each step returns only the new tokens of each request.
- Log-probs. ``SamplingParams(logprobs=0)`` returns the sampled token's log-prob, and
  ``logprobs_mode="raw_logprobs"`` (vLLM's default, set explicitly) makes it the model's
  log-softmax before temperature or any other processing, i.e. temperature 1, as the
  torch engine reports. ``async_scheduling=False`` keeps a step's tokens on the weights
  that were loaded when the step was scheduled.
- Stop. ``stop_token_ids=[EOS]`` (no tokenizer to say what EOS is); ``max_tokens`` =
  min(max_new_tokens, max_len - prompt); vLLM's finish_reason "stop" / "length" carries
  over.
- Weights. ``load_weights`` maps our names to the HF names and calls
  ``LLMEngine.collective_rpc("wb_load_weights", args=(pairs,))``; the method lives on
  ``WorkbenchWorkerExtension``, mixed into vLLM's worker through
  ``EngineArgs(worker_extension_cls=...)`` (the mechanism of vLLM's own RLHF examples),
  and runs ``self.model_runner.model.load_weights(weights=pairs)``: vLLM's Llama loader
  fuses q/k/v and gate/up itself. The KV cache is not touched (in-flight update).
  Prefix caching is off, since a cached prefix computed under old weights would leak
  into new requests. For several nodes, vLLM's NCCL weight-transfer API
  (``init_weight_transfer_engine`` / ``update_weights``) replaces the RPC payload.
- Static batching (``continuous=False``): vLLM always batches continuously, so requests
  are handed to it only when none is in flight. Admission is ours in both modes (at most
  ``max_batch`` in flight; ``max_num_seqs = max_batch``).

Not verified here (no GPU, no vLLM on the development machines): a run of vLLM itself.
Verified without vLLM: the export against our model (tests/test_engine.py compares
logits with transformers' LlamaForCausalLM where transformers is installed), the
request/output conversion and version tagging against a fake backend.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.data.corpus import BOS, EOS, PAD
from workbench.engine import Completion, Request
from workbench.models.config import GPTConfig

INSTALL_HINT = "pip install workbench-lab[gpu]"

_LAYER_MAP = {
    "norm1.weight": "input_layernorm.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
            "lm_head.weight": "lm_head.weight"}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


# ----------------------------------------------------------------------------- export


def hf_config(cfg: GPTConfig) -> dict[str, Any]:
    """GPTConfig -> a Hugging Face LlamaConfig dict with the same function."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        # transformers >= 5 reads RoPE from here; older versions ignore it.
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "initializer_range": cfg.init_std,
        "torch_dtype": "float32",
    }


def hf_name(name: str) -> str:
    """Our parameter name -> the Llama one (``blocks.3.attn.q_proj.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``)."""
    for prefix in ("_orig_mod.", "module."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    m = _BLOCK.fullmatch(name)
    if m and m.group(2) in _LAYER_MAP:
        return f"model.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    raise KeyError(f"no Llama name for parameter {name!r}")


def to_hf_state(state: dict[str, torch.Tensor], tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """Rename a GPT state dict to Llama names. With tied embeddings lm_head.weight is
    dropped (Llama ties it to embed_tokens; safetensors refuses shared tensors)."""
    out = {}
    for name, tensor in state.items():
        key = hf_name(name)
        if tie_embeddings and key == "lm_head.weight":
            continue
        out[key] = tensor
    return out


def export_hf_llama(model: torch.nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (a workbench GPT) as a Llama checkpoint directory vLLM can load."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg: GPTConfig = model.config  # type: ignore[assignment]
    state = to_hf_state(model.state_dict(), cfg.tie_embeddings)
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD}))
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


def engine_args_for(engine_args_cls: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Drop the optional settings this vLLM's EngineArgs lacks: ``logprobs_mode`` (0.10.2+;
    before it log-probs were raw anyway) and ``async_scheduling`` (off: with it, the step
    launched before a weight update would still run on the old weights while its tokens
    came back after the update, tagged with the new version)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(engine_args_cls)}
    optional = {"logprobs_mode", "async_scheduling"}
    return {k: v for k, v in args.items() if k in known or k not in optional}


def sampling_kwargs(req: Request, *, max_len: int, temperature: float, seed: int,
                    ignore_eos: bool = False) -> dict[str, Any]:
    """The SamplingParams keywords for ``req`` (output_kind is added by the engine)."""
    kw: dict[str, Any] = {
        "n": 1,
        "max_tokens": max(1, min(req.max_new_tokens, max_len - len(req.prompt))),
        "temperature": float(temperature),
        "logprobs": 0,  # the sampled token's log-prob (raw: temperature 1)
        "stop_token_ids": [] if ignore_eos else [EOS],
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
                 ignore_eos: bool = False, version: int = 0, backend: Any = None,
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        self.max_batch, self.max_len = max_batch, max_len
        self.temperature, self.seed = float(temperature), seed
        self.continuous, self.ignore_eos = continuous, ignore_eos
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
            cfg = json.loads((Path(model_dir) / "config.json").read_text())
            self.config = GPTConfig(
                vocab_size=cfg["vocab_size"], seq_len=cfg["max_position_embeddings"],
                n_layer=cfg["num_hidden_layers"], n_head=cfg["num_attention_heads"],
                n_kv_head=cfg["num_key_value_heads"], d_model=cfg["hidden_size"],
                tie_embeddings=cfg["tie_word_embeddings"], rope_theta=cfg["rope_theta"],
                norm_eps=cfg["rms_norm_eps"])
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
        if model_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="wb-vllm-")
            model_dir = str(export_hf_llama(model, self._tmp.name))  # type: ignore[arg-type]
        args: dict[str, Any] = dict(
            model=model_dir, skip_tokenizer_init=True, max_model_len=max_len,
            max_num_seqs=max_batch, dtype=dtype, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=False,
            worker_extension_cls=f"{__name__}.WorkbenchWorkerExtension",
            # Said explicitly where this vLLM has them (see engine_args_for):
            logprobs_mode="raw_logprobs", async_scheduling=False,
        )
        args.update(engine_kwargs or {})
        self._engine = vllm.LLMEngine.from_engine_args(
            vllm.EngineArgs(**engine_args_for(vllm.EngineArgs, args)))

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
        pairs = [(k, v.detach().to("cpu"))
                 for k, v in to_hf_state(state, self.config.tie_embeddings).items()]
        self._engine.collective_rpc("wb_load_weights", args=(pairs,))
        self._state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        self.version = int(version)
        self.weight_loads += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The last weights given (our names, CPU); vLLM's own copy is not read back."""
        return dict(self._state)

    # ------------------------------------------------------------------ internals

    def _admit(self) -> None:
        if not self.continuous and self._running:
            return
        while self._waiting and len(self._running) < self.max_batch:
            req = self._waiting.popleft()
            kw = sampling_kwargs(req, max_len=self.max_len, temperature=self.temperature,
                                 seed=self.seed, ignore_eos=self.ignore_eos)
            if self._kind is not None:
                from vllm import SamplingParams

                params: Any = SamplingParams(output_kind=self._kind, **kw)
            else:
                params = kw
            self._engine.add_request(str(req.id), {"prompt_token_ids": list(req.prompt)},
                                     params)
            self._running[str(req.id)] = _Running(req)

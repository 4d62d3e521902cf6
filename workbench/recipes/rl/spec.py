"""The `rl` spec: policy, tasks, rollout (generators, staleness), GRPO, verifiers, engine.

Free of torch: `wb launch` validates it (and refuses a bad one) before anything heavy
loads, an `hf:<folder>` policy included (its config.json, family, positions and chat
template are read from the files). `rollout.max_staleness = 0` is the synchronous
baseline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from workbench.models.hf_config import (
    HF_PREFIX,
    CheckpointError,
    hf_folder,
    read_config,
    to_gpt_config,
)
from workbench.spec import Section, SpecBase

# Magistral's system prompt, adapted to the format our verifier scores
# (verifier.py): the response opens with its one think block, then a summary that ends
# in the one \boxed{} answer with nothing after it.
DEFAULT_SYSTEM_PROMPT = (
    "A user will ask you to solve a task. You should first draft your thinking process "
    "(inner monologue) until you have derived the final answer. Afterwards, write a "
    "self-contained summary of your thoughts (i.e. your summary should be succinct but "
    "contain all the critical steps you needed to reach the conclusion). Write both your "
    "thoughts and summary in the same language as the task posed by the user.\n\n"
    "Your response must start with your thinking process, following the template below:\n"
    "<think>\n"
    "Your thoughts or/and draft, like working through an exercise on scratch paper. Be as "
    "casual and as long as you want until you are confident to generate a correct "
    "answer.\n"
    "</think>\n\n"
    "Here, provide a concise summary that reflects your reasoning, and end it with the "
    "final answer in \\boxed{}, for example \\boxed{42}. Write nothing after the box."
)
# `policy.init = "hf:example"`: the tiny example checkpoint (models/example.py), written
# into the store's cache on first use, so an hf: run needs no download.
EXAMPLE_INIT = f"{HF_PREFIX}example"
HF_SHAPE_KEYS = ("n_layer", "n_head", "d_model", "warmstart_steps")  # a checkpoint has its own


class PolicySection(Section):
    """Where the policy starts, and its size when it is built here."""

    init: str = Field("warmstart", description="'warmstart' (supervised warm start on the "
                      "task format, cached in the store), 'random', 'run:<id>' (the latest "
                      "checkpoint of a pretrain run), or 'hf:<folder>' (a Hugging Face "
                      "Llama / Qwen2 / Qwen3 checkpoint folder with a chat template; "
                      "'hf:example' is the tiny example checkpoint, written into the "
                      "store's cache on first use; a folder named example: 'hf:./example').")
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="System message of the "
                               "chat template (hf: policies): Magistral's think-then-answer "
                               "instruction adapted to <think>...</think> then \\boxed{}; "
                               "empty = no system message. Byte policies (warmstart, random, "
                               "run:) see the bare task text, which they were trained on.")
    n_layer: int = Field(2, ge=1, le=64, description="Blocks (warmstart / random only).")
    n_head: int = Field(4, ge=1, description="Heads (warmstart / random only).")
    d_model: int = Field(128, ge=8, description="Width (warmstart / random only).")
    seq_len: int = Field(384, ge=16, description="Context: prompt + completion tokens.")
    warmstart_steps: int | None = Field(None, ge=1, description="Supervised steps of the "
                                        "warm start; unset = its built-in default.")

    @field_validator("init")
    @classmethod
    def _init_form(cls, init: str) -> str:
        if init in ("warmstart", "random") or \
                any(init.startswith(p) and len(init) > len(p) for p in ("run:", HF_PREFIX)):
            return init
        raise ValueError(f"policy.init {init!r}: use 'warmstart', 'random', 'run:<id>' or "
                         "'hf:<folder>'")


class TasksSection(Section):
    """Which problems the generators draw."""

    names: list[str] = Field(["sum", "count"], min_length=1,
                             description="Built-in procedural tasks to mix.")
    path: str | None = Field(None, description="A JSONL problem set instead of the built-ins.")
    verifier: str = Field("exact", description="Verifier for a JSONL set: exact, int, "
                          "number, list, math (math-verify equivalence), or "
                          "'package.module:function'.")
    prompt_field: str = Field("prompt", description="JSONL field holding the prompt.")
    answer_field: str = Field("answer", description="JSONL field holding the answer.")
    # Literal values: tasks.ANSWER_FORMATS (kept literal so the spec imports no numpy).
    answer_format: Literal["plain", "gsm8k", "boxed"] = Field(
        "plain", description="How answer_field holds the answer: 'plain' (as is), 'gsm8k' "
        "(a GSM8K solution; the answer follows its last '####'), 'boxed' (a MATH solution; "
        "the answer is its last \\boxed{...}).")

    @field_validator("verifier")
    @classmethod
    def _known_verifier(cls, name: str) -> str:
        from workbench.recipes.rl.verifier import is_verifier_name, verifier_choices

        if not is_verifier_name(name):
            raise ValueError(f"unknown verifier {name!r}; use {verifier_choices()}")
        return name


class GeneratorHost(Section):
    """Generators on one host (`rollout.hosts`)."""

    host: str = Field(description="A configured host (`wb hosts add`), or 'local'.")
    generators: int = Field(1, ge=1, le=64, description="Generators on that host.")

    @field_validator("host")
    @classmethod
    def _known_host(cls, host: str) -> str:
        from workbench.spec import configured_hosts

        known = configured_hosts()
        if host not in known:
            raise ValueError(f"host {host!r} is not configured (known: {', '.join(known)}); "
                             "add it with `wb hosts add`")
        return host


class RolloutSection(Section):
    """Generators, their batches and how stale their samples may be."""

    generators: int = Field(2, ge=1, le=64, description="Generator processes, on every "
                            "host together.")
    hosts: list[GeneratorHost] = Field(default_factory=list, description="Generators on "
                                       "other hosts, e.g. [{host = \"gpu1\", generators = "
                                       "2}]; the rest of rollout.generators run here. Empty: "
                                       "all here.")
    bind: str = Field("127.0.0.1", description="Interface the trainer's rollout (ZeroMQ) "
                      "and weights (torch.distributed) endpoints bind: an address of this "
                      "machine that the generators' hosts reach. Loopback by default; "
                      "never 0.0.0.0 unless set.")
    port: int = Field(0, ge=0, le=65535, description="TCP port of the rollout (ZeroMQ) "
                      "endpoint; 0 = a free one. Fix it for a firewall or a port forward.")
    connect: str = Field("", description="'host:port' the generators dial for the rollout "
                         "endpoint when it is not rollout.bind and its port: a port forward "
                         "or proxy in front of the trainer (with bind = 0.0.0.0, this "
                         "machine's address). Empty = bind and port. The weights rendezvous "
                         "is still reached at rollout.bind.")
    slots: int = Field(16, ge=1, le=4096, description="Sequences each generator decodes at "
                       "once (continuous batching).")
    l_max: int = Field(160, ge=8, description="Hard cap on completion tokens.")
    l_cache: int = Field(40, ge=0, description="Soft length-penalty zone below l_max.")
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling temperature.")
    max_staleness: int = Field(2, ge=0, le=1000, description="Max policy versions between a "
                               "sample's first token and the step that trains on it; 0 = "
                               "synchronous (generate, train, sync).")
    inflight: bool = Field(True, description="Load new weights mid-generation, keeping the KV "
                           "cache (Magistral); false = finish in-flight sequences on the old "
                           "weights first.")
    # Bounded waits (issue 21: never block on a dead peer for longer than a bound).
    # ge=1 for the two silences: both sides beat every 0.5 s (transport.BEAT_S), so a
    # shorter bound would declare healthy peers lost.
    generator_timeout_s: float = Field(20.0, ge=1, le=86400, description="A generator "
                                       "the trainer has not heard from for this long is "
                                       "declared lost (generator_lost) and its groups go "
                                       "to the others.")
    trainer_timeout_s: float = Field(20.0, ge=1, le=86400, description="A generator that "
                                     "has not heard from the trainer for this long exits.")
    join_timeout_s: float = Field(180.0, gt=0, le=86400, description="For every generator "
                                  "to start (ssh, imports) and join the trainer; the run "
                                  "fails in one line past it.")
    weights_timeout_s: float = Field(120.0, gt=0, le=86400, description="torch.distributed's "
                                     "timeout for the weights group: its rendezvous and "
                                     "every weights broadcast to one generator.")

    @field_validator("connect")
    @classmethod
    def _host_port(cls, connect: str) -> str:
        host, _, port = connect.rpartition(":")
        if connect and not (host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"rollout.connect {connect!r}: give 'host:port' (port 1-65535), "
                             "or leave it empty")
        return connect


class GRPOSection(Section):
    """Magistral's GRPO: no KL, token-level loss, clip-higher, zero-advantage groups dropped."""

    steps: int = Field(200, ge=1, description="Trainer steps (policy versions).")
    group_size: int = Field(8, ge=2, le=1024, description="Completions per prompt (G).")
    groups_per_step: int = Field(4, ge=1, le=4096, description="Prompt groups per step.")
    lr: float = Field(3e-4, gt=0, le=1, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    eps_low: float = Field(0.2, gt=0, lt=1, description="Clip ratio below 1 - eps_low.")
    eps_high: float = Field(0.28, gt=0, le=10, description="Clip ratio above 1 + eps_high.")
    grad_clip: float = Field(1.0, ge=0, description="Global grad-norm clip; 0 = off.")
    micro_batch_tokens: int = Field(4096, ge=64, description="Padded tokens per forward/"
                                    "backward: the step accumulates over length buckets.")
    checkpoint_every: int = Field(50, ge=0, description="Checkpoint every N steps (and at the "
                                  "end and on stop); 0 = only then.")


class VerifierSection(Section):
    procs: int = Field(1, ge=1, le=256, description="Verifier processes.")
    timeout_s: float = Field(5.0, gt=0, le=3600, description="Per-sample verification timeout; "
                             "a timeout scores 0 with the reason.")


class EngineSection(Section):
    name: Literal["torch", "vllm"] = Field("torch", description="torch (embedded, CPU or GPU) "
                                           "or vllm (GPU hosts, pip install workbench-lab[gpu]).")


class RLSpec(SpecBase):
    kind: Literal["rl"]
    policy: PolicySection = Field(default_factory=PolicySection)
    tasks: TasksSection = Field(default_factory=TasksSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    verifier: VerifierSection = Field(default_factory=VerifierSection)
    engine: EngineSection = Field(default_factory=EngineSection)

    @property
    def total_steps(self) -> int:
        return self.grpo.steps

    def for_launch(self) -> RLSpec:
        """Paths made absolute (the run's working directory is not `wb launch`'s)."""
        folder = hf_folder(self.policy.init)
        local_hf = folder is not None and self.policy.init != EXAMPLE_INIT
        if not self.tasks.path and not local_hf:
            return self
        spec = self.model_copy(deep=True)
        if self.tasks.path:
            spec.tasks.path = str(Path(self.tasks.path).expanduser().resolve())
        if local_hf:
            assert folder is not None
            spec.policy.init = f"{HF_PREFIX}{folder.resolve()}"
        return spec

    @model_validator(mode="after")
    def _consistent(self) -> RLSpec:
        if self.resources.nodes > 1:
            raise ValueError("resources.nodes: an rl run's trainer is one node; place "
                             "generators on other hosts with rollout.hosts — set "
                             "resources.nodes = 1")
        if self.resources.procs > 1:
            raise ValueError("resources.procs: an rl run starts its own processes — size "
                             "them with rollout.generators and verifier.procs and leave "
                             "resources.procs = 1")
        placed = sum(h.generators for h in self.rollout.hosts)
        if placed > self.rollout.generators:
            raise ValueError(f"rollout.hosts places {placed} generators but "
                             f"rollout.generators is {self.rollout.generators} — raise "
                             "rollout.generators to the total")
        remote = any(h.host != "local" for h in self.rollout.hosts)
        if remote and self.policy.init == EXAMPLE_INIT:
            raise ValueError("rollout.hosts: a remote generator cannot load hf:example (it "
                             "lives in this store's cache) — give hf:<folder> present at "
                             "the same path on every host, or a byte policy")
        if self.rollout.l_cache >= self.rollout.l_max:
            raise ValueError(f"rollout.l_cache ({self.rollout.l_cache}) must be below "
                             f"rollout.l_max ({self.rollout.l_max}) — lower l_cache")
        if self.policy.init.startswith(HF_PREFIX):
            check_hf_policy(self.policy)
        elif self.policy.d_model % self.policy.n_head:
            raise ValueError(f"policy.n_head ({self.policy.n_head}) must divide "
                             f"policy.d_model ({self.policy.d_model})")
        if self.rollout.l_max >= self.policy.seq_len:
            raise ValueError(f"rollout.l_max ({self.rollout.l_max}) leaves no room for the "
                             f"prompt in policy.seq_len ({self.policy.seq_len}) — raise seq_len")
        if self.tasks.path and not Path(self.tasks.path).expanduser().is_file():
            raise ValueError(f"tasks.path: no such file {self.tasks.path!r} — point it at a "
                             "JSONL problem set")
        if not self.tasks.path:
            from workbench.recipes.rl.tasks import TASKS  # torch-free

            unknown = [n for n in self.tasks.names if n not in TASKS]
            if unknown:
                raise ValueError(f"tasks.names: unknown task {unknown[0]!r} — use "
                                 f"{', '.join(sorted(TASKS))}")
        return self


def check_hf_policy(policy: PolicySection) -> None:
    """Refuse an hf: policy that cannot run, before launch and without torch: a folder that
    is not a checkpoint of a supported family, a policy.seq_len beyond its positions, a
    tokenizer without a chat template (the prompts go through it), or shape keys (the
    checkpoint has its own shape). Each refusal is one line naming the key."""
    fields = PolicySection.model_fields
    if changed := [k for k in HF_SHAPE_KEYS if getattr(policy, k) != fields[k].default]:
        raise ValueError(f"policy.{changed[0]} does not apply to an hf: policy (the "
                         "checkpoint has its own shape) — drop it")
    if policy.init == EXAMPLE_INIT:  # written at run start: its size is known
        from workbench.models.example import EXAMPLE_SEQ_LEN

        if policy.seq_len > EXAMPLE_SEQ_LEN:
            raise ValueError(f"policy.seq_len ({policy.seq_len}) exceeds the example "
                             f"checkpoint's max_position_embeddings ({EXAMPLE_SEQ_LEN}) — "
                             "lower policy.seq_len")
        return
    folder = hf_folder(policy.init)
    assert folder is not None
    try:
        cfg = read_config(folder)
        max_pos = int(cfg.get("max_position_embeddings", 2048))
        if policy.seq_len > max_pos:
            raise ValueError(f"policy.seq_len ({policy.seq_len}) exceeds the checkpoint's "
                             f"max_position_embeddings ({max_pos}) — lower policy.seq_len")
        to_gpt_config(cfg, policy.seq_len)  # what else our GPT cannot express
    except CheckpointError as exc:
        raise ValueError(f"policy.init: {exc}") from None
    if not has_chat_template(folder):
        raise ValueError(f"policy.init: {folder}: the tokenizer has no chat template — add "
                         "chat_template to tokenizer_config.json (or a chat_template.jinja) "
                         "or use a chat/instruct checkpoint")


def has_chat_template(folder: Path) -> bool:
    """Whether a checkpoint folder's tokenizer carries a chat template, from the files
    alone (transformers 5 writes chat_template.jinja; 4.x a key of tokenizer_config.json)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False

"""The `rl` spec: policy, tasks, rollout (generators, staleness), GRPO, verifiers, engine.

Free of torch: `wb launch` validates it (and refuses a bad one) before anything heavy
loads. `rollout.max_staleness = 0` is the synchronous baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from workbench.spec import Section, SpecBase


class PolicySection(Section):
    """Where the policy starts, and its size when it is built here."""

    init: str = Field("warmstart", description="'warmstart' (supervised warm start on the "
                      "task format, cached in the store), 'random', or 'run:<id>' (the latest "
                      "checkpoint of a pretrain run).")
    n_layer: int = Field(2, ge=1, le=64, description="Blocks (warmstart / random only).")
    n_head: int = Field(4, ge=1, description="Heads (warmstart / random only).")
    d_model: int = Field(128, ge=8, description="Width (warmstart / random only).")
    seq_len: int = Field(384, ge=16, description="Context: prompt + completion tokens.")
    warmstart_steps: int | None = Field(None, ge=1, description="Supervised steps of the "
                                        "warm start; unset = its built-in default.")

    @field_validator("init")
    @classmethod
    def _init_form(cls, init: str) -> str:
        if init in ("warmstart", "random") or (init.startswith("run:") and len(init) > 4):
            return init
        raise ValueError(f"policy.init {init!r}: use 'warmstart', 'random' or 'run:<id>'")


class TasksSection(Section):
    """Which problems the generators draw."""

    names: list[str] = Field(["sum", "count"], min_length=1,
                             description="Built-in procedural tasks to mix.")
    path: str | None = Field(None, description="A JSONL problem set instead of the built-ins.")
    verifier: str = Field("exact", description="Verifier for a JSONL set (see tasks).")
    prompt_field: str = Field("prompt", description="JSONL field holding the prompt.")
    answer_field: str = Field("answer", description="JSONL field holding the answer.")


class RolloutSection(Section):
    """Generators, their batches and how stale their samples may be."""

    generators: int = Field(2, ge=1, le=64, description="Generator processes.")
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
        if not self.tasks.path:
            return self
        spec = self.model_copy(deep=True)
        spec.tasks.path = str(Path(self.tasks.path).expanduser().resolve())
        return spec

    @model_validator(mode="after")
    def _consistent(self) -> RLSpec:
        if self.rollout.l_cache >= self.rollout.l_max:
            raise ValueError(f"rollout.l_cache ({self.rollout.l_cache}) must be below "
                             f"rollout.l_max ({self.rollout.l_max}) — lower l_cache")
        if self.policy.d_model % self.policy.n_head:
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

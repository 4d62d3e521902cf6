"""The `depth` spec: a recurrent-depth model trained on the built-in task, then
evaluated for what depth buys (Geiping et al. 2025). Torch-free, like every spec.

The model, optimizer, training and stability sections are every trained kind's
(`TrainedSpec`, recipes/common/trained_spec.py, pretrain's too; the model's arch is
fixed to recurrent-depth); `task` and `eval` are this kind's own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from workbench.recipes.common.model_spec import ModelSection
from workbench.recipes.common.trained_spec import TrainedSpec
from workbench.spec import Section

EXIT_RULES = ("none", "kl", "latent")


class DepthModelSection(ModelSection):
    arch: Literal["recurrent-depth"] = Field(
        "recurrent-depth", description="Architecture: recurrent-depth (the depth kind's only "
        "one).")


class TaskSection(Section):
    """The built-in chain-of-operations task (recipes/depth/task.py)."""

    name: Literal["chain"] = Field("chain", description="chain: a digit and k operations "
                                   "(+1, x3, 9-x) mod 10, answer after '='.")
    max_ops: int = Field(8, ge=1, le=64, description="Operations per problem: uniform in "
                         "1..max_ops.")


class EvalSection(Section):
    """After training: accuracy per fixed recurrence count, adaptive exit, KV memory,
    speculative decoding and decode speed."""

    recurrences: list[int] = Field([1, 2, 4, 8, 16, 32], min_length=1, description="Fixed "
                                   "recurrence counts to measure accuracy and speed at.")
    sequences: int = Field(128, ge=1, description="Evaluation sequences for the accuracy "
                           "table (each holds several problems).")
    exit: Literal["kl", "latent", "none"] = Field(
        "kl", description="Adaptive exit rule: kl (successive output distributions), latent "
        "(relative state change) or none.")
    threshold: float | None = Field(None, gt=0, description="Exit threshold; unset = the "
                                    "rule's default (kl 5e-4, latent 0.03).")
    adaptive_sequences: int = Field(32, ge=1, description="Sequences decoded token by token "
                                    "with adaptive exit (and at the fixed maximum, to "
                                    "compare).")
    draft_steps: int = Field(4, ge=1, description="Self-speculative decoding: draft "
                             "recurrences.")
    verify_steps: int = Field(32, ge=2, description="Self-speculative decoding: verify "
                              "recurrences (also the plain decoding it is compared with).")
    lookahead: int = Field(4, ge=1, le=64, description="Draft tokens per verify pass.")
    decode_tokens: int = Field(40, ge=1, description="Tokens generated per speed "
                               "measurement (plain and speculative decoding).")

    @field_validator("recurrences")
    @classmethod
    def _positive(cls, rs: list[int]) -> list[int]:
        if any(r < 1 for r in rs):
            raise ValueError("every recurrence count must be >= 1, e.g. [1, 2, 4, 8]")
        return sorted(set(rs))

    @property
    def max_steps(self) -> int:
        """The adaptive exit's cap, and the fixed depth it is compared with."""
        return max(self.recurrences)


class DepthSpec(TrainedSpec):
    kind: Literal["depth"]
    model: DepthModelSection = Field(default_factory=DepthModelSection)
    task: TaskSection = Field(default_factory=TaskSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _fits(self) -> DepthSpec:
        longest = self.task.max_ops + 4  # digit, ops, '=', answer, ';'
        if longest >= self.model.seq_len:
            raise ValueError(f"task.max_ops ({self.task.max_ops}) makes problems of up to "
                             f"{longest} tokens, too long for model.seq_len "
                             f"({self.model.seq_len}) — raise seq_len or lower max_ops")
        if self.eval.draft_steps >= self.eval.verify_steps:
            raise ValueError(f"eval.draft_steps ({self.eval.draft_steps}) must be less than "
                             f"eval.verify_steps ({self.eval.verify_steps})")
        if self.resources.nodes > 1:
            raise ValueError("the depth kind runs on one node — set resources.nodes = 1")
        if self.resources.procs > 1:
            raise ValueError("the depth kind runs in one process — set resources.procs = 1 "
                             "(pretrain a recurrent-depth model data-parallel with kind = "
                             "\"pretrain\" and model.arch = \"recurrent-depth\")")
        if self.eval.decode_tokens + self.eval.lookahead >= self.model.seq_len:
            raise ValueError(f"eval.decode_tokens + eval.lookahead must stay below "
                             f"model.seq_len ({self.model.seq_len}) — lower decode_tokens")
        return self

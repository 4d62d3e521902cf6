"""The built-in task where depth helps: a chain of digit operations.

Each problem is a digit and k operations applied left to right, mod 10, then `=` and
the answer digit:

    + adds 1      * triples      ~ mirrors (x -> 9 - x)

    7*~+=9        (7 * 3 = 21 -> 1, then 9 - 1 = 8, then 8 + 1 = 9)

Why it needs depth: every operation is a permutation of the ten digits and they do
not commute, so the answer depends on all k of them in order; the natural algorithm
carries the running value one operation per step. A model with a fixed stack of
layers can follow only so many steps; a recurrent-depth model can loop its core once
per step (and must: at r = 1 long chains fail; in Geiping et al. 2025 accuracy
rises with r). The operations are a fixed table of 3 x 10 entries, learned in a few hundred
steps, so a tiny model learns the task on a CPU in minutes.

A training sequence is BOS followed by whole problems separated by `;` up to
`seq_len`, then PAD. Only the answer digits are targets (the problems themselves are
random); k is uniform in 1..max_ops. Sequences are a pure function of (seed, index):
the loader resumes exactly.

Held-out problems: there are only 10 * 3^k problems with k operations (7,290 at
k = 6), so a training run sees every short problem many times, and an evaluation set
drawn from other seeds would mostly repeat them. Each problem (its text, e.g.
"7*~+=") therefore belongs to one split by a hash: about 1 in `HOLDOUT` is "eval",
the rest "train". Training sequences hold train problems only, the evaluation and
validation sequences eval problems only, so no evaluated problem was ever trained on,
at every chain length (`split_of`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import torch

from workbench.data.corpus import BOS, PAD
from workbench.data.loader import StepLoader

OPS = "+*~"
IGNORE = -100
EVAL_SEED_OFFSET = 1_000_000_007  # eval sequences come from seeds no training batch uses
HOLDOUT = 8  # about 1 problem in HOLDOUT is held out of training (module docstring)
SPLITS = ("train", "eval")
EVAL_SPLIT = f"held-out problems (1 in {HOLDOUT} by a hash of the problem text)"


def apply(op: str, x: int) -> int:
    if op == "+":
        return (x + 1) % 10
    if op == "*":
        return (3 * x) % 10
    return 9 - x


@dataclass(frozen=True)
class Problem:
    text: str  # "7*~+=" (without the answer)
    answer: str  # one digit
    ops: int


def split_of(text: str) -> str:
    """"eval" for about 1 problem text in HOLDOUT, else "train": a stable hash, so the
    split is the same in every process and run."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") % HOLDOUT == 0 else "train"


def draw_problem(rng: random.Random, k: int) -> Problem:
    """A random digit and `k` random operations."""
    x = rng.randint(0, 9)
    text = str(x)
    for _ in range(k):
        op = rng.choice(OPS)
        x = apply(op, x)
        text += op
    return Problem(text + "=", str(x), k)


def problem(rng: random.Random, max_ops: int, split: str = "train") -> Problem:
    """A random problem of `split`, k uniform in 1..max_ops: drawn again at the same k
    until its text falls in that split, so the split leaves k uniform (every length
    has problems in both)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {', '.join(SPLITS)}")
    k = rng.randint(1, max_ops)
    while True:
        p = draw_problem(rng, k)
        if split_of(p.text) == split:
            return p


@dataclass
class Sequence:
    ids: list[int]  # seq_len + 1 tokens: BOS, problems, PAD
    answers: list[int]  # positions p in ids[:-1] whose next token ids[p + 1] is an answer
    ops: list[int]  # the op count of each answer


@dataclass(frozen=True)
class ChainTask:
    max_ops: int = 8
    seq_len: int = 64

    def sequence(self, rng: random.Random, split: str = "train") -> Sequence:
        text, answers, ops = "", [], []
        while True:
            p = problem(rng, self.max_ops, split)
            if len(text) + len(p.text) + 2 > self.seq_len:  # the answer and ';' must fit
                break
            text += p.text
            answers.append(len(text))  # the '=' sits at ids[len(text)] (BOS first)
            ops.append(p.ops)
            text += p.answer + ";"
        ids = [BOS, *text.encode()]
        ids += [PAD] * (self.seq_len + 1 - len(ids))
        return Sequence(ids, answers, ops)

    def batch(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs [B, seq_len] and targets (answers only, else -100)."""
        x = torch.tensor([s.ids[:-1] for s in seqs])
        y = torch.full_like(x, IGNORE)
        for b, s in enumerate(seqs):
            for p in s.answers:
                y[b, p] = s.ids[p + 1]
        return x, y

    def sequences(self, seed: int, start: int, n: int, split: str = "train",
                  ) -> list[Sequence]:
        return [self.sequence(random.Random(seed * 1_000_003 + i), split)
                for i in range(start, start + n)]

    def eval_set(self, seed: int, n: int) -> list[Sequence]:
        """Evaluation sequences: held-out problems only, from seeds training never uses."""
        return self.sequences(seed + EVAL_SEED_OFFSET, 0, n, split="eval")

    def seen_set(self, seed: int, n: int) -> list[Sequence]:
        """Sequences of training-split problems from the evaluation's seeds: what the
        held-out accuracy is compared with."""
        return self.sequences(seed + EVAL_SEED_OFFSET, 0, n, split="train")


class TaskLoader(StepLoader):
    """Training batches for the Trainer (BatchLoader's interface): batch k holds
    sequences k * batch_size ... of the seed's stream."""

    def __init__(self, task: ChainTask, batch_size: int, seed: int) -> None:
        self.task, self.batch_size, self.seed = task, batch_size, seed
        self.step = 0

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task.batch(self.task.sequences(self.seed, k * self.batch_size,
                                                   self.batch_size))

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        if strict and (state.get("seed"), state.get("batch_size")) != (self.seed,
                                                                      self.batch_size):
            raise ValueError("checkpoint's task stream (seed, batch_size) differs from the spec")
        self.step = int(state["step"])

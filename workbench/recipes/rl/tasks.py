"""Verifiable reasoning tasks for RL: procedural generators and user JSONL problem sets.

Why these tasks
    Asynchronous RL pays off because rollout lengths are heavily skewed (Magistral,
    PipelineRL): a synchronous step waits for its longest completion. The skew must come from
    generation itself, so every built-in task has a size k (list length, string
    length) drawn from a heavy-tailed (Pareto) distribution, and both the worked
    reasoning in the think block and, for `reverse`, the answer grow linearly with k.
    Most problems are short (a tiny byte-level GPT solves them), a few are long (it
    rarely does, and they take many decode steps). The worked solutions are short
    enough for such a model: typically 20-150 bytes, at most about 400.

Completion format (Magistral, checked by verifier.py)
    ``<think>WORK</think>\\boxed{ANSWER}`` then EOS. Prompts end with a newline; the
    model continues right after it.

Built-in tasks (k = heavy_tail(rng, lo, hi, alpha) = min(hi, floor(lo * U^(-1/alpha))),
U uniform in (0, 1]; P(k >= x) ~ (lo/x)^alpha)

    sum      Add k one-digit numbers (1..9). The think block writes the running sum as
             a chain, one "+d=s" step per number, so each step is one copy and one
             small addition.
               prompt      ``sum: 3 4 7 2\\n``
               completion  ``<think>3+4=7+7=14+2=16</think>\\boxed{16}``
               verifier    int;  k in [1, 48], lo=2, alpha=1.1
    count    Count a letter in a string over the alphabet "abc". The think block copies
             the string and writes the running count after each match.
               prompt      ``count b: abbacb\\n``
               completion  ``<think>ab1b2acb3</think>\\boxed{3}``
               verifier    int;  k in [1, 120], lo=3, alpha=1.1
    reverse  Reverse a list of digits. The think block writes the reversed digits, the
             answer lists them comma-separated (the answer itself grows with k).
               prompt      ``reverse: 3 1 4 1 5\\n``
               completion  ``<think>5 1 4 1 3</think>\\boxed{5,1,4,1,3}``
               verifier    list; k in [1, 64], lo=2, alpha=1.1

    `TASKS_VERSION` is part of every cache key that depends on these definitions
    (the warm start): bump it whenever a prompt, completion or distribution changes.

Problem ids
    ``"{task}-{blake2b(prompt)[:12 hex]}"``: equal problems get equal ids on every
    machine. They identify a problem, not a GRPO group (the same problem may be drawn
    twice; the orchestration numbers its own groups).

User problem sets
    `load_jsonl(path, verifier, prompt_field, answer_field, answer_format)`: one JSON
    object per line, checked by the named verifier (verifier.py: a name in VERIFIERS,
    or "package.module:function" imported in the verifier processes). `answer_format`
    reads GSM8K ("... #### 72") and MATH ("... \\boxed{72}") solutions as they come,
    so those sets load without preprocessing. See its docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The completion format and the problem, shared with verifier.py; re-exported here.
from workbench.recipes.rl.problem import BOX_OPEN as BOX_OPEN
from workbench.recipes.rl.problem import THINK_CLOSE as THINK_CLOSE
from workbench.recipes.rl.problem import THINK_OPEN as THINK_OPEN
from workbench.recipes.rl.problem import Problem as Problem
from workbench.recipes.rl.problem import closing_brace as closing_brace
from workbench.recipes.rl.problem import completion_text as completion_text

TASKS_VERSION = 1


def heavy_tail(rng: np.random.Generator, lo: int, hi: int, alpha: float) -> int:
    """A Pareto size in [1, hi]: min(hi, floor(lo * U^(-1/alpha))), U uniform in (0, 1].

    P(k >= x) = (lo / x)^alpha for x >= lo, so with alpha near 1 the p99 is dozens of
    times the median: the heavy tail of rollout lengths that async RL exists for.
    """
    u = 1.0 - rng.random()  # (0, 1]
    return int(max(1, min(hi, np.floor(lo * u ** (-1.0 / alpha)))))


def _problem_id(task: str, prompt: str) -> str:
    return f"{task}-{hashlib.blake2b(prompt.encode(), digest_size=6).hexdigest()}"


@dataclass(frozen=True)
class Task:
    """A procedural task: draws a problem of heavy-tailed size and writes its solution."""

    name: str
    verifier: str
    lo: int  # Pareto scale: the typical size
    hi: int  # cap, so that the longest solution stays within a tiny model's context
    alpha: float  # tail index: smaller = heavier tail
    make: Callable[[np.random.Generator, int], tuple[str, str, dict[str, Any]]]
    solve: Callable[[dict[str, Any]], str]  # meta -> think block contents
    # meta, rng -> (think, answer) of a worked solution with one slip carried through
    slip: Callable[[dict[str, Any], np.random.Generator], tuple[str, str]]
    summary: str = ""

    def sample(self, rng: np.random.Generator) -> Problem:
        k = heavy_tail(rng, self.lo, self.hi, self.alpha)
        prompt, answer, meta = self.make(rng, k)
        meta = {"k": k, **meta}
        return Problem(_problem_id(self.name, prompt), self.name, prompt, answer,
                       self.verifier, meta)

    def solution(self, p: Problem) -> str:
        return completion_text(self.solve(p.meta), p.answer)

    def flawed_solution(self, p: Problem, rng: np.random.Generator) -> str:
        return completion_text(*self.slip(p.meta, rng))


# ----------------------------------------------------------------------------- sum


def _sum_make(rng: np.random.Generator, k: int) -> tuple[str, str, dict[str, Any]]:
    nums = [int(x) for x in rng.integers(1, 10, size=k)]
    return f"sum: {' '.join(map(str, nums))}\n", str(sum(nums)), {"nums": nums}


def _sum_think(meta: dict[str, Any]) -> str:
    nums = meta["nums"]
    out, total = [str(nums[0])], nums[0]
    for x in nums[1:]:
        total += x
        out.append(f"+{x}={total}")
    return "".join(out)


def _sum_slip(meta: dict[str, Any], rng: np.random.Generator) -> tuple[str, str]:
    """One running total off by one, and every total after it (the answer too)."""
    nums = meta["nums"]
    at, delta = int(rng.integers(0, len(nums))), int(rng.choice([-1, 1]))
    out, total = [], 0
    for i, x in enumerate(nums):
        total += x + (delta if i == at else 0)
        out.append(str(nums[0]) if i == 0 else f"+{x}={total}")
    return "".join(out), str(total)


# ----------------------------------------------------------------------------- count

COUNT_ALPHABET = "abc"


def _count_make(rng: np.random.Generator, k: int) -> tuple[str, str, dict[str, Any]]:
    letters = list(COUNT_ALPHABET)
    text = "".join(letters[i] for i in rng.integers(0, len(letters), size=k))
    target = letters[int(rng.integers(0, len(letters)))]
    return (f"count {target}: {text}\n", str(text.count(target)),
            {"text": text, "target": target})


def _count_think(meta: dict[str, Any]) -> str:
    out, n = [], 0
    for ch in meta["text"]:
        out.append(ch)
        if ch == meta["target"]:
            n += 1
            out.append(str(n))
    return "".join(out)


def _count_slip(meta: dict[str, Any], rng: np.random.Generator) -> tuple[str, str]:
    """From one match on, the running count is off by one (the answer too)."""
    matches = meta["text"].count(meta["target"])
    if matches == 0:
        return _count_think(meta), "1"
    at = int(rng.integers(0, matches))
    delta = int(rng.choice([-1, 1])) if at > 0 else 1
    out, n, seen = [], 0, 0
    for ch in meta["text"]:
        out.append(ch)
        if ch == meta["target"]:
            n += 1 + (delta if seen == at else 0)
            seen += 1
            out.append(str(n))
    return "".join(out), str(n)


# ----------------------------------------------------------------------------- reverse


def _reverse_make(rng: np.random.Generator, k: int) -> tuple[str, str, dict[str, Any]]:
    digits = [int(x) for x in rng.integers(0, 10, size=k)]
    answer = ",".join(map(str, reversed(digits)))
    return f"reverse: {' '.join(map(str, digits))}\n", answer, {"digits": digits}


def _reverse_think(meta: dict[str, Any]) -> str:
    return " ".join(map(str, reversed(meta["digits"])))


def _reverse_slip(meta: dict[str, Any], rng: np.random.Generator) -> tuple[str, str]:
    """Two neighbours swapped (or, where they are equal, one digit changed), in the
    think block and the answer alike."""
    out = list(reversed(meta["digits"]))
    i = int(rng.integers(0, len(out)))
    if i + 1 < len(out) and out[i] != out[i + 1]:
        out[i], out[i + 1] = out[i + 1], out[i]
    else:
        out[i] = (out[i] + 1 + int(rng.integers(0, 9))) % 10
    return " ".join(map(str, out)), ",".join(map(str, out))


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("sum", "int", lo=2, hi=48, alpha=1.1, make=_sum_make, solve=_sum_think,
             slip=_sum_slip,
             summary="add k one-digit numbers; the think block writes the running sum"),
        Task("count", "int", lo=3, hi=120, alpha=1.1, make=_count_make, solve=_count_think,
             slip=_count_slip,
             summary="count a letter in a k-letter string; running count after each match"),
        Task("reverse", "list", lo=2, hi=64, alpha=1.1, make=_reverse_make,
             solve=_reverse_think, slip=_reverse_slip,
             summary="reverse k digits; the answer is the comma-separated reversed list"),
    )
}


def sample_problem(rng: np.random.Generator, names: Sequence[str]) -> Problem:
    """Draw one problem: a task chosen uniformly from `names` (repeat a name to weight it)."""
    if not names:
        raise ValueError("no task names given; pick from " + ", ".join(TASKS))
    name = names[int(rng.integers(0, len(names)))]
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name].sample(rng)


def solution_text(p: Problem) -> str:
    """A correct worked completion in the exact format (no EOS): for the warm start / SFT.

    Built-in tasks write their worked reasoning; a JSONL problem uses its record's
    "solution" field when there is one (stored in meta), else an empty think block
    around the reference answer.
    """
    if p.task in TASKS:
        return TASKS[p.task].solution(p)
    if isinstance(p.meta.get("solution"), str):
        return p.meta["solution"]
    return completion_text("", p.answer)


def flawed_solution_text(p: Problem, rng: np.random.Generator) -> str:
    """A worked completion in the exact format with one slip carried through to a wrong
    answer (a built-in task), for a warm start that imitates imperfect traces."""
    if p.task not in TASKS:
        raise ValueError(f"no flawed solutions for {p.task!r}: built-in tasks only")
    return TASKS[p.task].flawed_solution(p, rng)


# ----------------------------------------------------------------------------- JSONL

# How a record's answer field holds its answer (see load_jsonl).
ANSWER_FORMATS = ("plain", "gsm8k", "boxed")
GSM8K_MARK = "####"
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after its last "####", stripped,
    thousands commas dropped ("... #### 1,234" -> "1234"), so that "int" and "number"
    verifiers can read it. ValueError when there is no mark or nothing after it."""
    if GSM8K_MARK not in solution:
        raise ValueError(f"no {GSM8K_MARK!r} final answer in the solution")
    answer = _THOUSANDS_COMMA.sub("", solution.rsplit(GSM8K_MARK, 1)[1].strip())
    if not answer:
        raise ValueError(f"nothing after the last {GSM8K_MARK!r}")
    return answer


def boxed_answer(solution: str) -> str:
    """The final answer of a MATH solution: the contents of its last \\boxed{...}, braces
    matched ("\\boxed{\\frac{1}{2}}" -> "\\frac{1}{2}"), stripped. ValueError when there is
    no box, it never closes, or it is empty."""
    at = solution.rfind(BOX_OPEN)
    if at < 0:
        raise ValueError("no \\boxed{...} answer in the solution")
    start = at + len(BOX_OPEN)
    end = closing_brace(solution, start)
    if end < 0:
        raise ValueError("the last \\boxed{ never closes")
    answer = solution[start:end].strip()
    if not answer:
        raise ValueError("the last \\boxed{} is empty")
    return answer


def _record_answer(value: Any, answer_format: str) -> str:
    """The reference answer of one record's answer field (ValueError says why not)."""
    if answer_format == "plain":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError("must be a string or number")
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string (a solution) for answer_format {answer_format!r}")
    return gsm8k_answer(value) if answer_format == "gsm8k" else boxed_answer(value)


def load_jsonl(path: str | os.PathLike[str], verifier: str, prompt_field: str = "prompt",
               answer_field: str = "answer", answer_format: str = "plain") -> list[Problem]:
    """A user problem set: one JSON object per line, checked by the named verifier.

    - `prompt_field` must be a string; a newline is appended when it does not end with
      one (a byte-level policy continues after the prompt's newline; a chat template
      does not mind it).
    - `answer_field`, read according to `answer_format`:
        "plain"  the answer itself, a string or a number (stored as its str());
        "gsm8k"  a GSM8K solution: the answer is what follows its last "####",
                 thousands commas removed (`gsm8k_answer`);
        "boxed"  a MATH solution: the answer is its last \\boxed{...} (`boxed_answer`).
      The solution text itself is not kept: only the answer is checked.
    - An optional "id" field names the problem (default "<file stem>:<line>"); every
      other field goes to meta, so a "solution" field (a worked completion in the
      format) is what `solution_text` returns for it.
    - Blank lines are skipped. Anything else raises ValueError("FILE:LINE: ...").
    - `verifier` is checked now (a VERIFIERS name or an importable "module:function"),
      so a typo fails at load, not in the verifier processes.
    """
    from workbench.recipes.rl.verifier import get_verifier  # only for a user set

    get_verifier(verifier)
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format {answer_format!r}: use one of "
                         f"{', '.join(ANSWER_FORMATS)}")
    path = Path(path)
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            prompt = rec.get(prompt_field)
            if not isinstance(prompt, str):
                raise ValueError(f"{where}: field {prompt_field!r} must be a string")
            try:
                answer = _record_answer(rec.get(answer_field), answer_format)
            except ValueError as e:
                raise ValueError(f"{where}: field {answer_field!r}: {e}") from None
            if not prompt.endswith("\n"):
                prompt += "\n"
            pid = str(rec.get("id", f"{path.stem}:{lineno}"))
            meta = {k: v for k, v in rec.items() if k not in (prompt_field, answer_field, "id")}
            problems.append(Problem(pid, f"jsonl:{path.stem}", prompt, answer, verifier, meta))
    return problems

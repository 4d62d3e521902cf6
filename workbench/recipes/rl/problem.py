"""A verifiable problem and the completion format (Magistral), shared by the RL modules.

``<think>WORK</think>\\boxed{ANSWER}``: tasks.py writes completions in it and
verifier.py parses them. Both need `Problem` and the markers, and tasks.py looks up
verifiers, so these live here and neither imports the other back
(tests/test_layout.py). tasks.py re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

THINK_OPEN, THINK_CLOSE, BOX_OPEN = "<think>", "</think>", "\\boxed{"


@dataclass(frozen=True)
class Problem:
    """One verifiable problem. Picklable (it crosses into the verifier processes)."""

    id: str
    task: str  # a TASKS name, or "jsonl:<file stem>" for a user set
    prompt: str  # ends with "\n"; the completion follows it directly
    answer: str  # the reference answer, compared by `verifier`
    verifier: str  # a VERIFIERS name or "module:function"
    # Task data (the numbers, the string) for solution_text. Left out of == and hash
    # (everything else determines the problem), so a Problem can key a dict.
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def closing_brace(text: str, start: int) -> int:
    """Index of the "}" that closes a brace opened just before `start`, or -1.

    Braces nest ("{" opens, "}" closes), so a box holding "\\frac{1}{2}" ends after it.
    """
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def completion_text(think: str, answer: str) -> str:
    """The exact completion format: one think block, then the boxed answer, nothing else."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{BOX_OPEN}{answer}}}"

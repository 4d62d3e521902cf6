"""The engine interface's types: `Request`, `Completion` and the `Engine` protocol.

In a module of their own so that the engines (torch_engine.py, vllm.py) import them
without importing the package's `make_engine`, which imports the engines (the
contract is in engine/__init__.py's docstring; tests/test_layout.py refuses cycles).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@dataclass
class Request:
    id: int  # unique per engine
    prompt: list[int]  # token ids: BOS + bytes, or a chat template's rendering
    max_new_tokens: int
    meta: dict = field(default_factory=dict)  # passed through untouched


@dataclass
class Completion:
    id: int
    prompt: list[int]
    meta: dict
    tokens: list[int]  # generated ids (the stop id included if it stopped on one)
    logprobs: list[float]  # log p(token) at the sampling temperature, under the weights
    #                        that sampled it (T = 0: the plain log-softmax)
    versions: list[int]  # policy version that produced each token
    finish: str  # "stop" (a stop id) or "length" (max_new_tokens or the cache length)


@runtime_checkable
class Engine(Protocol):
    version: int

    def add(self, req: Request) -> None: ...

    def step(self, admit: bool = True) -> list[Completion]: ...

    def has_work(self) -> bool: ...

    def num_active(self) -> int: ...

    def num_waiting(self) -> int: ...

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

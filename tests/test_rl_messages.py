"""The RL role messages (workbench/recipes/rl/messages.py): each survives the encoding of
the channel it travels on (multiprocessing's pickler for the spawned processes' queues
and pipes, the ZeroMQ transport's `seal` / `unseal`, JSON for what crosses ssh or is
read before authentication), and a handler refuses what it does not know, loudly."""

from __future__ import annotations

from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from workbench.recipes.rl.messages import (
    WIRE,
    Ack,
    Beat,
    Bye,
    Check,
    Checked,
    FromGenerator,
    GeneratorJoined,
    GeneratorLost,
    GeneratorStart,
    Granted,
    Hello,
    PeerRefused,
    Rollout,
    Stats,
    Stop,
    UnexpectedMessage,
    VerifierReady,
    Want,
    WeightsReady,
)
from workbench.recipes.rl.problem import Problem
from workbench.recipes.rl.transport import PROTOCOL, WireError, _mac, seal, unseal
from workbench.recipes.rl.verifier import Score

PROBLEM = Problem(id="add:1", task="add", prompt="1+2=\n", answer="3", verifier="int")
ROLLOUT = Rollout(group=3, index=1, problem=PROBLEM, prompt=[1, 2], tokens=[5, 6, 7],
                  logprobs=[-0.5, -0.25, -1.0], versions=[2, 2, 3], finish="stop",
                  text="<think>x</think>\\boxed{3}")
HELLO = Hello(rank=2, host="box", pid=1234, protocol=PROTOCOL.decode())

# One of every class that goes over ZeroMQ, generator -> trainer and back.
WIRED: list[Any] = [ROLLOUT, Want(want_id=4, n=1, version=2),
                    Stats(busy_s=1.5, idle_s=0.25, tokens=40, slot_s=3.0, decode_s=1.0),
                    Beat(), Bye(), Ack(keys=((3, 1),)), Granted(want_id=4, groups=[8, 9]),
                    WeightsReady(version=5), Stop()]
# What travels between the trainer's processes and threads (pickled by multiprocessing,
# or handed over in one process).
LOCAL: list[Any] = [FromGenerator(2, ROLLOUT), FromGenerator(1, WIRED[2]),
                    GeneratorJoined(2, HELLO), GeneratorLost(2, "silent for 20 s"),
                    PeerRefused("wrong secret", HELLO.info()), VerifierReady(pid=99),
                    Check(7, PROBLEM, ROLLOUT.text, 3, l_max=40, l_cache=8),
                    Checked(7, Score(0.9, True, True, 0.0, "correct", answer="3"))]
START = GeneratorStart(rank=1, world=3, address="tcp://127.0.0.1:5555",
                       dist_address="127.0.0.1:6000", spec_toml='kind = "rl"\n',
                       model_config={"seq_len": 64, "n_layer": 1}, tokenizer_name="bytes",
                       secret="s3cret", version=2, parent_pid=42)


def test_every_wire_class_is_listed_once() -> None:
    assert sorted(WIRE) == sorted(type(m).kind for m in WIRED)
    assert all(WIRE[type(m).kind] is type(m) for m in WIRED)


@pytest.mark.parametrize("message", WIRED + LOCAL + [START],
                         ids=lambda m: type(m).__name__)
def test_round_trip_through_multiprocessing_pickling(message: Any) -> None:
    again = ForkingPickler.loads(bytes(ForkingPickler.dumps(message)))
    assert again == message and type(again) is type(message)


@pytest.mark.parametrize("message", WIRED, ids=lambda m: type(m).__name__)
def test_round_trip_through_the_zmq_transport(message: Any) -> None:
    key = b"k" * 32
    frames = seal(key, message)
    assert frames[0] == type(message).kind
    assert unseal(key, frames) == message


def test_the_transport_opens_nothing_it_cannot_authenticate_or_place() -> None:
    key = b"k" * 32
    kind, data, mac = seal(key, WeightsReady(5))
    with pytest.raises(WireError, match="authentication"):
        unseal(b"x" * 32, [kind, data, mac])  # another session's key
    with pytest.raises(WireError, match="authentication"):
        unseal(key, [kind, data + b"!", mac])  # tampered
    with pytest.raises(WireError, match="authentication"):
        unseal(key, [kind, data])  # no MAC
    bogus = seal(key, Beat())  # a body of another class under a kind, MAC'd properly
    frames = [Stop.kind, bogus[1], _mac(key, Stop.kind, bogus[1])]
    with pytest.raises(WireError, match="a Beat under the kind b'stop'"):
        unseal(key, frames)
    frames = [b"nope", bogus[1], _mac(key, b"nope", bogus[1])]
    with pytest.raises(WireError, match="unknown message kind"):
        unseal(key, frames)


def test_the_start_and_the_hello_cross_as_json() -> None:
    assert GeneratorStart.from_json(START.to_json()) == START
    assert "s3cret" not in repr(START)  # printed in a traceback, it must not leak
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        GeneratorStart.from_json(START.to_json()[:-1] + ', "colour": 1}')
    with pytest.raises(ValueError, match="generator arguments"):
        GeneratorStart.from_json('{"rank": 1}')
    assert Hello.from_json(HELLO.to_json()) == HELLO
    for bad in (b"[]", b'{"host": "box"}', b'{"rank": "one"}', b"not json"):
        with pytest.raises(ValueError):
            Hello.from_json(bad)


def _trainer(tmp_path: Path) -> Any:
    """A tiny Trainer whose roles are just what `handle` reads."""
    import torch

    from workbench.models.gpt import GPT
    from workbench.recipes.rl.spec import RLSpec
    from workbench.recipes.rl.trainer import Trainer, policy_config
    from workbench.spec import parse_spec

    spec: RLSpec = parse_spec('kind = "rl"\n[policy]\ninit = "random"\nn_layer = 1\n'
                              'd_model = 16\nn_head = 2\nseq_len = 64\n'
                              '[rollout]\nl_max = 16\nl_cache = 4\n')  # type: ignore[assignment]
    torch.manual_seed(0)
    ctx = SimpleNamespace(checkpoint_dir=tmp_path, resume_dir=None,
                          run=SimpleNamespace(event=lambda *a, **k: None))
    trainer = Trainer(spec, ctx, GPT(policy_config(spec)))  # type: ignore[arg-type]
    trainer.roles = SimpleNamespace(lost=set(), generators={1: None})  # type: ignore[assignment]
    return trainer


def test_the_trainer_handles_its_inbox_and_rejects_anything_else(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    trainer.handle(FromGenerator(1, Stats(1.0, 0.5, 40, 2.0, 1.0)))
    assert trainer.tokens_by == {1: 40} and trainer.gen_busy == 1.0
    trainer.handle(GeneratorJoined(1, HELLO))
    for stranger in (("rollout", 1, 0, 0, None), WeightsReady(3), object()):
        with pytest.raises(UnexpectedMessage, match="rl trainer: unexpected message"):
            trainer.handle(stranger)

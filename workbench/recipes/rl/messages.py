"""Every message that passes between the RL roles, one frozen dataclass each, so that
both ends name fields instead of unpacking tuples by position.

Who sends what:
- trainer -> a new generator: `GeneratorStart` (the arguments of `generator_main`: a
  multiprocessing child gets it pickled; a remote one as one JSON line on its ssh stdin).
- generator -> trainer, over ZeroMQ (transport.py, pickled after the handshake, each
  message under a MAC): `Rollout`, `Want`, `Stats`, `Beat`, `Bye`. The handshake's
  `Hello` travels as JSON instead: nothing is unpickled before the peer has proven the
  run's secret.
- trainer -> generator, the same way: `Ack`, `Granted`, `WeightsReady`, `Stop`, `Beat`.
- the hub's thread -> the trainer's loop (`Hub.inbox`, in one process):
  `FromGenerator` (a `Rollout` or `Stats`, with the rank of the authenticated session
  it came on), `GeneratorJoined`, `GeneratorLost`, `PeerRefused`.
- trainer <-> a verifier process (verifier.py, over a multiprocessing Pipe):
  `Check` -> `Checked`, `VerifierReady` once at start, `Stop` at the end.

`kind` (a class attribute) is the first ZeroMQ frame of a wire message: the hub and the
link read it before anything is unpickled, and it is under the MAC. `WIRE` maps it back
to the class, and transport.py checks that a decoded body is of that class.

Stdlib only: the verifier's processes import this module, and must not pay for torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from workbench.recipes.rl.problem import Problem


class UnexpectedMessage(TypeError):
    """A role got a message it has no handler for: a bug, or mismatched code."""

    def __init__(self, where: str, message: object) -> None:
        super().__init__(f"{where}: unexpected message {type(message).__name__} "
                         f"({message!r:.200})")


# ----------------------------------------------------------------------------- start


@dataclass(frozen=True, slots=True)
class GeneratorStart:
    """Everything a generator process needs from the trainer, sent once at its start:
    local generators get it as their multiprocessing argument, remote ones as JSON on
    the ssh stdin (never on a command line: the secret is in it)."""

    rank: int  # 1.. (the trainer is rank 0 of the weights group)
    world: int  # generators + 1
    address: str  # the hub's ZeroMQ endpoint
    dist_address: str  # host:port of torch.distributed's rendezvous
    spec_toml: str  # the run's spec, as the generators see it
    model_config: dict[str, Any]  # GPTConfig's fields
    tokenizer_name: str  # as load_tokenizer takes it: "bytes" or "hf:<folder>"
    secret: str = field(repr=False)  # the run's, proven in the handshake; never printed
    version: int  # the trainer's weights version at start
    parent_pid: int | None = None  # the trainer, when it is this process's parent

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> GeneratorStart:
        """Raises ValueError naming the missing or unknown fields."""
        data = json.loads(line)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - names:
            unknown = sorted(set(data) - names) if isinstance(data, dict) else data
            raise ValueError(f"generator arguments: unknown fields {unknown}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"generator arguments: {exc}") from None


# ----------------------------------------------------------------------------- handshake


@dataclass(frozen=True, slots=True)
class Hello:
    """A generator's introduction, the first thing it sends. JSON, not pickle: it is read
    before the peer is authenticated. Its exact bytes enter the handshake's MACs."""

    rank: int
    host: str
    pid: int
    protocol: str | None  # None from a peer that names none (refused)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Hello:
        """Raises ValueError on anything but a well-formed hello."""
        try:
            d = json.loads(data)
            return cls(rank=int(d["rank"]), host=str(d.get("host", "")),
                       pid=int(d.get("pid", 0)),
                       protocol=None if d.get("protocol") is None else str(d["protocol"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed hello: {exc}") from None

    def info(self) -> dict[str, Any]:
        """As the trainer records it (`peer_refused` events, `Hub.joined`)."""
        return asdict(self)


# ----------------------------------------------------------------------------- generator -> trainer


@dataclass(frozen=True, slots=True)
class Rollout:
    """One finished completion: sample `index` of group `group`, kept by the generator
    until acked. (group, index) is its delivery key."""

    kind: ClassVar[bytes] = b"rollout"
    group: int
    index: int
    problem: Problem
    prompt: list[int]
    tokens: list[int]
    logprobs: list[float]  # the sampling distribution's, one per token
    versions: list[int]  # the weights version that generated each token
    finish: str  # why it ended: "stop" or "length"
    text: str  # the tokens decoded by the policy's tokenizer

    @property
    def key(self) -> tuple[int, int]:
        return self.group, self.index


@dataclass(frozen=True, slots=True)
class Want:
    """A request for up to `n` group ids, for a generator holding weights `version` (the
    staleness rule is checked against it). Resent until answered; `want_id` lets the hub
    answer a repeat with the same groups."""

    kind: ClassVar[bytes] = b"want"
    want_id: int
    n: int
    version: int


@dataclass(frozen=True, slots=True)
class Stats:
    """A generator's figures since its last `Stats`: they become the trainer's `perf/`
    metrics (a remote generator writes no store)."""

    kind: ClassVar[bytes] = b"stats"
    busy_s: float
    idle_s: float
    tokens: int
    slot_s: float  # sum over decode steps of (sequences decoded x step seconds)
    decode_s: float


@dataclass(frozen=True, slots=True)
class Beat:
    """Proof of life, either way, at least every BEAT_S: silence is how a hung peer is
    noticed."""

    kind: ClassVar[bytes] = b"beat"


@dataclass(frozen=True, slots=True)
class Bye:
    """A generator closing its link on purpose: the hub ends its session at once."""

    kind: ClassVar[bytes] = b"bye"


# ----------------------------------------------------------------------------- trainer -> generator


@dataclass(frozen=True, slots=True)
class Ack:
    """The hub has these rollouts (keys (group, index)): the generator drops its copies."""

    kind: ClassVar[bytes] = b"ack"
    keys: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Granted:
    """The answer to `Want` number `want_id`: the group ids this generator starts now;
    empty when none is admissible for its weights."""

    kind: ClassVar[bytes] = b"groups"
    want_id: int
    groups: list[int]


@dataclass(frozen=True, slots=True)
class WeightsReady:
    """Weights `version` follow, by the gloo broadcast over this generator's {0, rank}
    group: the generator must enter that broadcast."""

    kind: ClassVar[bytes] = b"weights"
    version: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Leave now (the run is over or stopped). Also the verifier's end of work."""

    kind: ClassVar[bytes] = b"stop"


WIRE: dict[bytes, type] = {cls.kind: cls for cls in (
    Rollout, Want, Stats, Beat, Bye, Ack, Granted, WeightsReady, Stop)}
"""The classes that travel over ZeroMQ, by their first frame."""

ToTrainer = Rollout | Want | Stats | Beat | Bye
ToGenerator = Ack | Granted | WeightsReady | Stop | Beat
Control = Granted | WeightsReady | Stop
"""What the link hands the generator's loop (acks and beats it handles itself)."""


# ----------------------------------------------------------------------------- hub -> trainer


@dataclass(frozen=True, slots=True)
class FromGenerator:
    """A rollout or stats message, with the rank of the authenticated session it came
    on (not one the sender claims in it)."""

    rank: int
    message: Rollout | Stats


@dataclass(frozen=True, slots=True)
class GeneratorJoined:
    """A generator completed the handshake: the trainer waits for every one before the
    weights rendezvous. `again`: a new session of a generator that had one (it
    reconnected); `weights_resent`: the version of the weights announcement the hub
    sent again on it (one pending when the connection dropped), else None."""

    rank: int
    hello: Hello
    again: bool = False
    weights_resent: int | None = None


@dataclass(frozen=True, slots=True)
class GeneratorLost:
    """A generator silent for longer than the hub's peer timeout: the trainer records it
    and restarts its groups elsewhere."""

    rank: int
    reason: str


@dataclass(frozen=True, slots=True)
class PeerRefused:
    """A connection that failed the handshake or sent something unauthenticated: the
    trainer records it once (`peer_refused` event)."""

    reason: str
    hello: dict[str, Any] = field(default_factory=dict)  # what it said of itself, if any

    def detail(self) -> dict[str, Any]:
        return {"reason": self.reason, **self.hello}


Inbound = FromGenerator | GeneratorJoined | GeneratorLost | PeerRefused


# ----------------------------------------------------------------------------- verifiers


@dataclass(frozen=True, slots=True)
class Check:
    """Score one completion (verifier.py `score`); `job_id` is the pool's own."""

    job_id: int
    problem: Problem
    completion: str
    n_tokens: int
    l_max: int
    l_cache: int


@dataclass(frozen=True, slots=True)
class Checked:
    """The score of check `job_id`. Checks finish in the order they were sent."""

    job_id: int
    score: Any  # a verifier.Score (not imported: verifier.py imports this module)


@dataclass(frozen=True, slots=True)
class VerifierReady:
    """A verifier process has imported what it needs: checks may be sent to it (its
    deadline starts counting only then)."""

    pid: int

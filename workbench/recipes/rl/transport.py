"""Rollouts and control between the RL trainer and its generators, local or on other
hosts: ZeroMQ (pyzmq), as vLLM and AReaL use, not a socket protocol of our own.

Sockets. The trainer binds one ROUTER (`Hub`) on the interface the nodes share
(`rollout.bind`, 127.0.0.1 by default, never 0.0.0.0 unless asked); every generator,
local ones included, connects one DEALER (`Link`), so local and remote generators run
the same code. ZeroMQ does the framing, the connection and the reconnection; what is
ours is the few message kinds below and the bookkeeping of delivery.

Who may talk: a per-run secret (`new_secret`), made at run start, never written to the
store (not in the config, not in the spec): local generators get it as an argument,
remote ones on the ssh stdin. It is proven by HMAC-SHA256 challenge-response in the
handshake: the generator says `hello` (its rank, host, pid), the hub answers a fresh
random nonce, the generator returns HMAC(secret, nonce + hello) and both derive a
session key from the same two; every later message, either way, carries an HMAC of its
frames under that key, and nothing is unpickled before its MAC checks. A peer that
fails the proof (or sends anything unauthenticated) is refused, and the hub reports it
once per connection (`peer_refused` event, written by the trainer).

Why HMAC rather than ZeroMQ CURVE (zmq.auth): CURVE would need a key pair per side
and a ZAP authenticator thread, and a refused client never reaches the application, so
logging the refusal as a run event means hooking the authenticator's log; a shared
secret proven by HMAC needs one string sent over ssh (already an authenticated,
encrypted channel) and the refusal is an ordinary message. What it does not give is
encryption: rollouts travel in the clear on the shared interface, as the weights
already do over gloo (which has neither authentication nor encryption); use a private
network between the nodes, or CURVE if that matters more than the rest.

Delivery. A rollout is keyed by (group id, sample index). The generator keeps every
rollout until the hub acknowledges it, and sends it again after `ACK_TIMEOUT_S`
without an ack, or at once after a new handshake (a reconnection that lost its
session): at-least-once. The hub takes a key once, from the group's current owner only
(a group restarted on another generator forgets what it had), and acknowledges every
copy: the trainer trains on none twice. Group ids are granted by the hub (`want` ->
`groups`), under the same staleness rule as on one node (`take_group`, against
the generator's own weights version); a `want` is retried until answered, and a
repeated one gets the same answer, on whichever session of that generator it comes
(the answers are kept by rank), so a reply lost with a connection loses no group. The copies it does
not take are counted (`Hub.duplicates`, the trainer's `rl/duplicates_dropped`).

Weights announcements. A `WeightsReady` routed to a connection that has just dropped is
lost (ZeroMQ drops what goes to a closed peer), and the trainer, already waiting in the
gloo broadcast it announced, would wait there for the whole weights timeout. So the hub
keeps the announcement pending (`announce`) until the trainer says that broadcast is
over (`broadcast_done`), and sends it again right after the welcome of the generator's
next session; the generator ignores a version it already received.

Bounded waits. Both sides send at least every `BEAT_S`; a generator the hub has not
heard from for its `peer_timeout_s` (`rollout.generator_timeout_s`; timed from its first
message after the handshake: it loads its engine in between, and its process is watched
meanwhile) is reported lost, and a generator that has not heard from the trainer for
the link's `peer_timeout_s` (`rollout.trainer_timeout_s`) leaves. The
handshake has its own timeout. The hub's
socket is served by a thread of the trainer, so generators get groups and acks while
the trainer computes a step.

Frames. The handshake's are raw: hello (`messages.Hello` as JSON), challenge (the
nonce), auth (the proof), welcome (a MAC), refused (the reason), rehello. After it,
every message is one of the dataclasses of messages.py, as three frames: its `kind`,
the pickled dataclass, and the MAC of both (`seal` / `unseal`); `unseal` also checks
that the body is of its kind's class. generator -> trainer: `Rollout`, `Want`, `Stats`,
`Beat`, `Bye`; trainer -> generator: `Ack`, `Granted`, `WeightsReady`, `Stop`, `Beat`
(a lost generator's `Stop` is a bare kind frame: its session is gone). The hub hands
the trainer `messages.Inbound` items.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import queue
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from workbench.recipes.rl.messages import (
    WIRE,
    Ack,
    Beat,
    Bye,
    Control,
    FromGenerator,
    GeneratorJoined,
    GeneratorLost,
    Granted,
    Hello,
    Inbound,
    PeerRefused,
    Rollout,
    Stats,
    Stop,
    ToGenerator,
    ToTrainer,
    Want,
    WeightsReady,
)

PROTOCOL = b"wb-rl-2"  # 2: the session messages are messages.py's dataclasses
BEAT_S = 0.5
PEER_TIMEOUT_S = 20.0
ACK_TIMEOUT_S = 2.0
HANDSHAKE_TIMEOUT_S = 20.0
REHELLO_EVERY_S = 1.0


class LinkError(RuntimeError):
    """The generator's link to the trainer failed: refused, or the trainer is gone."""


def new_secret() -> str:
    return secrets.token_hex(32)


def _mac(key: bytes, *frames: bytes) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for f in frames:
        h.update(len(f).to_bytes(8, "little"))
        h.update(f)
    return h.digest()


def _keys(secret: str, nonce: bytes, hello: bytes) -> tuple[bytes, bytes]:
    """(the proof the generator sends, the session key both use)."""
    s = secret.encode()
    return _mac(s, PROTOCOL, b"auth", nonce, hello), _mac(s, PROTOCOL, b"session", nonce, hello)


class WireError(ValueError):
    """Frames that are not a session message of ours: a bad MAC, an unknown kind, or a
    body of another class than its kind says."""


def seal(key: bytes, message: ToTrainer | ToGenerator) -> list[bytes]:
    """A session message's frames: its kind, the pickled dataclass, the MAC of both."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return [message.kind, data, _mac(key, message.kind, data)]


def unseal(key: bytes, frames: list[bytes]) -> ToTrainer | ToGenerator:
    """The message `seal` made of `frames`; WireError otherwise. Nothing is unpickled
    before its MAC checks."""
    if len(frames) != 3 or not hmac.compare_digest(frames[2], _mac(key, frames[0], frames[1])):
        raise WireError("bad message authentication code")
    cls = WIRE.get(frames[0])
    if cls is None:
        raise WireError(f"unknown message kind {frames[0][:20]!r}")
    message = pickle.loads(frames[1])  # noqa: S301 - authenticated above
    if type(message) is not cls:
        raise WireError(f"a {type(message).__name__} under the kind {frames[0]!r}")
    return message  # type: ignore[no-any-return]


def endpoint(bind: str, port: int) -> str:
    host = f"[{bind}]" if ":" in bind else bind
    return f"tcp://{host}:{port}"


# ----------------------------------------------------------------------------- groups


def admissible(g: int, per_step: int, engine_version: int, max_staleness: int,
               steps: int) -> bool:
    """Whether group g may start on an engine holding weights `engine_version`: its batch
    (g // per_step) is at most `max_staleness` versions ahead of those weights (its first
    token's version), and the run still trains that batch."""
    batch = g // per_step
    return batch <= engine_version + max_staleness and batch < steps


def take_group(redo: list[int], started: Any, engine_version: int, per_step: int,
               max_staleness: int, steps: int) -> int | None:
    """The next group this generator starts, or None to wait.

    A restarted group (`redo`, oldest first) goes before a new one, under the same
    staleness bound: a redo group too far ahead of this engine's weights waits (and so
    does every new group, all of which are later). `started`: the shared counter of new
    groups (an mp.Value), advanced only when its group is taken."""
    if redo:
        if not admissible(redo[0], per_step, engine_version, max_staleness, steps):
            return None
        return redo.pop(0)
    with started.get_lock():
        g = int(started.value)
        if not admissible(g, per_step, engine_version, max_staleness, steps):
            return None
        started.value = g + 1
    return g



class _Counter:
    """What `take_group` expects of the group counter (it took an mp.Value once), in
    one process: the hub's lock is held around every use."""

    def __init__(self, value: int) -> None:
        self.value = value

    def get_lock(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


class Groups:
    """Group ids and who generates them, on the trainer's side: grants under the
    staleness rule (restarted groups first), the owner of each group, and the keys
    already delivered (de-duplication). Used under the hub's lock."""

    def __init__(self, first: int, per_step: int, max_staleness: int, steps: int) -> None:
        self.started = _Counter(first)
        self.per_step, self.max_staleness, self.steps = per_step, max_staleness, steps
        self.redo: list[int] = []
        self.owner: dict[int, int] = {}
        self.delivered: dict[int, set[int]] = {}

    def grant(self, rank: int, n: int, engine_version: int) -> list[int]:
        out: list[int] = []
        for _ in range(n):
            g = take_group(self.redo, self.started, engine_version, self.per_step,
                           self.max_staleness, self.steps)
            if g is None:
                break
            self.owner[g] = rank
            self.delivered[g] = set()
            out.append(g)
        return out

    def accept(self, rank: int, g: int, i: int) -> bool:
        """Whether this copy of (g, i) is new and from g's current owner."""
        if self.owner.get(g) != rank:
            return False
        seen = self.delivered.setdefault(g, set())
        if i in seen:
            return False
        seen.add(i)
        return True

    def restart(self, groups: list[int]) -> None:
        """Groups to generate again, whole, by whichever generator asks first."""
        for g in groups:
            self.owner.pop(g, None)
            self.delivered.pop(g, None)
            if g not in self.redo:
                self.redo.append(g)
        self.redo.sort()

    def trained(self, below: int) -> None:
        """Forget the groups of trained batches (every group id < below)."""
        for d in (self.owner, self.delivered):
            for g in [g for g in d if g < below]:
                del d[g]


# ----------------------------------------------------------------------------- hub


@dataclass
class Peer:
    rank: int
    key: bytes
    hello: Hello
    last_seen: float
    active: bool = False  # has sent since the handshake: its silence is timed from then


@dataclass(frozen=True)
class _Post:
    """A message for the hub's thread to send: to generator `rank`, or every live one."""

    rank: int | None
    message: ToGenerator


@dataclass(frozen=True)
class _StopRoute:
    """A bare `Stop` frame for a connection whose session was dropped (a lost generator)."""

    rid: bytes


class Hub:
    """The trainer's end: a ROUTER served by a thread. The trainer reads `inbox`
    (`messages.Inbound`: `FromGenerator`, `GeneratorJoined`, `GeneratorLost`,
    `PeerRefused`) and sends with `send`."""

    def __init__(self, secret: str, bind: str = "127.0.0.1", port: int = 0, *,
                 groups: Groups | None = None, peer_timeout_s: float = PEER_TIMEOUT_S) -> None:
        self.secret = secret
        self.groups = groups if groups is not None else Groups(0, 1, 1 << 30, 1 << 30)
        self.peer_timeout_s = peer_timeout_s
        self.lock = threading.Lock()
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self._out: queue.Queue[_Post | _StopRoute] = queue.Queue()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if port:
            self.sock.bind(endpoint(bind, port))
        else:
            port = self.sock.bind_to_random_port(endpoint(bind, 0).rsplit(":", 1)[0])
        self.bind, self.port = bind, port
        self.address = endpoint(bind, port)
        self.sessions: dict[bytes, Peer] = {}  # routing id -> peer
        self.routes: dict[int, bytes] = {}  # rank -> its current routing id
        self.lost: set[int] = set()
        self.ranks_seen: set[int] = set()  # every rank that ever had a session
        # rank -> (its last want id, the groups granted for it): by rank, not by session,
        # so a `Granted` lost with a dropped connection is answered the same on the next
        # session instead of granting new groups and stranding the first ones
        self.answers: dict[int, tuple[int, list[int]]] = {}
        self.challenges: dict[bytes, tuple[bytes, bytes, float]] = {}  # rid -> nonce, hello
        self.refused: set[bytes] = set()
        self.rehello_at: dict[bytes, float] = {}
        # rank -> the weights announced to it whose broadcast has not completed yet:
        # sent again on its next session, lest a reconnection lose it (`announce`)
        self.announced: dict[int, WeightsReady] = {}
        self.received = self.sent_bytes = self.received_bytes = 0
        self.duplicates = 0  # rollout copies not taken (see `_handle`)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="wb-rl-hub", daemon=True)
        self._thread.start()

    # -- the trainer's side -------------------------------------------------------------

    def send(self, rank: int | None, message: ToGenerator) -> None:
        """To one generator, or every live one (rank None). Dropped for a generator
        without a session (not joined yet, or lost)."""
        self._out.put(_Post(rank, message))

    def announce(self, rank: int, message: WeightsReady) -> None:
        """Tell generator `rank` to enter the broadcast of new weights, and keep telling
        it, on every new session, until `broadcast_done(rank)`: an announcement sent
        while its connection drops is lost with that connection (ZeroMQ drops what is
        routed to a closed peer), and the trainer would then wait in the broadcast for
        the whole weights timeout. The generator ignores a version it already has."""
        with self.lock:
            self.announced[rank] = message
        self.send(rank, message)

    def broadcast_done(self, rank: int) -> None:
        """The broadcast `announce` prepared is over (done, or failed): stop repeating."""
        with self.lock:
            self.announced.pop(rank, None)

    def drop(self, rank: int) -> None:
        """A lost generator: its session ends and anything it still sends is ignored."""
        with self.lock:
            self.lost.add(rank)
            self.announced.pop(rank, None)
            rid = self.routes.pop(rank, None)
            if rid is not None:
                self.sessions.pop(rid, None)
        self.send_raw_stop(rid)

    def send_raw_stop(self, rid: bytes | None) -> None:
        if rid is not None:
            self._out.put(_StopRoute(rid))

    def joined(self) -> dict[int, dict[str, Any]]:
        with self.lock:
            return {p.rank: p.hello.info() for p in self.sessions.values()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)
        self.ctx.term()

    # -- the thread ---------------------------------------------------------------------

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        last_beat = 0.0
        while not self._stop.is_set():
            try:
                if poller.poll(5):
                    while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        self._handle(self.sock.recv_multipart(zmq.NOBLOCK))
                self._flush_out()
                now = time.monotonic()
                if now - last_beat >= BEAT_S:
                    last_beat = now
                    self._beat(now)
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                raise

    def _send(self, rid: bytes, message: ToGenerator, key: bytes) -> None:
        """A session message (sealed under the peer's key)."""
        self._send_frames(rid, seal(key, message))

    def _send_frames(self, rid: bytes, frames: list[bytes]) -> None:
        self.sent_bytes += sum(len(f) for f in frames)
        try:
            self.sock.send_multipart([rid, *frames], zmq.NOBLOCK)
        except zmq.Again:  # a peer's queue is full (it stopped reading): drop, it is lost
            pass

    def _flush_out(self) -> None:
        while True:
            try:
                item = self._out.get_nowait()
            except queue.Empty:
                return
            match item:
                case _StopRoute(rid):
                    self._send_frames(rid, [Stop.kind])
                case _Post(rank, message):
                    with self.lock:
                        targets = ([(rid, p) for rid, p in self.sessions.items()]
                                   if rank is None
                                   else [(self.routes[rank], self.sessions[self.routes[rank]])]
                                   if rank in self.routes else [])
                    for rid, peer in targets:
                        self._send(rid, message, peer.key)

    def _beat(self, now: float) -> None:
        with self.lock:
            peers = list(self.sessions.items())
        for rid, peer in peers:
            self._send(rid, Beat(), peer.key)
            if peer.active and now - peer.last_seen > self.peer_timeout_s:
                with self.lock:
                    self.sessions.pop(rid, None)
                    if self.routes.get(peer.rank) == rid:
                        del self.routes[peer.rank]
                self.inbox.put(GeneratorLost(peer.rank,
                                             f"silent for {now - peer.last_seen:.0f} s"))
        for rid in [r for r, c in self.challenges.items() if now - c[2] > HANDSHAKE_TIMEOUT_S]:
            del self.challenges[rid]

    def _refuse(self, rid: bytes, why: str, info: dict[str, Any] | None = None) -> None:
        self._send_frames(rid, [b"refused", why.encode()])
        if rid not in self.refused:
            self.refused.add(rid)
            self.inbox.put(PeerRefused(why, info or {}))

    def _handle(self, frames: list[bytes]) -> None:
        rid, kind = frames[0], frames[1] if len(frames) > 1 else b""
        self.received += 1
        self.received_bytes += sum(len(f) for f in frames[1:])
        peer = self.sessions.get(rid)
        if peer is None:
            self._handshake(rid, kind, frames[2:])
            return
        if kind in (b"hello", b"auth"):  # a late copy of this session's handshake
            return
        try:
            message = unseal(peer.key, frames[1:])
        except WireError as exc:
            self._refuse(rid, str(exc), peer.hello.info())
            return
        peer.last_seen = time.monotonic()
        peer.active = True
        match message:
            case Rollout():
                with self.lock:
                    new = (self.groups.accept(peer.rank, message.group, message.index)
                           and peer.rank not in self.lost)
                    if not new:  # a repeat of a delivered key, or not the owner's
                        self.duplicates += 1
                if new:
                    self.inbox.put(FromGenerator(peer.rank, message))
                self._send(rid, Ack((message.key,)), peer.key)
            case Want(want_id, n, version):
                with self.lock:
                    last = self.answers.get(peer.rank)
                    if last is None or last[0] != want_id:
                        last = (want_id, self.groups.grant(peer.rank, n, version))
                        self.answers[peer.rank] = last
                    answer = last[1]
                self._send(rid, Granted(want_id, answer), peer.key)
            case Stats():
                self.inbox.put(FromGenerator(peer.rank, message))
            case Bye():
                with self.lock:
                    self.sessions.pop(rid, None)
                    if self.routes.get(peer.rank) == rid:
                        del self.routes[peer.rank]
            case Beat():
                pass  # last_seen is all it is for
            case _:  # a trainer's message, sealed with this session's key: not a generator
                self._refuse(rid, f"unexpected {type(message).__name__} from a generator",
                             peer.hello.info())

    def _handshake(self, rid: bytes, kind: bytes, rest: list[bytes]) -> None:
        if kind == b"hello" and len(rest) == 1:
            try:
                said = Hello.from_json(rest[0])
            except ValueError:
                self._refuse(rid, "malformed hello")
                return
            if said.protocol != PROTOCOL.decode():
                self._refuse(rid, f"protocol {said.protocol!r}", said.info())
                return
            pending = self.challenges.get(rid)
            if pending is not None and pending[1] == rest[0]:  # the same hello again
                nonce = pending[0]
            else:
                nonce = secrets.token_bytes(32)
            self.challenges[rid] = (nonce, rest[0], time.monotonic())
            self._send_frames(rid, [b"challenge", nonce])
        elif kind == b"auth" and len(rest) == 1 and rid in self.challenges:
            nonce, hello, _ = self.challenges.pop(rid)
            said = Hello.from_json(hello)  # parsed when it came
            proof, key = _keys(self.secret, nonce, hello)
            if not hmac.compare_digest(rest[0], proof):
                self._refuse(rid, "wrong secret", said.info())
                return
            rank = said.rank
            with self.lock:
                if rank in self.lost:
                    self._send_frames(rid, [b"refused", b"this generator was declared lost"])
                    return
                old = self.routes.get(rank)
                if old is not None:
                    self.sessions.pop(old, None)
                self.sessions[rid] = Peer(rank, key, said, time.monotonic())
                self.routes[rank] = rid
                pending = self.announced.get(rank)
                again = rank in self.ranks_seen
                self.ranks_seen.add(rank)
            self._send_frames(rid, [b"welcome", b"", _mac(key, b"welcome", b"")])
            if pending is not None:  # after the welcome: the link reads it as a session's
                self._send(rid, pending, key)
            self.inbox.put(GeneratorJoined(
                rank, said, again=again,
                weights_resent=None if pending is None else pending.version))
        elif len(rest) == 2:  # a session message from a connection we do not know: the
            # peer reconnected (new routing id) or we forgot it; ask for a new handshake
            now = time.monotonic()
            if now - self.rehello_at.get(rid, 0.0) >= REHELLO_EVERY_S:
                self.rehello_at[rid] = now
                self._send_frames(rid, [b"rehello"])
        else:
            self._refuse(rid, f"unexpected {kind[:20]!r} before the handshake")


# ----------------------------------------------------------------------------- link


class Link:
    """A generator's end: a DEALER to the hub, the handshake, rollouts kept until acked."""

    def __init__(self, address: str, secret: str, rank: int, *,
                 timeout_s: float = HANDSHAKE_TIMEOUT_S,
                 peer_timeout_s: float = PEER_TIMEOUT_S) -> None:
        self.address, self.secret, self.rank = address, secret, rank
        self.peer_timeout_s = peer_timeout_s
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.sock.connect(address)
        self.key = b""
        self.unacked: dict[tuple[int, int], tuple[float, Rollout]] = {}  # key -> sent at
        self.want: Want | None = None  # the open question, asked at `want_at`
        self.want_at = 0.0
        self.next_want = 0
        self.heard = self.said = time.monotonic()
        self.handshakes = self.resent = 0
        self.handshake(timeout_s)

    def handshake(self, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
        """hello -> challenge -> auth -> welcome; LinkError when refused or unanswered.
        Sent again every second until answered (the trainer may not listen yet)."""
        hello = Hello(self.rank, socket.gethostname(), os.getpid(),
                      PROTOCOL.decode()).to_json()
        deadline = time.monotonic() + timeout_s
        sent = 0.0
        self.key = b""
        while True:
            now = time.monotonic()
            if now > deadline:
                raise LinkError(f"no handshake with the trainer at {self.address} within "
                                f"{timeout_s:g} s")
            if now - sent > 1.0 and not self.key:
                self.sock.send_multipart([b"hello", hello])
                sent = now
            if not self.sock.poll(100):
                continue
            frames = self.sock.recv_multipart()
            if frames[0] == b"refused":
                why = frames[1].decode(errors="replace") if len(frames) > 1 else ""
                raise LinkError(f"the trainer refused this generator: {why}")
            if frames[0] == b"challenge" and len(frames) == 2 and not self.key:
                proof, key = _keys(self.secret, frames[1], hello)
                self.sock.send_multipart([b"auth", proof])
                self.key = key
            elif frames[0] == b"welcome" and self.key and len(frames) == 3 and \
                    hmac.compare_digest(frames[2], _mac(self.key, b"welcome", frames[1])):
                self.handshakes += 1
                self.heard = time.monotonic()
                return

    def send(self, message: ToTrainer) -> None:
        self.sock.send_multipart(seal(self.key, message))
        self.said = time.monotonic()

    def rollout(self, rollout: Rollout) -> None:
        """Send (and keep until acked) one completion."""
        self.unacked[rollout.key] = (time.monotonic(), rollout)
        self.send(rollout)

    def ask(self, n: int, version: int) -> None:
        """Ask for up to n groups for weights `version` (one question at a time)."""
        if self.want is None:
            self.want = Want(self.next_want, n, version)
            self.want_at = time.monotonic()
            self.next_want += 1
            self.send(self.want)

    def poll(self, timeout_ms: int = 0) -> list[Control]:
        """Messages from the trainer for the generator (`Granted`, `WeightsReady`,
        `Stop`), after acks, resends and beats are handled. LinkError when the trainer
        has been silent too long."""
        out: list[Control] = []
        while self.sock.poll(timeout_ms):
            timeout_ms = 0
            frames = self.sock.recv_multipart()
            kind = frames[0]
            if kind == Stop.kind:  # sealed, or bare after this generator was dropped
                out.append(Stop())
                continue
            if kind == b"refused":
                raise LinkError("the trainer refused this generator: "
                                + (frames[1].decode(errors="replace") if len(frames) > 1
                                   else ""))
            if kind == b"rehello":
                self.handshake()
                self.resend(force=True)
                if self.want is not None:
                    self.send(self.want)
                continue
            try:
                message = unseal(self.key, frames)
            except WireError:
                continue  # not from our trainer's session (or not a message we know)
            self.heard = time.monotonic()
            match message:
                case Ack(keys):
                    for key in keys:
                        self.unacked.pop(tuple(key), None)  # type: ignore[arg-type]
                case Granted(want_id):
                    if self.want is not None and want_id == self.want.want_id:
                        self.want = None
                        out.append(message)
                case Beat():
                    pass
                case WeightsReady() | Stop():
                    out.append(message)
                case _:  # a generator's message, sealed with this session's key
                    raise LinkError(f"unexpected {type(message).__name__} from the trainer")
        now = time.monotonic()
        if now - self.heard > self.peer_timeout_s:
            raise LinkError(f"the trainer has been silent for {now - self.heard:.0f} s")
        self.resend()
        if self.want is not None and now - self.want_at > ACK_TIMEOUT_S:
            self.want_at = now
            self.send(self.want)
        if now - self.said > BEAT_S:
            self.send(Beat())
        return out

    def resend(self, force: bool = False) -> None:
        now = time.monotonic()
        for key, (t, rollout) in list(self.unacked.items()):
            if force or now - t > ACK_TIMEOUT_S:
                self.unacked[key] = (now, rollout)
                self.send(rollout)
                self.resent += 1

    def close(self, bye: bool = True) -> None:
        if bye and self.key:
            try:
                self.send(Bye())
            except zmq.ZMQError:
                pass
        self.sock.close(linger=0)
        self.ctx.term()


"""The RL rollout transport (workbench/recipes/rl/transport.py) on real ZeroMQ sockets
over 127.0.0.1: the secret's handshake and the refusal of a client without it,
de-duplication by (group, index), resending after a reconnection, group grants under
the staleness rule, and bounded waits on a silent peer."""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import Any

import pytest
import zmq

from workbench.recipes.rl.messages import (
    FromGenerator,
    GeneratorJoined,
    GeneratorLost,
    Granted,
    Inbound,
    PeerRefused,
    Rollout,
    WeightsReady,
)
from workbench.recipes.rl.transport import Groups, Hub, Link, LinkError, new_secret


def rollout(g: int, i: int, text: str = "", tokens: list[int] | None = None) -> Rollout:
    """A completion with just enough in it to tell copies apart."""
    return Rollout(g, i, None, [], tokens or [], [], [], "stop", text)  # type: ignore[arg-type]


def drain(hub: Hub, kinds: tuple[type, ...], seconds: float) -> list[Inbound]:
    """Inbox items of the given classes arriving within `seconds`."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            item = hub.inbox.get(timeout=0.05)
        except queue.Empty:
            continue
        if isinstance(item, kinds):
            out.append(item)
    return out


def delivered(hub: Hub, seconds: float) -> list[Rollout]:
    """The rollouts the hub passes on within `seconds`."""
    return [item.message for item in drain(hub, (FromGenerator,), seconds)
            if isinstance(item, FromGenerator) and isinstance(item.message, Rollout)]


def pump(link: Link, seconds: float, until: Any = None) -> list[Any]:
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        got += link.poll(20)
        if until is not None and until():
            break
    return got


def groups_for(link: Link, n: int, version: int = 0) -> list[int]:
    link.ask(n, version)
    for message in pump(link, 5, until=lambda: link.want is None):
        if isinstance(message, Granted):
            return message.groups
    raise AssertionError("no answer to want")


@pytest.fixture
def hub() -> Any:
    h = Hub(new_secret(), groups=Groups(0, per_step=2, max_staleness=0, steps=10))
    yield h
    h.close()


def test_binds_loopback_by_default(hub: Hub) -> None:
    assert hub.address.startswith("tcp://127.0.0.1:")


def test_handshake_rollouts_are_acked_and_deduplicated(hub: Hub) -> None:
    link = Link(hub.address, hub.secret, rank=1)
    try:
        (joined,) = drain(hub, (GeneratorJoined,), 1)
        assert isinstance(joined, GeneratorJoined)
        assert joined.rank == 1 and joined.hello.pid > 0
        assert groups_for(link, 2) == [0, 1]
        assert groups_for(link, 1) == []  # batch 1 > version 0 + staleness 0
        link.rollout(rollout(0, 0, tokens=[1, 2, 3]))
        link.rollout(rollout(0, 1, tokens=[4]))
        pump(link, 5, until=lambda: not link.unacked)
        assert not link.unacked
        link.rollout(rollout(0, 0, tokens=[1, 2, 3]))  # a copy (as after a reconnection)
        link.resend(force=True)
        pump(link, 2, until=lambda: not link.unacked)
        got = delivered(hub, 1)
        assert sorted(r.key for r in got) == [(0, 0), (0, 1)]
        assert got[0].tokens == [1, 2, 3] or got[1].tokens == [1, 2, 3]
    finally:
        link.close()


def test_a_client_without_the_secret_is_refused_and_reported(hub: Hub) -> None:
    with pytest.raises(LinkError, match="refused"):
        Link(hub.address, "not-the-secret", rank=1, timeout_s=5)
    (refused,) = drain(hub, (PeerRefused,), 1)
    assert isinstance(refused, PeerRefused)
    assert refused.reason == "wrong secret" and refused.detail()["rank"] == 1
    # A raw client that skips the handshake gets nothing but a refusal, and nothing it
    # sends is unpickled or delivered.
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.connect(hub.address)
    raw.send_multipart([b"rollout", b"\x80\x04junk"])
    assert raw.poll(5000)
    assert raw.recv_multipart()[0] == b"refused"
    raw.close(linger=0)
    ctx.term()
    assert [r.reason for r in drain(hub, (PeerRefused,), 0.5)] == \
        ["unexpected b'rollout' before the handshake"]  # type: ignore[union-attr]
    assert drain(hub, (FromGenerator, GeneratorJoined), 0.2) == []


def test_only_the_owner_of_a_group_delivers_it_and_restarted_groups_go_elsewhere(
        hub: Hub) -> None:
    a, b = Link(hub.address, hub.secret, rank=1), Link(hub.address, hub.secret, rank=2)
    try:
        assert groups_for(a, 1) == [0]
        b.rollout(rollout(0, 0, "not b's group"))
        pump(b, 2, until=lambda: not b.unacked)  # acked, but not delivered
        assert delivered(hub, 0.3) == []
        with hub.lock:
            hub.groups.restart([0])
        assert groups_for(b, 1) == [0]  # restarted groups first, to whoever asks
        a.rollout(rollout(0, 0, "a's old attempt"))  # a no longer owns it
        b.rollout(rollout(0, 0, "b's"))
        pump(a, 1, until=lambda: not a.unacked)
        pump(b, 1, until=lambda: not b.unacked)
        assert [r.text for r in delivered(hub, 0.5)] == ["b's"]
    finally:
        a.close()
        b.close()


class Proxy:
    """A TCP forwarder between a link and the hub that can swallow what the client
    sends (`swallow`) or what the hub sends (`swallow_replies`) and cut every
    connection: a network drop, seen by both ends. `arm_at_rollout`: swallow the hub's
    messages from the next chunk the client sends that is as large as a rollout (a
    small one is about 900 bytes; beats and stats under 150), so its ack is lost."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.swallow = self.swallow_replies = self.arm_at_rollout = False
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self.arm_at_rollout and len(data) >= 700:
                    self.swallow_replies, self.arm_at_rollout = True, False
                if not (self.swallow if from_client else self.swallow_replies):
                    dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns = []

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_a_rollout_lost_in_a_dropped_connection_is_sent_again_after_reconnecting(
        hub: Hub) -> None:
    proxy = Proxy(hub.port)
    link = Link(f"tcp://127.0.0.1:{proxy.port}", hub.secret, rank=1)
    try:
        assert groups_for(link, 2) == [0, 1]
        link.rollout(rollout(0, 0, "delivered before the drop"))
        pump(link, 5, until=lambda: not link.unacked)
        proxy.swallow = True
        link.rollout(rollout(0, 1, "lost in the drop"))
        time.sleep(0.3)
        proxy.cut()  # the connection drops with the rollout unacked
        proxy.swallow = False
        assert (0, 1) in link.unacked
        link.rollout(rollout(1, 0, "sent while reconnecting"))
        pump(link, 15, until=lambda: not link.unacked)
        assert not link.unacked and link.handshakes == 2 and link.resent >= 1
        items = drain(hub, (FromGenerator, GeneratorJoined), 0.5)
        got = [item.message for item in items if isinstance(item, FromGenerator)]
        assert sorted(r.key for r in got) == [(0, 0), (0, 1), (1, 0)]  # type: ignore[union-attr]
        assert len(items) - len(got) == 2  # joined: the first session and the new one
    finally:
        link.close()
        proxy.close()


def test_a_weights_announcement_lost_in_a_dropped_connection_is_sent_again(
        hub: Hub) -> None:
    """Issue 21: the trainer announces new weights (then waits in the gloo broadcast)
    while the generator's connection drops; the announcement is lost with it. On the
    generator's new session the hub announces the pending weights again, until the
    trainer says the broadcast is over; then a later reconnection announces nothing."""
    proxy = Proxy(hub.port)
    link = Link(f"tcp://127.0.0.1:{proxy.port}", hub.secret, rank=1)
    try:
        pump(link, 0.6)  # a beat: the session is in use
        proxy.swallow_replies = True
        hub.announce(1, WeightsReady(5))
        time.sleep(0.3)  # sent into the dying connection
        assert pump(link, 0.3) == []
        t0 = time.monotonic()
        proxy.cut()
        proxy.swallow_replies = False
        got: list[Any] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(isinstance(m, WeightsReady)
                                                      for m in got):
            got += link.poll(20)
        resent_s = time.monotonic() - t0
        assert link.handshakes == 2
        assert [m for m in got if isinstance(m, WeightsReady)] == [WeightsReady(5)]
        joined = [m for m in drain(hub, (GeneratorJoined,), 0.5)
                  if isinstance(m, GeneratorJoined)]
        assert [(j.again, j.weights_resent) for j in joined] == [(False, None), (True, 5)]
        print(f"weights announcement resent {resent_s:.2f} s after the cut")
        hub.broadcast_done(1)  # the broadcast went through: nothing pending any more
        proxy.cut()
        pump(link, 15, until=lambda: link.handshakes == 3)
        assert link.handshakes == 3
        assert not any(isinstance(m, WeightsReady) for m in pump(link, 1))
        (again,) = drain(hub, (GeneratorJoined,), 0.5)
        assert isinstance(again, GeneratorJoined) and again.weights_resent is None
    finally:
        link.close()
        proxy.close()


def test_groups_granted_in_a_reply_lost_with_the_connection_are_granted_again(
        hub: Hub) -> None:
    """A `Granted` lost with a dropped connection: the generator asks again on its new
    session and gets the same groups (the hub keeps its answers by rank, not by
    session), so no group stays owned by a generator that never heard of it."""
    proxy = Proxy(hub.port)
    link = Link(f"tcp://127.0.0.1:{proxy.port}", hub.secret, rank=1)
    try:
        proxy.swallow_replies = True
        link.ask(2, 0)
        time.sleep(0.3)  # granted by the hub, the reply lost
        with hub.lock:
            assert hub.groups.owner == {0: 1, 1: 1}
        proxy.cut()
        proxy.swallow_replies = False
        got = pump(link, 15, until=lambda: link.want is None)
        assert link.handshakes == 2
        assert [m.groups for m in got if isinstance(m, Granted)] == [[0, 1]]
        assert groups_for(link, 1) == []  # nothing else was granted meanwhile
    finally:
        link.close()
        proxy.close()


def test_silence_is_bounded_on_both_sides() -> None:
    hub = Hub(new_secret(), peer_timeout_s=1.5)
    link = Link(hub.address, hub.secret, rank=3, peer_timeout_s=1.5)
    try:
        drain(hub, (GeneratorJoined,), 0.5)
        pump(link, 0.7)  # talks once (a beat), then
        # stops talking (a hung or killed process): reported lost.
        t0 = time.monotonic()
        lost = hub.inbox.get(timeout=5)
        assert isinstance(lost, GeneratorLost) and lost.rank == 3 and time.monotonic() - t0 < 4
    finally:
        hub.close()
    # The trainer is gone: the generator notices within its timeout.
    t0 = time.monotonic()
    with pytest.raises(LinkError, match="silent"):
        pump(link, 10)
    assert time.monotonic() - t0 < 4
    link.close(bye=False)


def test_throughput_over_loopback(hub: Hub) -> None:
    """Rollouts/s and MB/s of the transport alone (printed for the note; a floor
    only, the machine is shared)."""
    link = Link(hub.address, hub.secret, rank=1)
    try:
        hub.groups.per_step, hub.groups.max_staleness, hub.groups.steps = 1, 1 << 20, 1 << 20
        n, size = 2000, 400  # a 400-token completion: tokens, log-probs, versions
        payload = dict(prompt=[], tokens=list(range(size)), logprobs=[0.5] * size,
                       versions=[1] * size, finish="length", text="x" * size)
        gs = groups_for(link, n // 8)
        t0 = time.perf_counter()
        for k in range(n):
            link.rollout(Rollout(gs[k // 8], k % 8, None, **payload))  # type: ignore[arg-type]
            if k % 64 == 0:
                link.poll(0)
        pump(link, 60, until=lambda: not link.unacked)
        dt = time.perf_counter() - t0
        got = delivered(hub, 1)
        assert len(got) == n
        mb = hub.received_bytes / 1e6
        print(f"transport: {n / dt:.0f} rollouts/s, {mb / dt:.1f} MB/s "
              f"({hub.received_bytes / hub.received:.0f} B a message)")
    finally:
        link.close()


def test_the_rollout_and_weights_endpoints_listen_on_the_bind_address_alone() -> None:
    """Issue 21 item 4: nothing of the trainer's listens on every interface. A
    TCPStore made from an init_method would (`*:port`); ours is handed a socket bound to
    `rollout.bind`."""
    import os

    import psutil
    import torch.distributed as dist

    from workbench.recipes.rl.trainer import rendezvous

    hub = Hub(new_secret())
    port, store = rendezvous("127.0.0.1", 1, 30.0)
    try:
        ports = {hub.port: "hub", port: "rendezvous"}
        listening = {c.laddr.port: c.laddr.ip
                     for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port in ports}
        assert listening == dict.fromkeys(ports, "127.0.0.1"), listening
        assert isinstance(store, dist.TCPStore)
    finally:
        hub.close()
        del store

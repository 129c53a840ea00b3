"""TunnelService: owner and requester daemons through a real tunnel port, in one process.

The websocket link is replaced by a switch that does what the tracker does
with a tunnel-request (two invites from the real TunnelRelay), so these tests
cover the daemon's rules; the system tests cover the real link.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from flashback.daemon.keys import load_or_create
from flashback.daemon.peer_tls import PeerTLS
from flashback.daemon.reach import TrackerGate
from flashback.daemon.tunnel_ends import TunnelFailed
from flashback.daemon.tunnels import Send, TunnelService
from flashback.protocol.messages import (
    Candidate,
    Message,
    RouteReport,
    TunnelErrorMessage,
    TunnelInvite,
    TunnelRequest,
)
from flashback.protocol.peer_table import PeerTable
from flashback.protocol.tunnel import OpenTarget, Role
from flashback.tracker.tunnels import TunnelRelay, serve_tunnel_port


class GateOf:
    """A gate whose answer is *decide(presented fingerprint)*, for owner-side tests."""

    def __init__(self, decide: Callable[[str | None], str | None]) -> None:
        self._decide = decide

    def check(
        self, presented: str | None, *, invite_peer: str | None, invite_fingerprint: str | None
    ) -> str | None:
        return self._decide(presented)


class Switch:
    """Plays the tracker's websocket part for two daemons named alice (owner) and bob."""

    def __init__(self, relay: TunnelRelay, port: int, fingerprint: str) -> None:
        self.relay, self.port, self.fingerprint = relay, port, fingerprint
        self.services: dict[str, TunnelService] = {}
        self.declines: list[TunnelErrorMessage] = []
        self.up = True
        # each daemon's direct endpoint addresses, put in the other side's invite (§10.3)
        self.candidates: dict[str, tuple[Candidate, ...]] = {}
        self.reports: list[tuple[str, RouteReport]] = []

    def sender(self, me: str) -> Send:
        def send(message: Message) -> bool:
            if not self.up:
                return False
            if isinstance(message, TunnelRequest):
                session = self.relay.invite(
                    request_id=message.request_id, client_peer=me, server_peer=message.to
                )
                # the requester hears first, so an owner's decline must reach it at the port
                role: Role
                for role, peer, other in (("client", me, message.to), ("server", message.to, me)):
                    self.services[peer].on_message(
                        TunnelInvite(
                            request_id=message.request_id,
                            from_=other,
                            fingerprint=self.fingerprint,
                            role=role,
                            host="127.0.0.1",
                            port=self.port,
                            key=session.keys[role],
                            # one identity plays both daemons here
                            peer_fingerprint=self.fingerprint,
                            candidates=self.candidates.get(other, ()),
                        )
                    )
            elif isinstance(message, RouteReport):
                self.reports.append((me, message))
            elif isinstance(message, TunnelErrorMessage):
                # an owner's decline: the tracker ends the session and forwards it
                self.declines.append(message)
                assert message.to is not None
                self.relay.decline(
                    request_id=message.request_id, client_peer=message.to, server_peer=me
                )
                self.services[message.to].on_message(
                    TunnelErrorMessage(message.request_id, message.code, message.message, from_=me)
                )
            return True

        return send


class Upper:
    """alice's local peer server stand-in: answers one line upper-cased, then closes."""

    def __init__(self) -> None:
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            async with stream:
                data = b""
                while not data.endswith(b"\n") and (chunk := await stream.receive_some(1024)):
                    data += chunk
                await stream.send_all(data.upper())

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(handle, listeners)


Pair = tuple[Switch, list[tuple[str, dict[str, Any]]], dict[str, str]]


@pytest.fixture
async def pair(nursery: trio.Nursery, tmp_path: Path) -> Pair:
    relay = TunnelRelay(max_sessions=16)
    port = await nursery.start(serve_tunnel_port, relay, "127.0.0.1", 0)
    upper = Upper()
    await nursery.start(upper.run)
    tls = PeerTLS(load_or_create(tmp_path))
    switch = Switch(relay, port, tls.keys.fingerprint)
    events: list[tuple[str, dict[str, Any]]] = []
    pins: dict[str, str] = {}

    def check_pin(peer_id: str, fingerprint: str) -> None:
        if pins.setdefault(peer_id, fingerprint) != fingerprint:
            raise TunnelFailed("fingerprint_mismatch", f"{peer_id} changed its key")

    for name in ("alice", "bob"):
        service = TunnelService(
            send=switch.sender(name),
            emit=lambda event, **fields: events.append((event, fields)),
            owner_context=tls.server_context,
            requester_context=tls.client_context,
            gate=TrackerGate(PeerTable()),
            resolve_target=lambda t: upper.port if t.kind == "peer-server" else None,
            check_pin=check_pin,
        )
        switch.services[name] = service
        await nursery.start(service.run)
    return switch, events, pins


async def test_forward_carries_each_connection_on_its_own_tunnel(
    pair: Pair, nursery: trio.Nursery
) -> None:
    switch, events, pins = pair
    bob = switch.services["bob"]
    with trio.fail_after(15):
        port = await nursery.start(bob.forward, "alice", OpenTarget("peer-server"))
        for word in (b"first\n", b"second\n"):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(word)
            got = b""
            while chunk := await client.receive_some(100):
                got += chunk
            await client.aclose()
            assert got == word.upper()
        while sum(1 for e, f in events if e == "tunnel-closed" and f["peer_id"] == "alice") < 2:  # noqa: ASYNC110
            await trio.sleep(0.01)
    relay = {"route": "relay", "address": f"127.0.0.1:{switch.port}", "punched": False}
    opened = [f for e, f in events if e == "tunnel-opened"]
    # the owner emits it too (for the requester, bob)
    assert sorted(opened, key=lambda f: f["peer_id"]) == [
        {"peer_id": "alice", **relay},
        {"peer_id": "alice", **relay},
        {"peer_id": "bob", **relay},
        {"peer_id": "bob", **relay},
    ]
    closed = [f for e, f in events if e == "tunnel-closed" and f["peer_id"] == "alice"]
    assert all(f["bytes_in"] > 0 and f["bytes_out"] > 0 for f in closed)
    assert pins == {"alice": switch.fingerprint}  # pinned on first use


async def test_a_changed_owner_key_is_refused_by_the_pin(pair: Pair) -> None:
    switch, _events, pins = pair
    pins["alice"] = "sha256:" + "1" * 64  # what bob saw last time
    with trio.fail_after(10), pytest.raises(TunnelFailed) as info:
        await switch.services["bob"].open("alice", OpenTarget("peer-server"))
    assert info.value.code == "fingerprint_mismatch"


async def test_owner_declines_when_full(pair: Pair) -> None:
    switch, _events, _pins = pair
    alice = switch.services["alice"]
    alice._max_owner = 0
    with trio.fail_after(10), pytest.raises(TunnelFailed) as info:
        await switch.services["bob"].open("alice", OpenTarget("peer-server"))
    assert [d.code for d in switch.declines] == ["busy"]
    assert info.value.code == "refused"  # heard at the tunnel port, at once


async def test_no_link_is_a_clear_failure(pair: Pair) -> None:
    switch, _events, _pins = pair
    switch.up = False
    with pytest.raises(TunnelFailed) as info:
        await switch.services["bob"].open("alice", OpenTarget("peer-server"))
    assert info.value.code == "tracker_unreachable"


async def test_unasked_invites_are_ignored_and_silence_times_out(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    switch, _events, _pins = pair
    bob = switch.services["bob"]
    bob.on_message(TunnelErrorMessage("nobody-asked", "busy", ""))  # no crash, no effect
    switch.sender = None  # type: ignore[method-assign, assignment]  # deliberately unusable
    bob._send = lambda message: True  # the tracker swallows the request
    start = trio.current_time()
    with pytest.raises(TunnelFailed) as info:
        await bob.open("alice", OpenTarget("peer-server"))
    assert info.value.code == "timeout"
    assert trio.current_time() - start == pytest.approx(10.0)
    assert bob.status()["pending_requests"] == 0


async def test_forward_closes_when_idle(pair: Pair, autojump_clock: trio.testing.MockClock) -> None:
    switch, _events, _pins = pair
    bob = switch.services["bob"]
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: bob.forward(
                "alice", OpenTarget("peer-server"), idle_timeout_s=60.0, task_status=task_status
            )
        )
    assert trio.current_time() - start == pytest.approx(60.0)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_start_forward_reuses_and_a_hold_keeps_it_open(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    switch, _events, _pins = pair
    bob = switch.services["bob"]
    closed: list[tuple[str, OpenTarget]] = []
    was_closed = trio.Event()

    def on_closed(peer_id: str, target: OpenTarget) -> None:
        closed.append((peer_id, target))
        was_closed.set()

    bob._on_forward_closed = on_closed
    target = OpenTarget("peer-server")
    port = await bob.start_forward("alice", target)
    assert await bob.start_forward("alice", target) == port
    with bob.hold("alice", target):
        await trio.sleep(3600)  # far past the idle timeout: held, so still open
        assert bob.status()["forwards"] == 1 and closed == []
    start = trio.current_time()
    await was_closed.wait()  # the forward's own task closes it
    assert trio.current_time() - start == pytest.approx(300.0)
    assert closed == [("alice", target)] and bob.status()["forwards"] == 0
    with pytest.raises(TunnelFailed), bob.hold("alice", target):
        pass


async def test_a_refusing_owner_fails_start_forward_in_words(pair: Pair) -> None:
    """§11: a refused requester learns it before any port is handed out."""
    switch, _events, _pins = pair
    switch.services["alice"].gate = GateOf(lambda fingerprint: "forbidden")
    with trio.fail_after(10), pytest.raises(TunnelFailed) as info:
        await switch.services["bob"].start_forward("alice", OpenTarget("peer-server"))
    assert info.value.code == "forbidden"
    assert "does not share with this peer" in str(info.value)
    assert switch.services["bob"].status()["forwards"] == 0


async def test_the_first_connection_uses_the_tunnel_start_forward_opened(pair: Pair) -> None:
    switch, _events, _pins = pair
    bob = switch.services["bob"]
    asked: list[str | None] = []
    switch.services["alice"].gate = GateOf(asked.append)
    with trio.fail_after(10):
        port = await bob.start_forward("alice", OpenTarget("peer-server"))
        assert len(asked) == 1  # the owner was asked once, before the port was known
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"one\n")
        got = b""
        while chunk := await client.receive_some(100):
            got += chunk
        await client.aclose()
    assert got == b"ONE\n" and len(asked) == 1  # carried on that same tunnel


async def test_a_forward_refused_later_answers_403_and_closes(pair: Pair) -> None:
    """Denied while a forward lives: its next connection reads why, and the forward
    closes so that the next command asks again (and fails in words)."""
    switch, _events, _pins = pair
    bob = switch.services["bob"]
    closed: list[tuple[str, OpenTarget]] = []
    bob._on_forward_closed = lambda peer_id, target: closed.append((peer_id, target))
    with trio.fail_after(10):
        port = await bob.start_forward("alice", OpenTarget("peer-server"))
        spare = bob._forwards[("alice", OpenTarget("peer-server"))].take_spare()
        assert spare is not None
        await trio.aclose_forcefully(spare.stream)
        switch.services["alice"].gate = GateOf(lambda fingerprint: "forbidden")
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while chunk := await client.receive_some(1000):
            got += chunk
        await client.aclose()
        while not closed:  # noqa: ASYNC110 - the forward's own task closes it
            await trio.sleep(0.01)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    assert json.loads(body)["error"]["code"] == "forbidden" and b"does not share" in body
    assert bob.status()["forwards"] == 0


async def test_start_forward_asks_the_owner_again_for_a_live_forward(pair: Pair) -> None:
    """A forward opened while allowed does not hide a deny from the next command."""
    switch, _events, _pins = pair
    bob = switch.services["bob"]
    target = OpenTarget("peer-server")
    with trio.fail_after(10):
        port = await bob.start_forward("alice", target)
        assert await bob.start_forward("alice", target) == port  # a spare still waits
        spare = bob._forwards[("alice", target)].take_spare()
        assert spare is not None
        await trio.aclose_forcefully(spare.stream)
        switch.services["alice"].gate = GateOf(lambda fingerprint: "forbidden")
        with pytest.raises(TunnelFailed) as info:
            await bob.start_forward("alice", target)
    assert info.value.code == "forbidden"


async def test_a_stranger_cannot_hold_every_owner_tunnel(pair: Pair) -> None:
    """64 invites from mallory (who never joins) leave room for bob (fair share per peer)."""
    switch, _events, _pins = pair
    alice = switch.services["alice"]
    switch.relay.table.max_sessions = 128
    for n in range(64):
        session = switch.relay.invite(
            request_id=f"m{n}", client_peer="mallory", server_peer="alice"
        )
        alice.on_message(
            TunnelInvite(
                request_id=f"m{n}",
                from_="mallory",
                fingerprint=switch.fingerprint,
                role="server",
                host="127.0.0.1",
                port=switch.port,
                key=session.keys["server"],
                peer_fingerprint=switch.fingerprint,
            )
        )
    await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(10):
        tunnel, _leftover = await switch.services["bob"].open("alice", OpenTarget("peer-server"))
    await tunnel.aclose()
    assert switch.declines == []
    assert alice.status()["owner_tunnels"] <= 8 + 1

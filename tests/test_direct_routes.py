"""Direct routes in one process: two daemons' endpoints on 127.0.0.1 and a real tunnel port.

The switch plays the tracker's websocket part (invites with each other's
endpoint as a candidate); what runs over the wire is real: INTRO lines, TLS
with client certificates, OPEN, the race against the relay join.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from flashback.daemon.direct import DirectEndpoint
from flashback.daemon.keys import load_or_create
from flashback.daemon.peer_tls import PeerTLS
from flashback.daemon.race import RouteRacer
from flashback.daemon.reach import TrackerGate
from flashback.daemon.tunnel_ends import Opened, TunnelFailed
from flashback.daemon.tunnels import TunnelService
from flashback.protocol.messages import Candidate
from flashback.protocol.peer_table import PeerTable
from flashback.protocol.tunnel import OpenTarget
from flashback.tracker.tunnels import TunnelRelay, serve_tunnel_port
from tests.test_daemon_tunnels import Switch, Upper

PEER = OpenTarget("peer-server")


class Daemon:
    def __init__(self, service: TunnelService, endpoint: DirectEndpoint, racer: RouteRacer) -> None:
        self.service, self.endpoint, self.racer = service, endpoint, racer


Duo = tuple[Switch, dict[str, Daemon], list[tuple[str, str, dict[str, Any]]], TunnelRelay]


@pytest.fixture
async def duo(nursery: trio.Nursery, tmp_path: Path) -> Duo:
    relay = TunnelRelay(max_sessions=16)
    port = await nursery.start(serve_tunnel_port, relay, "127.0.0.1", 0)
    upper = Upper()
    await nursery.start(upper.run)
    tls = PeerTLS(load_or_create(tmp_path))
    switch = Switch(relay, port, tls.keys.fingerprint)
    events: list[tuple[str, str, dict[str, Any]]] = []
    daemons: dict[str, Daemon] = {}
    for name in ("alice", "bob"):
        gate = TrackerGate(PeerTable())
        resolve = lambda t: upper.port if t.kind == "peer-server" else None  # noqa: E731
        emit = lambda event, _n=name, **fields: events.append((_n, event, fields))  # noqa: E731
        endpoint = DirectEndpoint(
            server_context=tls.server_context, gate=gate, resolve_target=resolve, emit=emit
        )
        data = tmp_path / name
        data.mkdir()
        endpoint_port = await nursery.start(endpoint.run, "127.0.0.1", 0, data)
        service = TunnelService(
            send=switch.sender(name),
            emit=emit,
            owner_context=tls.server_context,
            requester_context=tls.client_context,
            gate=gate,
            resolve_target=resolve,
            check_pin=lambda peer_id, fingerprint: None,
        )
        racer = RouteRacer(
            service,
            endpoint,
            client_context=tls.client_context,
            check_pin=lambda p, f: None,
            linked=lambda: switch.up,
        )
        service.opener = racer.open
        service.on_owner_invite = endpoint.owner_invite
        endpoint.on_direct_authenticated = service.cancel_relay_join
        endpoint.on_route = service.report_route
        switch.services[name] = service
        switch.candidates[name] = (Candidate("127.0.0.1", endpoint_port),)
        daemons[name] = Daemon(service, endpoint, racer)
        await nursery.start(service.run)
    return switch, daemons, events, relay


async def _ask(opened: Opened, word: bytes) -> bytes:
    async with opened.stream:
        await opened.stream.send_all(word)
        got = opened.leftover
        while not got.endswith(b"\n"):
            got += await opened.stream.receive_some(100)
    opened.release()
    return got


async def test_the_introduction_wins_direct_and_the_relay_copies_nothing(duo: Duo) -> None:
    switch, daemons, events, relay = duo
    with trio.fail_after(10):
        opened = await daemons["bob"].racer.open("alice", PEER)
        assert (opened.route, opened.punched) == ("direct", True)
        assert await _ask(opened, b"hello direct\n") == b"HELLO DIRECT\n"
    assert relay.counters.bytes_copied == 0
    # each side reports the introduction's route once
    assert sorted((who, r.route) for who, r in switch.reports) == [
        ("alice", "direct"),
        ("bob", "direct"),
    ]
    owner_opened = [f for who, e, f in events if who == "alice" and e == "tunnel-opened"]
    assert owner_opened and owner_opened[0]["route"] == "direct"
    assert owner_opened[0]["punched"] is True


async def test_every_forwarded_connection_races(duo: Duo, nursery: trio.Nursery) -> None:
    _switch, daemons, events, relay = duo
    with trio.fail_after(10):
        port = await nursery.start(daemons["bob"].service.forward, "alice", PEER)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"through the forward\n")
        got = b""
        while chunk := await client.receive_some(100):
            got += chunk
        await client.aclose()
    assert got == b"THROUGH THE FORWARD\n"
    mine = [f for who, e, f in events if who == "bob" and e == "tunnel-opened"]
    assert mine == [
        {"peer_id": "alice", "route": "direct", "address": mine[0]["address"], "punched": True}
    ]
    assert relay.counters.bytes_copied == 0


async def test_remembered_direct_works_with_the_tracker_down(duo: Duo) -> None:
    switch, daemons, _events, relay = duo
    bob = daemons["bob"].racer
    with trio.fail_after(10):
        await _ask(await bob.open("alice", PEER), b"one\n")
        switch.up = False  # no tracker from now on
        again = await bob.open("alice", PEER)
        assert (again.route, again.punched) == ("direct", False)
        assert await _ask(again, b"two\n") == b"TWO\n"
    assert relay.counters.bytes_copied == 0


async def test_no_direct_path_falls_back_to_the_relay(duo: Duo) -> None:
    switch, daemons, _events, relay = duo
    # candidates that lead nowhere: a closed port on loopback
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    closed_port = dead.getsockname()[1]
    dead.close()
    switch.candidates = {
        "alice": (Candidate("127.0.0.1", closed_port),),
        "bob": (Candidate("127.0.0.1", closed_port),),
    }
    bob = daemons["bob"].racer
    with trio.fail_after(15):
        opened = await bob.open("alice", PEER)
        assert opened.route == "relay"
        assert await _ask(opened, b"via relay\n") == b"VIA RELAY\n"
    assert relay.counters.bytes_copied > 0
    last = bob.book.last("alice")
    assert last is not None and last.route == "relay"
    # within 60 s the next connection does not punch: straight to the relay
    assert not bob.book.may_punch("alice", trio.current_time())


async def test_a_refused_requester_hears_forbidden(duo: Duo) -> None:
    _switch, daemons, _events, _relay = duo

    class Deny:
        def check(
            self, presented: str | None, *, invite_peer: str | None, invite_fingerprint: str | None
        ) -> str | None:
            return "forbidden"

    daemons["alice"].endpoint.gate = Deny()
    daemons["alice"].service.gate = Deny()
    with trio.fail_after(15), pytest.raises(TunnelFailed) as info:
        await daemons["bob"].racer.open("alice", PEER)
    assert info.value.code == "forbidden"


async def test_a_forged_candidate_is_dialled_a_bounded_number_of_times(
    duo: Duo, nursery: trio.Nursery
) -> None:
    """A candidate pointing at a third party's service: it hears at most 10 dials."""
    _switch, daemons, _events, _relay = duo
    accepted = 0

    async def third_party(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await stream.aclose()  # it speaks no INTRO: every dial fails at once

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    victim = Candidate("127.0.0.1", listeners[0].socket.getsockname()[1])
    await nursery.start(trio.serve_listeners, third_party, listeners)

    async def use(stream: trio.SocketStream, address: str) -> bool:
        # never reached: no INTRO comes back
        raise AssertionError("a third party answered an introduction")

    with trio.fail_after(10):
        await daemons["bob"].endpoint.punch("t1-forged", (victim,), use)
    assert 2 <= accepted <= 10


async def test_a_candidate_learnt_during_the_window_is_dialled(duo: Duo) -> None:
    """The invite lists nothing to dial (no reflexive address yet) and the relay is
    down; the owner's address arrives in the peer table meanwhile and wins."""
    switch, daemons, _events, _relay = duo
    alice_endpoint = switch.candidates["alice"]
    switch.candidates = {}
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    switch.port = dead.getsockname()[1]  # the invites name a tunnel port nobody serves
    dead.close()
    learnt: list[str] = []

    def table(peer_id: str) -> tuple[Candidate, ...]:
        learnt.append(peer_id)
        return alice_endpoint if len(learnt) > 2 else ()  # not at first: a bit later

    daemons["bob"].racer._candidates_of = table
    with trio.fail_after(10):
        opened = await daemons["bob"].racer.open("alice", PEER)
        assert (opened.route, opened.punched) == ("direct", True)
        assert await _ask(opened, b"late\n") == b"LATE\n"


async def test_connect_holds_a_forward_whose_connections_went_direct(duo: Duo) -> None:
    from types import SimpleNamespace

    from flashback.daemon.connect import ConnectRequest, held

    _switch, daemons, _events, _relay = duo
    bob = daemons["bob"].service
    await bob.start_forward("alice", PEER)
    ctx = SimpleNamespace(tunnels=bob)
    with held(ctx, {"peer_id": "alice", "route": "direct"}, ConnectRequest("alice")):  # type: ignore[arg-type]  # a stand-in context: only `tunnels` is read
        assert bob._forwards[("alice", PEER)].holds == 1
    assert bob._forwards[("alice", PEER)].holds == 0


async def test_a_direct_bridge_ends_soon_after_its_client_is_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The owner keeps its side open (keep-alive): the bridge ends 1 s after the
    client's EOF and the last byte down, instead of holding the port pair."""
    from trio.testing import memory_stream_pair

    from flashback.daemon.tunnel_ends import bridge

    a, b = trio.socket.socketpair()
    client, local = trio.SocketStream(a), trio.SocketStream(b)
    tunnel, owner = memory_stream_pair()
    async with client, local, trio.open_nursery() as nursery:

        async def owner_side() -> None:
            assert await owner.receive_some(100) == b"GET\n"
            await trio.sleep(0.5)
            await owner.send_all(b"answer\n")  # and then nothing, never EOF
            await trio.sleep_forever()

        nursery.start_soon(owner_side)
        await client.send_all(b"GET\n")
        await client.send_eof()
        start = trio.current_time()
        with trio.fail_after(60):
            counts = await bridge(tunnel, local, idle_after_eof_s=1.0)
        assert counts == (7, 4)
        assert trio.current_time() - start == pytest.approx(1.5)
        assert await client.receive_some(100) == b"answer\n"
        nursery.cancel_scope.cancel()


async def test_a_stranger_answering_an_intro_does_not_decide_the_error(
    duo: Duo, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A forged candidate leads to a host that speaks INTRO and TLS with its own key:
    refused by fingerprint, and the error the user sees is the relay's, not
    ``fingerprint_mismatch`` (which would tell them the owner's key changed)."""
    from flashback.daemon.keys import load_or_create
    from flashback.daemon.peer_tls import PeerTLS
    from flashback.daemon.tunnel_ends import read_plain_line

    switch, daemons, _events, _relay = duo
    (tmp_path / "stranger").mkdir()
    stranger = PeerTLS(load_or_create(tmp_path / "stranger"))

    async def impostor(stream: trio.SocketStream) -> None:
        line = await read_plain_line(stream, 128)
        await stream.send_all(line + b"\n")
        tls = trio.SSLStream(stream, stranger.server_context(), server_side=True)
        try:
            await tls.do_handshake()
            await tls.receive_some(100)
        except (trio.BrokenResourceError, OSError):
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, impostor, listeners)
    switch.candidates = {"alice": (Candidate("127.0.0.1", listeners[0].socket.getsockname()[1]),)}
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    switch.port = dead.getsockname()[1]  # and the relay is down
    dead.close()
    with trio.fail_after(15), pytest.raises(TunnelFailed) as info:
        await daemons["bob"].racer.open("alice", PEER)
    assert info.value.code != "fingerprint_mismatch"

"""The direct endpoint from outside: bad input of every kind, and it still serves.

A real endpoint on 127.0.0.1 in front of a stand-in peer server; the
strangers are raw sockets and TLS clients with and without certificates.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from flashback.daemon.direct import DirectEndpoint
from flashback.daemon.keys import load_or_create
from flashback.daemon.peer_tls import PeerTLS, owner_fingerprint, plain_client_context
from flashback.daemon.reach import TrackerGate
from flashback.protocol.direct import intro_line
from flashback.protocol.messages import Candidate, PeerInfo, TunnelInvite
from flashback.protocol.peer_table import PeerTable
from tests.test_daemon_tunnels import Upper


def identity(path: Path) -> PeerTLS:
    path.mkdir(exist_ok=True)
    return PeerTLS(load_or_create(path))


Endpoint = tuple[DirectEndpoint, int, PeerTLS, PeerTLS, list[tuple[str, dict[str, Any]]], Path]


@pytest.fixture
async def endpoint(nursery: trio.Nursery, tmp_path: Path) -> Endpoint:
    upper = Upper()
    await nursery.start(upper.run)
    owner = identity(tmp_path / "owner")
    table = PeerTable()
    events: list[tuple[str, dict[str, Any]]] = []
    gate = TrackerGate(table)
    direct = DirectEndpoint(
        server_context=owner.server_context,
        gate=gate,
        resolve_target=lambda t: upper.port if t.kind == "peer-server" else None,
        emit=lambda event, **fields: events.append((event, fields)),
        peer_of=gate.peer_of,
    )
    (tmp_path / "data").mkdir()
    port = await nursery.start(direct.run, "127.0.0.1", 0, tmp_path / "data")
    friend = identity(tmp_path / "friend")
    table.peers["friend"] = PeerInfo(
        "friend", "friend", "127.0.0.1", 1, fingerprint=friend.keys.fingerprint
    )
    return direct, port, owner, friend, events, tmp_path


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    got = b""
    try:
        while chunk := await stream.receive_some(4096):
            got += chunk
    except (trio.BrokenResourceError, ssl.SSLError, OSError):
        pass
    return got


async def _tls(port: int, context: ssl.SSLContext, send: bytes) -> tuple[str, bytes]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=None)
    await stream.do_handshake()
    fingerprint = owner_fingerprint(stream.getpeercert(binary_form=True))
    await stream.send_all(send)
    got = await _read_all(stream)
    await trio.aclose_forcefully(stream)
    return fingerprint, got


async def _served(port: int, friend: PeerTLS) -> bytes:
    return (await _tls(port, friend.client_context(), b"OPEN peer-server\nping\n"))[1]


async def test_a_listed_peer_is_served_by_a_plain_dial(endpoint: Endpoint) -> None:
    _direct, port, owner, friend, events, _ = endpoint
    with trio.fail_after(10):
        fingerprint, got = await _tls(port, friend.client_context(), b"OPEN peer-server\nping\n")
    assert fingerprint == owner.keys.fingerprint
    assert got == b"OK\nPING\n"
    opened = [f for e, f in events if e == "tunnel-opened"]
    assert opened[0]["peer_id"] == "friend" and opened[0]["route"] == "direct"
    assert opened[0]["punched"] is False


async def test_garbage_is_closed_and_never_reaches_the_peer_server(endpoint: Endpoint) -> None:
    _direct, port, _owner, friend, _events, _ = endpoint
    with trio.fail_after(10):
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 100, b"FLASHBACK-NOPE\n"):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            await tcp.send_all(junk)
            assert await _read_all(tcp) == b""
            await tcp.aclose()
        assert await _served(port, friend) == b"OK\nPING\n"


async def test_no_certificate_and_an_unknown_certificate_are_forbidden(endpoint: Endpoint) -> None:
    _direct, port, _owner, friend, events, tmp_path = endpoint
    stranger = identity(tmp_path / "stranger")
    with trio.fail_after(10):
        assert (await _tls(port, plain_client_context(), b"OPEN peer-server\n"))[1] == (
            b"ERR forbidden\n"
        )
        assert (await _tls(port, stranger.client_context(), b"OPEN peer-server\n"))[1] == (
            b"ERR forbidden\n"
        )
        assert await _served(port, friend) == b"OK\nPING\n"
    assert [f["peer_id"] for e, f in events if e == "tunnel-opened"] == ["friend"]


async def test_an_intro_for_no_pending_introduction_is_closed_at_once(endpoint: Endpoint) -> None:
    _direct, port, _owner, friend, _events, _ = endpoint
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", port) as tcp:
            await tcp.send_all(intro_line("t9-nobody"))
            assert await _read_all(tcp) == b""
        assert await _served(port, friend) == b"OK\nPING\n"


async def test_a_pending_introduction_answers_intro_and_checks_the_invite(
    endpoint: Endpoint,
) -> None:
    direct, port, _owner, friend, _events, tmp_path = endpoint
    stranger = identity(tmp_path / "stranger")
    invite = TunnelInvite(
        request_id="t1-abc",
        from_="friend",
        fingerprint="sha256:" + "0" * 64,
        role="server",
        host="127.0.0.1",
        port=1,
        key="k",
        peer_fingerprint=friend.keys.fingerprint,
    )
    direct.owner_invite(invite)
    with trio.fail_after(10):
        for who, expect in ((stranger, b"ERR forbidden\n"), (friend, b"OK\nPING\n")):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            await tcp.send_all(intro_line("t1-abc"))
            line = b""
            while not line.endswith(b"\n"):
                line += await tcp.receive_some(1)
            assert line == intro_line("t1-abc")  # the endpoint answers with the same line
            stream = trio.SSLStream(tcp, who.client_context(), server_hostname=None)
            await stream.send_all(b"OPEN peer-server\nping\n")
            assert await _read_all(stream) == expect
            await trio.aclose_forcefully(stream)


async def test_silence_and_a_slow_handshake_are_closed_within_5_s(
    endpoint: Endpoint, autojump_clock: trio.testing.MockClock
) -> None:
    _direct, port, _owner, _friend, _events, _ = endpoint
    for first in (b"", b"\x16\x03\x01"):  # nothing at all; a ClientHello that never ends
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(first)
        start = trio.current_time()
        assert await _read_all(tcp) == b""
        assert trio.current_time() - start <= 5.0 + 0.01
        await tcp.aclose()


async def test_many_half_open_connections_do_not_lock_out_a_peer(endpoint: Endpoint) -> None:
    _direct, port, _owner, friend, _events, _ = endpoint
    silent: list[trio.SocketStream] = []
    with trio.fail_after(20):
        for _ in range(1000):  # far more than the connection cap, all silent
            silent.append(await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2"))
        assert await _served(port, friend) == b"OK\nPING\n"
    for tcp in silent:
        await tcp.aclose()


async def test_candidate_only_on_the_bound_family(endpoint: Endpoint) -> None:
    direct, *_ = endpoint
    assert direct.can_dial("127.0.0.1") and not direct.can_dial("::1")
    assert Candidate("127.0.0.1", 1).host == "127.0.0.1"


async def test_a_second_endpoint_never_shares_the_port(endpoint: Endpoint, tmp_path: Path) -> None:
    _direct, port, *_ = endpoint
    from flashback.daemon.endpoint_bind import bind_endpoint

    with pytest.raises(OSError) as info:
        await bind_endpoint("127.0.0.1", port, tmp_path)
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_reflection_leaves_from_the_endpoint_port(
    endpoint: Endpoint, nursery: trio.Nursery
) -> None:
    """The tunnel port sees the endpoint's own port as the source (SO_REUSEPORT)."""
    from types import SimpleNamespace

    from flashback.daemon.identity import Identity
    from flashback.daemon.reflect import Reflector

    direct, port, *_ = endpoint
    seen: list[tuple[bytes, int]] = []

    async def tunnel_port(stream: trio.SocketStream) -> None:
        line = b""
        while not line.endswith(b"\n"):
            line += await stream.receive_some(1)
        source = stream.socket.getpeername()[1]
        seen.append((line, source))
        await stream.send_all(b"ADDR 127.0.0.1 %d\n" % source)
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, tunnel_port, listeners)
    ctx = SimpleNamespace(identity=Identity("p1", "tok-1"), tracker_connected=True, reflexive=None)
    reflector = Reflector(ctx, direct)  # type: ignore[arg-type]  # a stand-in context with the fields Reflector reads
    reflector.tunnel = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    answers: list[Candidate | None] = []

    async def reflect() -> None:
        answers.append(await reflector.reflect_once())

    with trio.fail_after(10):
        async with trio.open_nursery() as both:  # an invite's and the timer's at once
            both.start_soon(reflect)
            both.start_soon(reflect)
    assert seen == [(b"FLASHBACK-REFLECT 1 tok-1\n", port)] * 2
    assert answers == [Candidate("127.0.0.1", port)] * 2
    assert ctx.reflexive == Candidate("127.0.0.1", port)


async def test_the_endpoint_reflects_at_start_from_the_registration_answer(
    endpoint: Endpoint, nursery: trio.Nursery
) -> None:
    """§10.2: at start, not only after a first invite. The registration answer named
    the tunnel port; the link is not up yet; no invite came: the reflection goes out
    from the endpoint's own port all the same, and its address is kept."""
    from types import SimpleNamespace

    from flashback.daemon.identity import Identity
    from flashback.daemon.reflect import Reflector

    direct, port, *_ = endpoint
    seen: list[tuple[bytes, int]] = []
    reflected = trio.Event()

    async def tunnel_port(stream: trio.SocketStream) -> None:
        line = b""
        while not line.endswith(b"\n"):
            line += await stream.receive_some(1)
        source = stream.socket.getpeername()[1]
        seen.append((line, source))
        await stream.send_all(b"ADDR 198.51.100.4 %d\n" % source)
        await stream.aclose()
        reflected.set()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, tunnel_port, listeners)
    ctx = SimpleNamespace(
        identity=Identity("p1", "tok-1"),
        tracker_connected=False,
        reflexive=None,
        tracker_tunnel=("127.0.0.1", listeners[0].socket.getsockname()[1]),
    )
    reflector = Reflector(ctx, direct)  # type: ignore[arg-type]
    nursery.start_soon(reflector.run)
    with trio.fail_after(10):
        await reflected.wait()
        await trio.testing.wait_all_tasks_blocked()  # the reflector read the ADDR line
    assert seen == [(b"FLASHBACK-REFLECT 1 tok-1\n", port)]
    assert ctx.reflexive == Candidate("198.51.100.4", port)


def test_the_tunnel_port_of_the_registration_answer_is_on_the_tracker_urls_host() -> None:
    from flashback.daemon.session import _tracker_tunnel

    assert _tracker_tunnel("http://203.0.113.1:8080", 9000) == ("203.0.113.1", 9000)
    assert _tracker_tunnel("http://[2001:db8::1]:8080/", 9000) == ("2001:db8::1", 9000)
    assert _tracker_tunnel("http://tracker.example", None) is None  # not told: wait for an invite
    assert _tracker_tunnel(None, 9000) is None


async def test_registration_sends_the_direct_candidates() -> None:
    import json

    import httpx

    from flashback.daemon.tracker_api import HTTPTrackerAPI

    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        answer = {"peer_id": "p1", "token": "t", "heartbeat_interval": 10, "ttl": 30}
        return httpx.Response(201, json=answer)

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="http://tracker"
    ) as http:
        api = HTTPTrackerAPI(http)
        await api.register("me", "127.0.0.1", 1, identity=None, direct=[Candidate("192.0.2.2", 7)])
        await api.register("me", "127.0.0.1", 1, identity=None)
    assert bodies[0]["direct"] == [{"host": "192.0.2.2", "port": 7}]
    assert "direct" not in bodies[1]


async def test_the_registration_answer_may_name_the_tunnel_port() -> None:
    import httpx

    from flashback.daemon.tracker_api import HTTPTrackerAPI

    answers = iter([9000, None, "9000", 0, True])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = {"peer_id": "p1", "token": "t", "heartbeat_interval": 10, "ttl": 30}
        port = next(answers)
        if port is not None:
            answer["tunnel_port"] = port
        return httpx.Response(201, json=answer)

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="http://tracker"
    ) as http:
        api = HTTPTrackerAPI(http)
        told = [
            (await api.register("me", "127.0.0.1", 1, identity=None)).tunnel_port for _ in range(5)
        ]
    assert told == [9000, None, None, None, None]  # an older tracker, or nonsense: not told


async def test_one_requester_cannot_make_the_owner_dial_for_all_its_introductions(
    endpoint: Endpoint,
) -> None:
    direct, *_ = endpoint

    def invite(request_id: str, requester: str) -> TunnelInvite:
        return TunnelInvite(
            request_id=request_id,
            from_=requester,
            fingerprint="sha256:" + "0" * 64,
            role="server",
            host="127.0.0.1",
            port=1,
            key="k",
            candidates=(Candidate("127.0.0.1", 9),),  # a third party's port, say
        )

    for n in range(10):
        direct.owner_invite(invite(f"m{n}", "mallory"))
    direct.owner_invite(invite("b1", "bob"))
    held = dict(direct._dialling.holders())
    assert held == {"mallory": 4, "bob": 1}
    assert not direct._halts["b1"].is_set()
    assert all(f"m{n}" not in direct._halts for n in range(6))  # halted, oldest first


async def test_a_client_hello_without_alpn_is_closed_unserved(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    _direct, port, _owner, friend, events, _ = endpoint
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    path = friend.keys.path.with_name("client-auth.pem")
    friend.client_context()  # writes the client-auth certificate
    context.load_cert_chain(path, path)  # a listed certificate, but no ALPN offered
    with trio.fail_after(10):
        assert (await _tls(port, context, b"OPEN peer-server\nping\n"))[1] == b""
        assert await _served(port, friend) == b"OK\nPING\n"
    assert len([f for e, f in events if e == "tunnel-opened"]) == 1


async def test_a_flood_of_introductions_keeps_another_requesters_pending_one(
    endpoint: Endpoint,
) -> None:
    """The owner's pending introductions are a fair share by requester: a flood
    of invites (each a tunnel request through the tracker) pushes out its own
    oldest, never bob's. On the code before, the table's oldest of all went."""
    from flashback.daemon.direct import MAX_PENDING_INTROS

    direct, port, *_ = endpoint

    def invite(request_id: str, requester: str) -> TunnelInvite:
        return TunnelInvite(
            request_id=request_id,
            from_=requester,
            fingerprint="sha256:" + "0" * 64,
            role="server",
            host="127.0.0.1",
            port=1,
            key="k",
        )

    direct.owner_invite(invite("b1", "bob"))
    for n in range(2 * MAX_PENDING_INTROS):
        direct.owner_invite(invite(f"m{n}", "mallory"))
    with trio.fail_after(10):
        for request_id, welcome in (("b1", True), ("m0", False)):
            async with await trio.open_tcp_stream("127.0.0.1", port) as tcp:
                await tcp.send_all(intro_line(request_id))
                first = await tcp.receive_some(len(intro_line(request_id)))
                # a pending one is answered with its INTRO line; a forgotten one closed
                assert (first == intro_line(request_id)) is welcome, (request_id, first)

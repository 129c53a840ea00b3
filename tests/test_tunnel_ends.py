"""Both daemon ends of a tunnel, TLS 1.3 inside, through a real tracker tunnel port."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from flashback.daemon.bulk_tls import BulkTLSStream
from flashback.daemon.keys import load_or_create
from flashback.daemon.peer_tls import PeerTLS, plain_client_context
from flashback.daemon.tunnel_ends import (
    Authorize,
    TunnelFailed,
    bridge,
    open_requester_end,
    serve_owner_end,
)
from flashback.protocol.tunnel import OpenTarget, Session
from flashback.tracker.tunnels import TunnelRelay, serve_tunnel_port


class LocalServer:
    """The owner's 127.0.0.1 listener: answers one line upper-cased, then closes
    (like an HTTP/1.0 server); records connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            data = b""
            while not data.endswith(b"\n") and (chunk := await stream.receive_some(65536)):
                data += chunk
            await stream.send_all(data.upper())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)


World = tuple[TunnelRelay, int, LocalServer, ssl.SSLContext, str]


@pytest.fixture
async def world(nursery: trio.Nursery, tmp_path: Path) -> World:
    relay = TunnelRelay(max_sessions=8)
    tunnel_port = await nursery.start(serve_tunnel_port, relay, "127.0.0.1", 0)
    local = LocalServer()
    await nursery.start(local.run)
    (tmp_path / "owner").mkdir()
    owner = load_or_create(tmp_path / "owner")
    return relay, tunnel_port, local, PeerTLS(owner).server_context(), owner.fingerprint


@pytest.fixture(scope="module")
def requester(tmp_path_factory: pytest.TempPathFactory) -> PeerTLS:
    """The requester's identity; its client certificate is what owners see (§10.1)."""
    keys = load_or_create(tmp_path_factory.mktemp("requester"))
    return PeerTLS(keys)


def accept_anyone(_fingerprint: str | None) -> str | None:
    return None


def no_pin_check(_fingerprint: str) -> None:
    return None


async def start_owner(
    nursery: trio.Nursery,
    relay: TunnelRelay,
    port: int,
    context: ssl.SSLContext,
    resolve: Callable[[OpenTarget], int | None],
    authorize: Authorize = accept_anyone,
    ended: trio.Event | None = None,
) -> Session:
    """The owner's end on the test relay; *ended* is set once that end is over."""
    session = relay.invite(request_id="r", client_peer="bob", server_peer="alice")

    async def owner() -> None:
        try:
            await serve_owner_end(
                host="127.0.0.1",
                port=port,
                key=session.keys["server"],
                context=context,
                authorize=authorize,
                resolve_target=resolve,
            )
        finally:
            if ended is not None:
                ended.set()

    nursery.start_soon(owner)
    return session


PEER_SERVER = OpenTarget("peer-server")


_REQUESTERS: dict[str, PeerTLS] = {}


@pytest.fixture(autouse=True)
def _requester_identity(requester: PeerTLS) -> None:
    _REQUESTERS["default"] = requester


async def join_as_requester(
    port: int,
    *,
    key: str,
    fingerprint: str,
    check_pin: Callable[[str], None] = no_pin_check,
    target: OpenTarget = PEER_SERVER,
    context: ssl.SSLContext | None = None,
) -> tuple[BulkTLSStream, bytes]:
    """The requester's end on the test relay, with the defaults most tests want."""
    return await open_requester_end(
        host="127.0.0.1",
        port=port,
        key=key,
        context=context or _REQUESTERS["default"].client_context(),
        expected_fingerprint=fingerprint,
        check_pin=check_pin,
        target=target,
    )


async def test_requester_reaches_the_owners_local_listener(
    world: World, nursery: trio.Nursery
) -> None:
    relay, port, local, context, fingerprint = world
    session = await start_owner(nursery, relay, port, context, lambda t: local.port)
    with trio.fail_after(10):
        stream, leftover = await join_as_requester(
            port, key=session.keys["client"], fingerprint=fingerprint
        )
        assert leftover == b""
        await stream.send_all(b"secret marker\n")
        got = b""
        while len(got) < len(b"SECRET MARKER\n"):
            got += await stream.receive_some(100)
        await stream.aclose()
    assert got == b"SECRET MARKER\n"
    assert local.connections == 1
    assert relay.counters.bytes_copied > len(got)  # TLS records, not the plain bytes


async def test_a_wrong_fingerprint_is_refused_before_anything_is_sent(
    world: World, nursery: trio.Nursery
) -> None:
    relay, port, local, context, _fingerprint = world
    ended = trio.Event()
    session = await start_owner(nursery, relay, port, context, lambda t: local.port, ended=ended)
    with trio.fail_after(10), pytest.raises(TunnelFailed) as info:
        await join_as_requester(port, key=session.keys["client"], fingerprint="sha256:" + "0" * 64)
    assert info.value.code == "fingerprint_mismatch"
    with trio.fail_after(10):
        await ended.wait()  # the owner's end is over: an OPEN would have come by now
    assert local.connections == 0  # no OPEN ever reached the owner


async def test_a_pin_that_refuses_stops_the_tunnel(world: World, nursery: trio.Nursery) -> None:
    relay, port, local, context, fingerprint = world
    ended = trio.Event()
    session = await start_owner(nursery, relay, port, context, lambda t: local.port, ended=ended)

    def refuse(actual: str) -> None:
        raise TunnelFailed("fingerprint_mismatch", f"pinned something else, got {actual}")

    with trio.fail_after(10), pytest.raises(TunnelFailed, match="pinned"):
        await join_as_requester(
            port, key=session.keys["client"], fingerprint=fingerprint, check_pin=refuse
        )
    with trio.fail_after(10):
        await ended.wait()  # the owner's end is over: an OPEN would have come by now
    assert local.connections == 0


async def test_owner_refuses_ports_it_did_not_open(world: World, nursery: trio.Nursery) -> None:
    relay, port, local, context, fingerprint = world
    allowed: dict[tuple[str, int | None], int] = {("peer-server", None): local.port}
    session = await start_owner(
        nursery, relay, port, context, lambda t: allowed.get((t.kind, t.port))
    )
    with trio.fail_after(10), pytest.raises(TunnelFailed) as info:
        await join_as_requester(
            port,
            key=session.keys["client"],
            fingerprint=fingerprint,
            target=OpenTarget("stream", 22),
        )
    assert info.value.code == "not_allowed"
    assert local.connections == 0


async def test_a_used_key_fails_with_the_trackers_code(world: World) -> None:
    _relay, port, _local, _context, fingerprint = world
    with trio.fail_after(10), pytest.raises(TunnelFailed) as info:
        await join_as_requester(port, key="A" * 43, fingerprint=fingerprint)
    assert info.value.code == "unknown"


async def test_bridge_carries_a_local_connection_and_its_half_close(
    world: World, nursery: trio.Nursery
) -> None:
    relay, port, local, context, fingerprint = world
    session = await start_owner(nursery, relay, port, context, lambda t: local.port)
    with trio.fail_after(10):
        tunnel, _ = await join_as_requester(
            port, key=session.keys["client"], fingerprint=fingerprint
        )
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        forward_port = listeners[0].socket.getsockname()[1]
        result: dict[str, tuple[int, int]] = {}

        async def forward_one() -> None:
            local_conn = await listeners[0].accept()
            async with local_conn, tunnel:
                result["counts"] = await bridge(tunnel, local_conn)

        nursery.start_soon(forward_one)
        client = await trio.open_tcp_stream("127.0.0.1", forward_port)
        await client.send_all(b"hello\n")
        await client.send_eof()  # TLS carries no half-close: the answer must still come
        got = b""
        while chunk := await client.receive_some(100):
            got += chunk
        await client.aclose()
        await listeners[0].aclose()
    assert got == b"HELLO\n"
    assert result["counts"] == (6, 6)


async def test_the_owner_learns_the_requester_before_any_open(
    world: World, nursery: trio.Nursery, requester: PeerTLS
) -> None:
    relay, port, local, context, fingerprint = world
    seen: list[str | None] = []

    def refuse(requester_fingerprint: str | None) -> str | None:
        seen.append(requester_fingerprint)
        return "forbidden"

    session = await start_owner(nursery, relay, port, context, lambda t: local.port, refuse)
    with trio.fail_after(10), pytest.raises(TunnelFailed) as info:
        await join_as_requester(port, key=session.keys["client"], fingerprint=fingerprint)
    assert info.value.code == "forbidden"
    assert "does not share with this peer" in str(info.value)
    assert seen == [requester.keys.fingerprint]
    assert local.connections == 0


async def test_a_requester_without_a_certificate_is_seen_as_none(
    world: World, nursery: trio.Nursery
) -> None:
    relay, port, local, context, fingerprint = world
    seen: list[str | None] = []

    def record(requester_fingerprint: str | None) -> str | None:
        seen.append(requester_fingerprint)
        return None if requester_fingerprint else "forbidden"

    session = await start_owner(nursery, relay, port, context, lambda t: local.port, record)
    with trio.fail_after(10), pytest.raises(TunnelFailed) as info:
        await join_as_requester(
            port,
            key=session.keys["client"],
            fingerprint=fingerprint,
            context=plain_client_context(),
        )
    assert info.value.code == "forbidden"
    assert seen == [None]
    assert local.connections == 0

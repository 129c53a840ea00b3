"""The TLS stream of tunnels and direct routes: many records per receive, same wire."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from flashback.daemon.bulk_tls import BulkTLSStream
from flashback.daemon.keys import load_or_create
from flashback.daemon.peer_tls import PeerTLS
from flashback.daemon.tunnel_ends import open_over, serve_over
from flashback.protocol.tunnel import OpenTarget

TLS_RECORD_BYTES = 16384


@pytest.fixture
def owner(tmp_path: Path) -> PeerTLS:
    (tmp_path / "owner").mkdir()
    return PeerTLS(load_or_create(tmp_path / "owner"))


@pytest.fixture
def requester(tmp_path: Path) -> PeerTLS:
    (tmp_path / "requester").mkdir()
    return PeerTLS(load_or_create(tmp_path / "requester"))


async def test_a_receive_takes_every_record_already_there(
    nursery: trio.Nursery, owner: PeerTLS, requester: PeerTLS
) -> None:
    """What the owner relayed is already on the requester's side: one receive gives
    it all, not one 16 KiB record per call (that cost a trip through the scheduler
    and a loopback send per 16 KiB of every tunnel and direct route)."""
    payload = os.urandom(200_000)

    async def local_server(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(payload)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, local_server, listeners)
    relayed = [0]
    all_relayed = trio.Event()

    def on_bytes(_down: int, up: int) -> None:
        relayed[0] += up
        if relayed[0] >= len(payload):
            all_relayed.set()

    near, far = trio.testing.memory_stream_pair()
    nursery.start_soon(
        partial(
            serve_over,
            far,
            context=owner.server_context(),
            authorize=lambda _fingerprint: None,
            resolve_target=lambda _target: port,
            on_bytes=on_bytes,
        )
    )
    stream, leftover = await open_over(
        near,
        context=requester.client_context(),
        expected_fingerprint=owner.keys.fingerprint,
        check_pin=lambda _fingerprint: None,
        target=OpenTarget("peer-server"),
    )
    await all_relayed.wait()  # every record is in the memory stream now
    first = await stream.receive_some(256 * 1024)
    assert len(first) > TLS_RECORD_BYTES
    assert leftover + first == payload
    await stream.aclose()


async def test_interoperates_with_trio_sslstream_both_ways(
    owner: PeerTLS, requester: PeerTLS
) -> None:
    """Either end may be trio's own SSLStream (older daemons, tests): same TLS."""
    data = os.urandom(300_000)
    for bulk_is_server in (True, False):
        near, far = trio.testing.memory_stream_pair()
        server: trio.abc.Stream
        if bulk_is_server:
            server = BulkTLSStream(far, owner.server_context(), server_side=True)
            client: trio.abc.Stream = trio.SSLStream(
                near, requester.client_context(), server_hostname=None
            )
        else:
            server = trio.SSLStream(far, owner.server_context(), server_side=True)
            client = BulkTLSStream(near, requester.client_context())
        got = bytearray()

        async def receive_all(stream: trio.abc.Stream, into: bytearray) -> None:
            while chunk := await stream.receive_some(65536):
                into += chunk

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)  # type: ignore[attr-defined]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_all, client, got)
            await server.send_all(data)
            await server.aclose()  # close_notify: the client's receive ends with b""
        assert bytes(got) == data
        await client.aclose()


async def test_eof_without_close_notify_is_a_broken_stream(
    owner: PeerTLS, requester: PeerTLS
) -> None:
    near, far = trio.testing.memory_stream_pair()
    server = BulkTLSStream(far, owner.server_context(), server_side=True)
    client = BulkTLSStream(near, requester.client_context())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    await server.send_all(b"hello")
    await far.aclose()  # the transport ends; TLS never said goodbye
    assert await client.receive_some(100) == b"hello"
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some(100)
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"more")
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some(100)


async def test_garbage_instead_of_a_handshake_is_a_broken_stream(owner: PeerTLS) -> None:
    near, far = trio.testing.memory_stream_pair()
    server = BulkTLSStream(far, owner.server_context(), server_side=True)
    await near.send_all(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(trio.BrokenResourceError):
        await server.do_handshake()
    await server.aclose()

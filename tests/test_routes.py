"""Direct-first routes against real loopback servers: who answers /api/info decides."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import cast

import httpx
import pytest
import trio

from flashback.daemon.routes import Router, probe_direct
from flashback.protocol.tunnel import OpenTarget


async def serve_info(
    nursery: trio.Nursery, body: bytes, *, delay_s: float = 0.0, status: int = 200
) -> int:
    """A tiny HTTP/1.1 server answering every request with *body* (raw, so tests may lie)."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data and (chunk := await stream.receive_some(4096)):
                data += chunk
            await trio.sleep(delay_s)
            head = (
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            await stream.send_all(head.encode() + body)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return cast(int, listeners[0].socket.getsockname()[1])


def info(peer_id: str) -> bytes:
    return json.dumps({"name": "alice", "peer_id": peer_id, "version": "x"}).encode()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_probe_accepts_only_the_named_peer(
    nursery: trio.Nursery, http: httpx.AsyncClient
) -> None:
    port = await serve_info(nursery, info("p-alice"))
    assert await probe_direct(http, "127.0.0.1", port, "p-alice")
    assert not await probe_direct(http, "127.0.0.1", port, "p-bob")


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"not json", 200), (b"[]", 200), (info("p-alice"), 404), (b'{"peer_id": NaN}', 200)],
)
async def test_probe_refuses_odd_answers(
    nursery: trio.Nursery, http: httpx.AsyncClient, body: bytes, status: int
) -> None:
    port = await serve_info(nursery, body, status=status)
    assert not await probe_direct(http, "127.0.0.1", port, "p-alice")


async def test_probe_gives_up_after_half_a_second(
    nursery: trio.Nursery, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    port = await serve_info(nursery, info("p-alice"), delay_s=5.0)
    start = trio.current_time()
    assert not await probe_direct(http, "127.0.0.1", port, "p-alice")
    assert trio.current_time() - start == pytest.approx(0.5, abs=0.01)


async def test_nothing_listening_is_not_direct(http: httpx.AsyncClient) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    assert not await probe_direct(http, "127.0.0.1", port, "p-alice")


async def test_router_goes_direct_when_it_can_and_relays_otherwise(
    nursery: trio.Nursery, http: httpx.AsyncClient
) -> None:
    alice_port = await serve_info(nursery, info("p-alice"))
    imposter_port = await serve_info(nursery, info("p-somebody-else"))
    opened: list[tuple[str, OpenTarget]] = []
    ports: dict[tuple[str, OpenTarget], int] = {}

    async def open_forward(peer_id: str, target: OpenTarget) -> int:
        """As TunnelService.start_forward: asked each time, one port per forward."""
        opened.append((peer_id, target))
        return ports.setdefault((peer_id, target), 40001 + len(ports))

    router = Router(http, open_forward)
    direct = await router.reach("p-alice", "127.0.0.1", alice_port)
    assert (direct.route, direct.url.port) == ("direct", alice_port)
    relayed = await router.reach("p-bob", "127.0.0.1", imposter_port)
    assert relayed.route == "relay"
    assert str(relayed.url) == "http://127.0.0.1:40001/"
    again = await router.reach("p-bob", "127.0.0.1", imposter_port)
    # the forward is reused, and asked again (its tunnel hears an owner's refusal, §11)
    assert again.url == relayed.url and len(opened) == 2
    stream = await router.reach_stream("p-bob", "127.0.0.1", imposter_port, "10.9.9.9", 5555)
    assert stream.route == "relay" and opened[-1] == ("p-bob", OpenTarget("stream", 5555))
    direct_stream = await router.reach_stream("p-alice", "127.0.0.1", alice_port, "::1", 5555)
    assert str(direct_stream.url) == "http://[::1]:5555/"
    router.forward_closed("p-bob", OpenTarget("peer-server"))
    await router.reach("p-bob", "127.0.0.1", imposter_port)
    assert len(opened) == 4
    assert router.last_route("p-alice") == "direct" and router.last_route("p-carol") is None


async def test_a_stream_notice_names_only_a_port_never_a_host(
    nursery: trio.Nursery, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """An owner's ``file-stream-ready`` saying 127.0.0.2:PORT (any local service) is
    fetched on the host alice's server proved to be on; only the port is taken."""
    import io

    from flashback.config import DaemonConfig
    from flashback.daemon.connect import connect_peer, parse_connect_body
    from flashback.daemon.context import DaemonContext
    from flashback.daemon.hub import EventHub
    from flashback.peer.app import LocalInfo
    from flashback.protocol.messages import PeerInfo

    alice_port = await serve_info(nursery, info("p-alice"))
    config = DaemonConfig(root=tmp_path, tracker_url=None, name="bob")
    ctx = DaemonContext(config=config, hub=EventHub(io.StringIO()), local=LocalInfo(name="bob"))

    async def no_tunnel(peer_id: str, target: OpenTarget) -> int:
        raise AssertionError("alice is reachable directly")

    ctx.router = Router(http, no_tunnel)
    ctx.table.peers["p-alice"] = PeerInfo("p-alice", "alice", "127.0.0.1", alice_port)
    ctx.tracker_connected = True  # the table is the tracker's word only while linked
    request = parse_connect_body({"peer": "alice", "stream_host": "127.0.0.2", "stream_port": 6379})
    answer = await connect_peer(ctx, request)
    assert answer == {"peer_id": "p-alice", "url": "http://127.0.0.1:6379", "route": "direct"}

"""The tracker's byte pump between two real loopback TCP connections, splice and fallback."""

from __future__ import annotations

import hashlib
import os
import socket as stdlib_socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from trio.socket import SocketType

from flashback.protocol.token_bucket import TokenBucket
from flashback.tracker.pump import SPLICE_AVAILABLE, pump

MODES = [
    pytest.param(
        True, id="splice", marks=pytest.mark.skipif(not SPLICE_AVAILABLE, reason="no os.splice")
    ),
    pytest.param(False, id="recv_into"),
]


async def tcp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """Two connected loopback TCP sockets (the pump needs real sockets, not streams)."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    near = trio.socket.socket()
    await near.connect(listener.getsockname())
    far, _ = await listener.accept()
    listener.close()
    return near, far


async def drain(sock: trio.socket.SocketType) -> bytes:
    chunks = []
    while data := await sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


async def send_all_then_half_close(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]
    sock.shutdown(trio.socket.SHUT_WR)


Ends = tuple[SocketType, SocketType, SocketType, SocketType]


@pytest.fixture
async def session() -> AsyncIterator[Ends]:
    """(client end, server end, the two sockets the tracker holds)."""
    client, tracker_c = await tcp_pair()
    server, tracker_s = await tcp_pair()
    yield client, server, tracker_c, tracker_s
    for s in (client, server, tracker_c, tracker_s):
        s.close()


@pytest.mark.parametrize("use_splice", MODES)
async def test_bytes_cross_both_ways_unchanged_with_half_close(
    session: Ends, use_splice: bool
) -> None:
    client, server, tc, ts = session
    up = os.urandom(3 * 1024 * 1024 + 17)
    down = os.urandom(5 * 1024 * 1024 + 3)
    got: dict[str, Any] = {}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def run_pump() -> None:
                got["stats"] = await pump(tc, ts, use_splice=use_splice)

            async def server_side() -> None:
                got["up"] = await drain(server)  # EOF arrives: the half-close was forwarded
                await send_all_then_half_close(server, down)  # and it can still answer

            async def client_side() -> None:
                await send_all_then_half_close(client, up)
                got["down"] = await drain(client)

            nursery.start_soon(run_pump)
            nursery.start_soon(server_side)
            nursery.start_soon(client_side)
    assert hashlib.sha256(got["up"]).digest() == hashlib.sha256(up).digest()
    assert got["down"] == down
    stats = got["stats"]
    assert (stats.client_to_server, stats.server_to_client) == (len(up), len(down))
    assert not stats.idle_closed


@pytest.mark.parametrize("use_splice", MODES)
async def test_idle_session_ends_after_exactly_the_timeout(
    session: Ends, use_splice: bool, autojump_clock: trio.testing.MockClock
) -> None:
    _client, _server, tc, ts = session
    start = trio.current_time()
    stats = await pump(tc, ts, idle_timeout_s=120.0, use_splice=use_splice)
    assert stats.idle_closed
    assert trio.current_time() - start == pytest.approx(120.0)


@pytest.mark.parametrize("use_splice", MODES)
async def test_activity_pushes_the_idle_deadline(
    session: Ends, use_splice: bool, autojump_clock: trio.testing.MockClock
) -> None:
    client, _server, tc, ts = session
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def chatter() -> None:
            for _ in range(3):
                await trio.sleep(100.0)
                await client.send(b"x")

        nursery.start_soon(chatter)
        stats = await pump(tc, ts, idle_timeout_s=120.0, use_splice=use_splice)
    assert stats.idle_closed and stats.client_to_server == 3
    assert trio.current_time() - start == pytest.approx(300.0 + 120.0)


@pytest.mark.parametrize("use_splice", MODES)
async def test_rate_limit_per_session(
    session: Ends, use_splice: bool, autojump_clock: trio.testing.MockClock
) -> None:
    client, server, tc, ts = session
    payload = b"r" * 400_000
    got: dict[str, Any] = {}
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def run_pump() -> None:
            got["stats"] = await pump(
                tc,
                ts,
                use_splice=use_splice,
                bucket=TokenBucket(rate_per_s=100_000.0, burst=100_000.0),
            )

        async def receive() -> None:
            got["up"] = await drain(server)
            server.shutdown(trio.socket.SHUT_WR)

        nursery.start_soon(run_pump)
        nursery.start_soon(receive)
        await send_all_then_half_close(client, payload)
    assert got["up"] == payload
    # 100 kB pass as the burst, the other 300 kB at 100 kB/s
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.5)


@pytest.mark.parametrize("use_splice", MODES)
async def test_a_reset_ends_the_session(session: Ends, use_splice: bool) -> None:
    client, server, tc, ts = session
    # SO_LINGER 0 makes close() send RST instead of FIN
    client.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def reset_after_hello() -> None:
                await client.send(b"hello")
                # the pump carried it (peeked: the final assert reads it again)
                assert await server.recv(5, stdlib_socket.MSG_PEEK) == b"hello"
                client.close()

            nursery.start_soon(reset_after_hello)
            stats = await pump(tc, ts, use_splice=use_splice)
    assert isinstance(stats.error, ConnectionResetError)
    assert not stats.idle_closed
    assert await server.recv(5) == b"hello"


class _Steps(trio.abc.Instrument):
    """How often the pump's client-to-server task ran."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("one_direction"):
            self.count += 1


@pytest.mark.skipif(not SPLICE_AVAILABLE, reason="no os.splice")
async def test_a_chunk_after_a_wait_costs_one_scheduler_pass_not_two(session: Ends) -> None:
    # Each chunk arrives alone, so the pump waits for it (a checkpoint); a second
    # checkpoint after copying it would only double the wakeups of a slow stream.
    client, server, tc, ts = session
    chunks = 50
    steps = _Steps()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, tc, ts)
            await client.send(b"x")  # the pump makes its pipes
            assert await server.recv(10) == b"x"
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.add_instrument(steps)
            for _ in range(chunks):
                await client.send(b"y" * 1000)
                got = 0
                while got < 1000:
                    got += len(await server.recv(65536))
                await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.remove_instrument(steps)
            nursery.cancel_scope.cancel()
    assert chunks <= steps.count <= chunks + 2

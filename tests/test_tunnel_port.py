"""The tracker's tunnel port from outside: real TCP clients on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from flashback.protocol.tunnel import Session, join_line, new_key
from flashback.tracker.tunnels import TunnelRelay, serve_tunnel_port

_open_clients: list[trio.SocketStream] = []
RelayPort = tuple[TunnelRelay, int]


@pytest.fixture
async def relay_port(nursery: trio.Nursery) -> AsyncIterator[RelayPort]:
    relay = TunnelRelay(max_sessions=4, max_unjoined=8)
    port = await nursery.start(serve_tunnel_port, relay, "127.0.0.1", 0)
    yield relay, port
    for stream in _open_clients:
        stream.socket.close()
    _open_clients.clear()


async def connect(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    _open_clients.append(stream)
    return stream


async def read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        data += chunk
    return data


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def joined_pair(
    relay: TunnelRelay, port: int
) -> tuple[Session, trio.SocketStream, trio.SocketStream]:
    session = relay.invite(request_id="r", client_peer="bob", server_peer="alice")
    owner = await connect(port)
    await owner.send_all(join_line(session.keys["server"]))
    requester = await connect(port)
    await requester.send_all(join_line(session.keys["client"]))
    assert await read_line(owner) == b"OK\n"
    assert await read_line(requester) == b"OK\n"
    return session, requester, owner


async def test_two_joiners_are_paired_and_bytes_cross(relay_port: RelayPort) -> None:
    relay, port = relay_port
    with trio.fail_after(10):
        _session, requester, owner = await joined_pair(relay, port)
        await requester.send_all(b"hello owner")
        await requester.send_eof()
        assert await read_to_eof(owner) == b"hello owner"
        await owner.send_all(b"hello requester")
        await owner.send_eof()
        assert await read_to_eof(requester) == b"hello requester"
        while relay.counters.sessions_by_outcome.get("completed") != 1:  # noqa: ASYNC110
            await trio.sleep(0.01)  # the relay's task ends just after the last byte
    assert relay.counters.bytes_copied == len(b"hello owner") + len(b"hello requester")
    assert relay.sessions_active == 0


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"ERR bad_line\n"),
        (b"x" * 300, b"ERR line_too_long\n"),
        (join_line(new_key()), b"ERR unknown\n"),
        (b"FLASHBACK-TUNNEL 1 " + b"A" * 43 + b"\n", b"ERR unknown\n"),
    ],
)
async def test_bad_joins_get_err_and_are_closed(
    relay_port: RelayPort, sent: bytes, answer: bytes
) -> None:
    _relay, port = relay_port
    with trio.fail_after(10):
        stream = await connect(port)
        await stream.send_all(sent)
        assert await read_to_eof(stream) == answer


async def test_a_third_joiner_with_a_used_key_is_refused(relay_port: RelayPort) -> None:
    relay, port = relay_port
    with trio.fail_after(10):
        session, _requester, _owner = await joined_pair(relay, port)
        third = await connect(port)
        await third.send_all(join_line(session.keys["client"]))
        assert await read_to_eof(third) == b"ERR used\n"


async def test_silent_connection_gets_err_after_five_seconds(
    relay_port: RelayPort, autojump_clock: trio.testing.MockClock
) -> None:
    _relay, port = relay_port
    stream = await connect(port)
    start = trio.current_time()
    assert await read_to_eof(stream) == b"ERR timeout\n"
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_half_joined_session_expires_with_its_key(
    relay_port: RelayPort, autojump_clock: trio.testing.MockClock
) -> None:
    relay, port = relay_port
    session = relay.invite(request_id="r", client_peer="bob", server_peer="alice")
    owner = await connect(port)
    await owner.send_all(join_line(session.keys["server"]))
    assert await read_to_eof(owner) == b"ERR expired\n"
    assert trio.current_time() - session.issued_at == pytest.approx(30.0)
    late = await connect(port)
    await late.send_all(join_line(session.keys["client"]))
    assert await read_to_eof(late) == b"ERR used\n"


async def test_the_session_table_is_bounded_and_an_evicted_waiter_hears_busy(
    relay_port: RelayPort,
) -> None:
    relay, port = relay_port
    with trio.fail_after(10):
        first = relay.invite(request_id="0", client_peer="b", server_peer="a")
        waiting = await connect(port)
        await waiting.send_all(join_line(first.keys["server"]))
        while relay.unjoined:  # noqa: ASYNC110 -- until it waits for its partner
            await trio.sleep(0.01)
        for i in range(1, 4):
            relay.invite(request_id=str(i), client_peer="b", server_peer="a")
        assert relay.sessions_active == 4
        # full: the heaviest requester's oldest pending session makes room
        relay.invite(request_id="5", client_peer="c", server_peer="a")
        assert relay.sessions_active == 4
        assert await read_to_eof(waiting) == b"ERR busy\n"
    assert relay.counters.sessions_by_outcome["busy"] == 1


async def test_unjoined_strangers_are_capped_and_the_oldest_makes_room(
    relay_port: RelayPort,
) -> None:
    relay, port = relay_port
    with trio.fail_after(10):
        idle = [await connect(port) for _ in range(8)]
        while relay.unjoined < 8:  # noqa: ASYNC110 -- the relay's tasks start on their own
            await trio.sleep(0.01)
        extra = await connect(port)
        assert await read_to_eof(idle[0]) == b""  # the oldest is closed, no waiting
        while relay.unjoined < 8:  # noqa: ASYNC110
            await trio.sleep(0.01)
        # the newcomer is served: a real pair gets through with strangers still there
        session = relay.invite(request_id="r", client_peer="bob", server_peer="alice")
        await extra.send_all(join_line(session.keys["server"]))
        requester = await connect(port)
        await requester.send_all(join_line(session.keys["client"]))
        assert await read_line(extra) == b"OK\n"
        assert await read_line(requester) == b"OK\n"
        assert relay.unjoined <= 8


async def test_a_peer_that_never_reads_stalls_only_its_own_session(relay_port: RelayPort) -> None:
    relay, port = relay_port
    with trio.fail_after(20):
        _s, flooder, _sleeper = await joined_pair(relay, port)

        async def flood() -> None:
            while True:
                await flooder.send_all(b"z" * 65536)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            # the relay is in this process: every task blocked means the flood has
            # filled the buffers on its way and now waits on a reader that never reads
            await trio.testing.wait_all_tasks_blocked()
            assert relay.sessions_active == 1
            # meanwhile another session works end to end
            _s2, requester, owner = await joined_pair(relay, port)
            await requester.send_all(b"ping")
            assert await owner.receive_some(4) == b"ping"
            nursery.cancel_scope.cancel()  # the flood was still stalled until here
        # the flooder's bytes stopped at kernel buffers (no reader): bounded, not MBs in Python
        assert relay.counters.bytes_copied < 64 * 1024 * 1024


async def test_a_session_the_kernel_refuses_big_pipes_copies_and_is_counted(
    relay_port: RelayPort, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past fs.pipe-user-pages-soft the kernel leaves pipes at 8 KiB; the pump then
    copies through a buffer, and /metrics says how often that happened."""
    from flashback.tracker import pump
    from flashback.tracker.metrics import TrackerMetrics

    monkeypatch.setattr(pump, "MIN_PIPE_BYTES", 1 << 40)  # no pipe is ever big enough
    relay, port = relay_port
    metrics = TrackerMetrics(peers_online=lambda: 0, connections=lambda: 0, seq=lambda: 0)
    metrics.add_tunnels(relay.counters, lambda: relay.sessions_active)
    with trio.fail_after(10):
        _session, requester, owner = await joined_pair(relay, port)
        await requester.send_all(b"through the buffer")
        await requester.send_eof()
        assert await read_to_eof(owner) == b"through the buffer"
        await owner.send_eof()
        assert await read_to_eof(requester) == b""
        while relay.counters.sessions_by_outcome.get("completed") != 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert relay.counters.copy_fallbacks == (1 if pump.SPLICE_AVAILABLE else 0)
    if pump.SPLICE_AVAILABLE:
        assert "flashback_tracker_tunnel_copy_fallbacks 1.0" in metrics.render().decode()

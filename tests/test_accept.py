"""The one accept loop: capacity back-off, containment, fair cut, and the forwards on it."""

from __future__ import annotations

import errno

import pytest
import trio

from flashback.http.accept import serve_listener
from flashback.protocol.tunnel import OpenTarget
from tests.test_daemon_tunnels import Pair, pair  # noqa: F401 - the fixture


def _flaky_accept(monkeypatch: pytest.MonkeyPatch, errors: list[int]) -> list[int]:
    """SocketListener.accept raises OSError(e) for each e in *errors* first."""
    real = trio.SocketListener.accept
    raised: list[int] = []

    async def accept(self: trio.SocketListener) -> trio.SocketStream:
        if errors:
            code = errors.pop(0)
            raised.append(code)
            await trio.lowlevel.checkpoint()
            raise OSError(code, "injected")
        return await real(self)

    monkeypatch.setattr(trio.SocketListener, "accept", accept)
    return raised


async def _echo_once(port: int, word: bytes) -> bytes:
    client = await trio.open_tcp_stream("127.0.0.1", port)
    async with client:
        await client.send_all(word)
        got = b""
        while chunk := await client.receive_some(100):
            got += chunk
    return got


async def test_an_accept_error_no_longer_stops_a_forward(
    pair: Pair,  # noqa: F811
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    switch, _events, _pins = pair
    raised = _flaky_accept(monkeypatch, [errno.EMFILE, errno.ENFILE])
    with trio.fail_after(15):
        port = await nursery.start(
            switch.services["bob"].forward, "alice", OpenTarget("peer-server")
        )
        assert await _echo_once(port, b"after emfile\n") == b"AFTER EMFILE\n"
    assert raised == [errno.EMFILE, errno.ENFILE]


async def test_a_failing_handler_ends_its_connection_only(nursery: trio.Nursery) -> None:
    calls = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("this connection spoke nonsense")
        await stream.send_all(b"ok")

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await nursery.start(
        lambda task_status: serve_listener(
            handler, listener, max_connections=4, task_status=task_status
        )
    )
    with trio.fail_after(5):
        assert await _echo_once(port, b"") == b""  # closed by the finally
        assert await _echo_once(port, b"") == b"ok"


async def test_the_cap_waits_without_a_share(nursery: trio.Nursery) -> None:
    gate = trio.Event()
    running = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal running
        running += 1
        await gate.wait()

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await nursery.start(
        lambda task_status: serve_listener(
            handler, listener, max_connections=2, task_status=task_status
        )
    )
    clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
    await trio.testing.wait_all_tasks_blocked()
    assert running == 2  # the third waits in the backlog
    gate.set()
    for client in clients:
        await client.aclose()


async def test_a_full_share_cuts_the_heaviest_address_not_the_newcomer(
    nursery: trio.Nursery,
) -> None:
    held: list[int] = []
    cut: list[int] = []
    count = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal count
        me = count = count + 1
        held.append(me)
        try:
            await trio.sleep_forever()
        finally:
            cut.append(me)

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await nursery.start(
        lambda task_status: serve_listener(
            handler, listener, max_connections=3, per_address=2, task_status=task_status
        )
    )
    clients = []
    for _ in range(3):
        clients.append(await trio.open_tcp_stream("127.0.0.1", port))
        await trio.testing.wait_all_tasks_blocked()
    # one address: its third connection pushes out its own oldest
    assert held == [1, 2, 3] and cut == [1]
    for client in clients:
        await client.aclose()

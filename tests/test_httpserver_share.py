"""The HTTP server's connections are a fair share by client address, from outside.

A real :func:`serve_bounded` on loopback with a small connection cap; one
address opens idle connections up to the cap. On the code before, the cap
was global and the newcomer got ``503 busy``: one address that keeps
connections open (reconnecting within the idle timeout) locked everyone
else out of the tracker, the peer server and the UI. Now the heaviest
address's oldest connection closes to make room; the newcomer is served.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Final, cast

import httpx
import trio

from flashback.httpserver import ConnectionLimits, serve_bounded
from flashback.web import hypercorn_config

TEST_TIMEOUT_S: Final = 20
CAP: Final = 8


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _idle(port: int, source: str) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def test_one_address_holding_every_connection_does_not_lock_out_another(
    nursery: trio.Nursery,
) -> None:
    limits = ConnectionLimits(idle_timeout_s=60.0, max_connections=CAP)
    binds = await nursery.start(
        partial(serve_bounded, cast(Any, _app), hypercorn_config("127.0.0.1", 0), limits=limits)
    )
    port = int(binds[0].rsplit(":", 1)[1])
    with trio.fail_after(TEST_TIMEOUT_S):
        held = [await _idle(port, "127.0.0.2") for _ in range(CAP)]
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        async with httpx.AsyncClient(transport=transport) as http:
            answer = await http.get(f"http://127.0.0.1:{port}/")
        assert answer.status_code == 200, answer.text
        # the holder paid: its oldest connection was closed, its newest still stand
        assert await held[0].receive_some(100) == b""
        await held[-1].send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await held[-1].receive_some(100)).startswith(b"HTTP/1.1 200")
        for stream in held:
            await stream.aclose()

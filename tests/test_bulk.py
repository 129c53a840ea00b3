"""The download body path: one GET on its own connection, read in large pieces."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio

from flashback.client.bulk import MAX_HEAD_BYTES, BulkError, bulk_get

BODY = bytes(range(256)) * 16384  # 4 MiB


async def serve_once(
    nursery: trio.Nursery, answer: Callable[[trio.SocketStream], Awaitable[None]]
) -> httpx.URL:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive_some(65536)
            await answer(stream)

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return httpx.URL(f"http://127.0.0.1:{port}/download/f")


async def test_a_body_arrives_whole_in_pieces_larger_than_httpx_reads(
    nursery: trio.Nursery,
) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        head = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "v1"\r\n\r\n' % len(BODY)
        await stream.send_all(head + BODY)

    url = await serve_once(nursery, answer)
    pieces: list[bytes] = []
    async with bulk_get(
        url, {}, head_timeout_s=10, connect_timeout_s=10, read_timeout_s=10
    ) as response:
        assert response is not None
        assert response.status_code == 200 and response.headers["etag"] == '"v1"'
        async for piece in response.chunks():
            pieces.append(piece)
    assert b"".join(pieces) == BODY
    assert max(map(len, pieces)) > 65536  # httpx's read size is the ceiling it lifts


async def test_a_body_cut_short_is_an_error_not_a_short_file(nursery: trio.Nursery) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    url = await serve_once(nursery, answer)
    async with bulk_get(
        url, {}, head_timeout_s=10, connect_timeout_s=10, read_timeout_s=10
    ) as response:
        assert response is not None
        with pytest.raises(BulkError, match="RemoteProtocolError"):
            async for _ in response.chunks():
                pass


async def test_an_oversized_head_is_refused(nursery: trio.Nursery) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        filler = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n"
        await stream.send_all(b"HTTP/1.1 200 OK\r\n" + filler + b"\r\n")

    url = await serve_once(nursery, answer)
    with pytest.raises(BulkError, match="RemoteProtocolError"):
        async with bulk_get(url, {}, head_timeout_s=10, connect_timeout_s=10, read_timeout_s=10):
            pass


async def test_only_plain_http_is_spoken() -> None:
    with pytest.raises(BulkError, match="not a plain http URL"):
        async with bulk_get(
            httpx.URL("https://127.0.0.1:1/x"),
            {},
            head_timeout_s=1,
            connect_timeout_s=1,
            read_timeout_s=1,
        ):
            pass

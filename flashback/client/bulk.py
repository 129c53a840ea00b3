"""One GET on its own connection, read in large pieces: the body path of a download.

httpx reads 64 KiB at a time and every piece climbs four layers, so a 1 GiB
body is 16,000 trips through the event loop; that made ``get`` the slow end
of a transfer (a third of ``curl -o`` on loopback). Here h11 parses what one
receive of up to :data:`RECEIVE_BYTES` brought, so the same body is about a
thousand trips. Only plain ``http://`` is spoken: every peer URL a download
uses is a peer server or a local forward on this machine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Final, cast

import h11
import httpx
import trio

#: one receive's upper bound; loopback and a local forward deliver this much at once
RECEIVE_BYTES: Final = 1024 * 1024
#: a response head (status line and fields) larger than this is not an answer
MAX_HEAD_BYTES: Final = 64 * 1024


class BulkError(Exception):
    """The connection failed or the peer broke HTTP/1.1; the message names which."""


class BulkResponse:
    """A response head, and its body read once through :meth:`chunks`."""

    def __init__(
        self,
        status_code: int,
        headers: httpx.Headers,
        stream: trio.abc.Stream,
        connection: h11.Connection,
        read_timeout_s: float,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self._stream = stream
        self._connection = connection
        self._read_timeout_s = read_timeout_s

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body's pieces as they arrive; each receive must bring something in time."""
        while True:
            event = await _next_event(self._stream, self._connection, self._read_timeout_s)
            if not isinstance(event, h11.Data):
                return  # EndOfMessage; h11 raises if the body was cut short
            yield bytes(event.data)


async def _next_event(
    stream: trio.abc.Stream,
    connection: h11.Connection,
    read_timeout_s: float,
    receive_bytes: int = RECEIVE_BYTES,
) -> h11.Event | type[h11.PAUSED]:
    try:
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return cast("h11.Event | type[h11.PAUSED]", event)
            with trio.fail_after(read_timeout_s):
                data = await stream.receive_some(receive_bytes)
            connection.receive_data(bytes(data))
    except trio.TooSlowError:
        raise BulkError(f"ReadTimeout: nothing arrived within {read_timeout_s:.0f} s") from None
    except h11.RemoteProtocolError as exc:
        raise BulkError(f"RemoteProtocolError: {exc}") from None
    except (trio.BrokenResourceError, OSError) as exc:
        raise BulkError(f"{exc.__class__.__name__}: the connection broke") from None


@asynccontextmanager
async def bulk_get(
    url: httpx.URL,
    headers: Mapping[str, str],
    *,
    head_timeout_s: float,
    connect_timeout_s: float,
    read_timeout_s: float,
) -> AsyncIterator[BulkResponse | None]:
    """GET *url*; yields its response, or None when no whole head came within
    *head_timeout_s* (however it trickled in). The connection closes on leaving."""
    if url.scheme != "http" or not url.host:
        raise BulkError(f"not a plain http URL: {url}")
    try:
        with trio.fail_after(connect_timeout_s):
            stream = await trio.open_tcp_stream(url.host, url.port or 80)
    except trio.TooSlowError:
        raise BulkError(f"ConnectTimeout: no connection within {connect_timeout_s:.0f} s") from None
    except OSError as exc:
        raise BulkError(f"ConnectError: {exc.strerror or exc}") from None
    async with stream:
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        fields = [("Host", url.netloc.decode("ascii")), *headers.items()]
        request = h11.Request(method="GET", target=url.raw_path, headers=fields)
        try:
            await stream.send_all(
                connection.send(request) + (connection.send(h11.EndOfMessage()) or b"")
            )
        except (trio.BrokenResourceError, OSError) as exc:
            raise BulkError(f"{exc.__class__.__name__}: the request could not be sent") from None
        response: h11.Response | None = None
        with trio.move_on_after(head_timeout_s):
            while response is None:
                # small reads until the head is whole, so h11's cap on it holds
                event = await _next_event(stream, connection, read_timeout_s, MAX_HEAD_BYTES)
                if isinstance(event, h11.Response):
                    if sum(len(n) + len(v) + 4 for n, v in event.headers) > MAX_HEAD_BYTES:
                        raise BulkError("RemoteProtocolError: the response head is too large")
                    response = event
                elif not isinstance(event, h11.InformationalResponse):
                    raise BulkError("RemoteProtocolError: no response head")
        if response is None:
            yield None
            return
        pairs = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in response.headers
        ]
        yield BulkResponse(
            response.status_code, httpx.Headers(pairs), stream, connection, read_timeout_s
        )

"""One dedicated streaming port: a listener, h11 connections, sendfile bodies.

Plain HTTP/1.1 on a trio socket, not Quart: the port serves one file to one
requester, and the body goes out with ``os.sendfile`` straight from the page
cache. Accepting is :func:`flashback.http.accept.serve_listener`'s, as for
every listener. h11 keeps the protocol honest (framing,
keep-alive, HEAD, malformed requests); :func:`send_with_data_passthrough`
lets it frame a body whose bytes it never sees.

:meth:`StreamPort.serve` returns why the port closed, ``"completed"`` or
``"expired"`` (rules in :mod:`flashback.streaming`); cancelling it is a
shutdown. Either way the listener is closed before ``serve`` returns, so a
client that comes afterwards is refused by the kernel.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Final

import h11
import trio

from flashback.digests import DigestService
from flashback.errors import BadRequest
from flashback.http.accept import serve_listener
from flashback.protocol.digest import repr_digest_header
from flashback.protocol.fairshare import FairShare, share_address
from flashback.streaming.lifetime import PortLifetime
from flashback.streaming.responses import Plan, plan_response, target_has_token
from flashback.streaming.source import StreamSource
from flashback.zerocopy import (
    BodyLength,
    FileShrunk,
    SendProgress,
    frame_file_body,
    sendfile_range,
)

log = logging.getLogger(__name__)

LISTEN_BACKLOG: Final = 16
#: concurrent connections per port that presented the token (a segmented
#: downloader uses a few)
MAX_CONNECTIONS: Final = 8
#: connections that have not yet shown the token, a fair share by source
#: address (flashback.protocol.fairshare): past MAX_PENDING_PER_ADDRESS an
#: address's newest drops its own oldest, past MAX_PENDING_CONNECTIONS the
#: heaviest address's oldest goes -- so idle strangers, from one address or
#: many, cannot lock the token holder out
MAX_PENDING_CONNECTIONS: Final = 32
MAX_PENDING_PER_ADDRESS: Final = 8
#: a new connection must send its first request within this time
FIRST_REQUEST_TIMEOUT_S: Final = 2.0
#: request head size limit (h11 answers 431 above it)
MAX_HEAD_BYTES: Final = 16 * 1024
#: a connection with no complete request for this long is closed
IDLE_TIMEOUT_S: Final = 10.0
#: request body we read and drop (GET and HEAD need none); more closes the connection
MAX_BODY_BYTES: Final = 64 * 1024
RECEIVE_BYTES: Final = 16 * 1024
_CLIENT_GONE = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    h11.LocalProtocolError,
)


async def open_listener(host: str) -> trio.socket.SocketType:
    """A listening socket on *host*, port 0 (the OS picks)."""
    infos = await trio.socket.getaddrinfo(
        host, 0, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    family, type_, proto, _, address = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        await sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class StreamPort:
    def __init__(
        self,
        sock: trio.socket.SocketType,
        source: StreamSource,
        token: str,
        *,
        expires_in_s: float,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        digests: DigestService | None = None,
    ) -> None:
        self._digests = digests
        self._sock = sock
        self._source = source
        self._token = token
        self._idle_timeout_s = idle_timeout_s
        self.port: int = sock.getsockname()[1]
        self.lifetime = PortLifetime(source.size, expires_in_s, trio.current_time())
        self._changed = trio.Event()
        self._connections = 0
        self._pending: FairShare[str, trio.CancelScope] = FairShare(
            MAX_PENDING_CONNECTIONS, MAX_PENDING_PER_ADDRESS
        )

    @property
    def bytes_sent(self) -> int:
        return self.lifetime.bytes_sent

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve(self) -> str:
        try:
            async with trio.open_nursery() as nursery:
                # The fair share of pending connections is ours (_handle); the
                # loop's cap is only a backstop, past every connection the share
                # and MAX_CONNECTIONS allow, so a newcomer is always accepted
                # (and may evict a stranger).
                nursery.start_soon(
                    partial(
                        serve_listener,
                        self._handle,
                        trio.SocketListener(self._sock),
                        max_connections=2 * (MAX_PENDING_CONNECTIONS + MAX_CONNECTIONS),
                        name=f"stream port {self.port}",
                    )
                )
                reason = await self._wait_done()
                nursery.cancel_scope.cancel()
            return reason
        finally:
            # Only once the accept task is gone (closing under a waiting
            # accept is an error in trio); from here on connects are refused.
            self._sock.close()

    async def _wait_done(self) -> str:
        while True:
            if self.lifetime.completed:
                return "completed"
            if self.lifetime.expired(trio.current_time()):
                return "expired"
            changed = self._changed
            with trio.move_on_at(self.lifetime.wake_at()):
                await changed.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        """One connection. It counts against MAX_CONNECTIONS only once it has
        shown the token; before that it is pending, must speak within
        FIRST_REQUEST_TIMEOUT_S, and may be evicted by newer strangers."""
        scope = trio.CancelScope()
        try:
            source = str(stream.socket.getpeername()[0])
        except OSError:
            return  # gone already
        victim = self._pending.admit(share_address(source), scope).evicted
        if victim is not None:
            victim[1].cancel()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        admitted = False
        timeout_s = min(FIRST_REQUEST_TIMEOUT_S, self._idle_timeout_s)
        try:
            with scope:
                async with stream:
                    while True:
                        with trio.move_on_after(timeout_s):
                            request = await self._next_request(stream, conn)
                        if request is None:
                            return
                        if not admitted and target_has_token(
                            request.target.decode("ascii", "replace"), self._token
                        ):
                            if self._connections >= MAX_CONNECTIONS:
                                return  # too many downloads of this one file at once
                            admitted = True
                            self._connections += 1
                            self._pending.release(scope)
                        await self._respond(stream, conn, request)
                        timeout_s = self._idle_timeout_s
                        if self.lifetime.completed:
                            return
                        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                            return  # h11 says close, or an unread request body
                        conn.start_next_cycle()
        except _CLIENT_GONE as exc:
            log.debug("stream port %d: connection ended: %r", self.port, exc)
        finally:
            self._pending.release(scope)
            if admitted:
                self._connections -= 1

    async def _next_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> h11.Request | None:
        """The next complete request, or None when the client is done (or must be).

        The request is read through its EndOfMessage (a GET's is at once)
        before we answer: otherwise h11 still sees the client mid-request
        after our response and the connection could not be kept alive.
        A body, which no GET needs, is read and dropped up to a small limit.
        """
        request: h11.Request | None = None
        body_bytes = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self._reject_malformed(stream, conn, exc)
                return None
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body_bytes += len(event.data)
                if body_bytes > MAX_BODY_BYTES:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_BYTES)
                try:
                    conn.receive_data(data)
                except h11.RemoteProtocolError as exc:
                    await self._reject_malformed(stream, conn, exc)
                    return None
            else:
                return None  # ConnectionClosed (or PAUSED, which cannot happen here)

    async def _reject_malformed(
        self, stream: trio.SocketStream, conn: h11.Connection, exc: h11.RemoteProtocolError
    ) -> None:
        if conn.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            return  # a response is already under way: just close
        status = exc.error_status_hint
        code = "request_header_fields_too_large" if status == 431 else "bad_request"
        body = BadRequest("malformed HTTP request", code=code).body()
        response = h11.Response(
            status_code=status,
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        )
        await stream.send_all(conn.send(response) + conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))

    async def _respond(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request
    ) -> None:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in request.headers
        }
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        digest = None
        if self._digests is not None and target_has_token(target, self._token):
            manifest = await self._digests.for_response(self._source.fd, self._source.info)
            digest = repr_digest_header(manifest.sha256) if manifest else None
        plan = plan_response(
            method, target, headers, token=self._token, facts=self._source.facts, repr_digest=digest
        )
        if not plan.authorized:
            await self._send(stream, conn, plan, SendProgress())
            return
        self.lifetime.begin()
        self._notify()
        progress = SendProgress()
        finished = False
        try:
            await self._send(stream, conn, plan, progress)
            finished = True
        finally:
            first = plan.file_range.first if plan.file_range else 0
            self.lifetime.end(
                trio.current_time(),
                first=first,
                sent=progress.sent,
                body=plan.carries_file and (finished or progress.sent > 0),
                resume=plan.status == 206 and "if-range" in headers,
            )
            self._notify()

    async def _send(
        self, stream: trio.SocketStream, conn: h11.Connection, plan: Plan, progress: SendProgress
    ) -> None:
        response = h11.Response(
            status_code=plan.status,
            headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in plan.headers],
            reason=plan.reason,
        )
        head = conn.send(response)
        if plan.body:
            head += conn.send(h11.Data(data=plan.body))
        await stream.send_all(head)
        byte_range = plan.file_range
        if byte_range is not None:
            # Content-Length framing: h11 counts the bytes and writes none itself.
            framed = frame_file_body(conn, byte_range.length)
            assert len(framed) == 1 and isinstance(framed[0], BodyLength)
            try:
                await sendfile_range(
                    stream.socket, self._source.fd, byte_range.first, byte_range.length, progress
                )
            except FileShrunk:
                log.warning("stream port %d: %s changed size", self.port, self._source.path)
                raise
        tail = conn.send(h11.EndOfMessage())
        if tail:
            await stream.send_all(tail)

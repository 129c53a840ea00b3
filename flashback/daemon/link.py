"""The live link to the tracker: one websocket, reconnected forever.

Per connection: send ``hello`` with our identity and ``last_seq``, apply the
snapshot or replayed changes to the peer table, then apply changes as they
come and relay stream messages both ways. A ``seq`` gap (ResyncNeeded)
reconnects at once asking for what was missed; any other loss reconnects
after an exponential backoff with jitter.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from typing import Final, NoReturn
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from flashback.daemon.context import DaemonContext
from flashback.daemon.identity import Identity
from flashback.protocol.backoff import Backoff
from flashback.protocol.messages import (
    MAX_SNAPSHOT_BYTES,
    ErrorMessage,
    FileStreamReady,
    Hello,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
    ProtocolError,
    Snapshot,
    StreamError,
    StreamRequest,
    TunnelErrorMessage,
    TunnelInvite,
    parse,
)
from flashback.protocol.peer_table import ResyncNeeded
from flashback.shutdown import Shutdown

log = logging.getLogger(__name__)

WS_PATH: Final = "/api/peers/ws"
CONNECT_TIMEOUT_S: Final = 10.0
LINK_CLOSE_TIMEOUT_S: Final = 1.0
# What the tracker's peer-list budget is derived from (capacity.py): they agree.
MAX_FRAME_BYTES: Final = MAX_SNAPSHOT_BYTES


class LinkRejected(Exception):
    """The tracker refused our hello (bad token): our identity must be renewed."""


def websocket_target(tracker_url: str) -> tuple[str, int, str, bool]:
    """Host, port, resource and TLS flag of the tracker's websocket."""
    parts = urlsplit(tracker_url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    base = parts.path.rstrip("/")
    return parts.hostname or "localhost", port, base + WS_PATH, tls


async def _open_stream(
    host: str, port: int, tls: bool
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    stream = await trio.open_tcp_stream(host, port)
    if not tls:
        return stream
    return trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)


async def _writer(ctx: DaemonContext, ws: WebSocketConnection) -> None:
    async for message in ctx.outgoing_receive:
        await ws.send_message(message.encode())


async def _session(
    ctx: DaemonContext, identity: Identity, backoff: Backoff, shutdown: Shutdown
) -> None:
    """One websocket connection, until it breaks (raises) or the identity changes."""
    host, port, resource, tls = websocket_target(ctx.config.tracker_url or "")
    with trio.fail_after(CONNECT_TIMEOUT_S):
        stream = await _open_stream(host, port, tls)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                ws = await wrap_client_stream(
                    nursery, stream, host, resource, max_message_size=MAX_FRAME_BYTES
                )
            hello = Hello(last_seq=ctx.table.seq, peer_id=identity.peer_id, token=identity.token)
            await ws.send_message(hello.encode())
            first = True
            nursery.start_soon(_writer, ctx, ws)

            async def _identity_watch() -> None:
                await ctx.wait_identity_change()
                nursery.cancel_scope.cancel()

            nursery.start_soon(_identity_watch)
            while True:
                frame = await ws.get_message()
                try:
                    message = parse(frame)
                except ProtocolError as exc:
                    log.warning("ignoring a bad frame from the tracker: %s", exc.message)
                    continue
                if isinstance(message, ErrorMessage):
                    if message.code == "unauthorized":
                        raise LinkRejected(message.message)
                    if message.code == "unknown_peer":
                        ctx.registration_lost()
                        raise LinkRejected(message.message)
                    log.warning("tracker error: %s: %s", message.code, message.message)
                    continue
                if first:
                    first = False
                    backoff.reset()
                    ctx.set_connected(True)
                _dispatch(ctx, message)
    finally:
        # trio-websocket 0.12 leaves the TCP stream open when the server
        # closes first; we own the stream, so we close it. Bounded: a TLS
        # close_notify to a tracker that stopped reading must not hold a
        # shutdown past its deadline (the socket is closed either way).
        with shutdown.shielded(LINK_CLOSE_TIMEOUT_S):
            await stream.aclose()


def _dispatch(ctx: DaemonContext, message: object) -> None:
    if isinstance(message, Snapshot | PeerJoined | PeerUpdated | PeerLeft):
        for event in ctx.table.apply(message):
            ctx.hub.emit(event.event, **event.fields)
    elif isinstance(message, StreamRequest) and message.from_ is not None:
        try:
            ctx.stream_requests_send.send_nowait(message)
        except trio.WouldBlock:
            _reply_nowait(
                ctx, StreamError(message.request_id, "busy", "too many requests", to=message.from_)
            )
    elif isinstance(message, FileStreamReady | StreamError):
        # Only an answer to a request we made counts (request ids are random):
        # anything else is a stranger's noise and must not reach stdout.
        if not ctx.deliver_stream_answer(message):
            log.debug("ignoring an unsolicited %s", message.TYPE)
        elif isinstance(message, FileStreamReady):
            ctx.hub.emit(
                "file-stream-ready",
                request_id=message.request_id,
                peer_id=message.from_,
                host=message.host,
                port=message.port,
                path=message.path,
                size=message.size,
                expires_in=message.expires_in,
            )
    elif isinstance(message, TunnelInvite | TunnelErrorMessage):
        if ctx.tunnels is not None:
            ctx.tunnels.on_message(message)
    else:
        log.debug("ignoring %s from the tracker", type(message).__name__)


def _reply_nowait(ctx: DaemonContext, message: StreamError) -> None:
    try:
        ctx.outgoing_send.send_nowait(message)
    except trio.WouldBlock:
        log.warning("outgoing queue full; dropping %s", message.TYPE)


async def run_link(
    ctx: DaemonContext, shutdown: Shutdown, *, rng: random.Random | None = None
) -> NoReturn:
    backoff = Backoff(rng=rng or random.Random())
    while True:
        identity = await ctx.wait_identity()
        resync = False
        try:
            await _session(ctx, identity, backoff, shutdown)
        except* ResyncNeeded as group:
            log.info("missed changes (%s); resyncing", group.exceptions[0])
            resync = True
        except* LinkRejected as group:
            log.warning("tracker refused our link: %s", group.exceptions[0])
            ctx.tracker_failed(f"the tracker refused the link: {group.exceptions[0]}")
        except* (
            OSError,
            HandshakeError,
            ConnectionClosed,
            trio.TooSlowError,
            trio.BrokenResourceError,
            json.JSONDecodeError,
        ) as group:
            log.info("tracker link lost: %s", group.exceptions[0].__class__.__name__)
            first = group.exceptions[0]
            ctx.tracker_failed(f"link lost: {str(first) or first.__class__.__name__}"[:300])
        finally:
            ctx.set_connected(False)
        if ctx.identity is not identity:
            continue  # re-registered: reconnect with the new identity now
        if not resync:
            await trio.sleep(backoff.next_delay_s())

"""The tracker's websocket links (docs/INTERFACE.md §2), from ``hello`` to close.

:meth:`LinkLoops.serve_link` runs one link: the ``hello`` (with its token
checked for an identified peer), the replay from ``last_seq`` or a snapshot,
then two loops in the link's own nursery -- the send loop drains the link's
bounded queue (the hub's fan-out) within the send budget and a deadline, the
receive loop hands relayed messages and tunnel requests to the
:class:`~.relay.Relay`. Links are a fair share per client address
(:class:`~.linkshare.LinkShare`); a slow or failing link ends alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Protocol

import trio

from flashback.config import TrackerConfig
from flashback.errors import BackendUnavailable
from flashback.protocol.messages import (
    ErrorMessage,
    FileStreamReady,
    Hello,
    Message,
    ProtocolError,
    RouteReport,
    Snapshot,
    StreamError,
    StreamRequest,
    TunnelErrorMessage,
    TunnelRequest,
    parse,
)
from flashback.protocol.tunnel import advertise_host
from flashback.tracker.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    Connection,
    Hub,
)
from flashback.tracker.linkshare import LinkShare
from flashback.tracker.metrics import TrackerMetrics
from flashback.tracker.presence import Presence
from flashback.tracker.relay import Relay
from flashback.tracker.sendshare import SendBudget

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0
SNAPSHOT_CACHE_S: Final = 1.0  # a burst of hellos shares one encoding


class WebsocketLike(Protocol):
    """What a link needs from Quart's websocket object (and a test double)."""

    async def accept(self) -> None: ...
    async def receive(self) -> str | bytes: ...
    async def send(self, data: str) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


class LinkLoops:
    """Every websocket link of one tracker instance, each a task of the app's nursery."""

    def __init__(
        self,
        config: TrackerConfig,
        hub: Hub,
        presence: Presence,
        metrics: TrackerMetrics,
        *,
        relay: Relay,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.hub = hub
        self.presence = presence
        self.metrics = metrics
        self.relay = relay
        self.clock = clock
        # frames queued in ws.send calls that have not returned, per address
        self.send_budget = SendBudget(
            config.max_send_bytes, wait_s=2 * config.send_timeout_s, hub=hub
        )
        self.links = LinkShare(
            hub, capacity=config.max_links, per_address=config.max_links_per_address
        )
        self.hello_timeout_s = HELLO_TIMEOUT_S
        self._snapshot_cache: tuple[int, float, str] | None = None

    async def serve_link(
        self,
        ws: WebsocketLike,
        *,
        host_header: str | None = None,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
    ) -> None:
        """One websocket from ``hello`` to close; protocol in docs/INTERFACE.md §2.

        *host_header* is the ``Host`` of the upgrade request: by default the
        host a peer is told to dial for tunnels is the one it already reached.
        *client* and *server* are its TCP ends (its share of the send budget).
        """
        if self.hub.closing:
            await ws.close(CLOSE_GOING_AWAY, "tracker shutting down")
            return
        await ws.accept()
        hello: Hello | None = None
        with trio.move_on_after(self.hello_timeout_s):
            hello = await self._receive_hello(ws)
        if hello is None:
            await ws.close(CLOSE_POLICY, "expected a hello")
            return
        try:
            if hello.peer_id is not None:
                refusal = await self.presence.check_link(hello.peer_id, hello.token)
                if refusal is not None:
                    if refusal.code == "unauthorized":
                        self.metrics.rejected.inc()
                    await ws.send(refusal.encode())
                    await ws.close(CLOSE_POLICY, refusal.code)
                    return
            await self.presence.catch_up(hello.last_seq)
            connection = Connection(
                hello.peer_id,
                self.config.watcher_queue_messages,
                advertise_host=advertise_host(host_header, self.config.tunnel_advertise),
                client=client,
                server=server,
            )
            connection.relay_budget = self.relay.budget_for(hello.peer_id)
            # No checkpoint from here to hub.add: the replay and the live feed
            # meet exactly at the current seq, with nothing lost or repeated.
            first = self.presence.first_messages(hello.last_seq, self.clock())
        except BackendUnavailable as exc:
            # The client's reconnect backoff is the retry; a 1013 says "later".
            await ws.send(ErrorMessage(exc.code, exc.message).encode())
            await ws.close(CLOSE_TRY_AGAIN_LATER, exc.code)
            return
        self.hub.add(connection)
        self.links.admit(connection)
        try:
            if connection.peer_id is not None:
                await self.presence.attach(connection.peer_id)
            with connection.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, ws, connection, first)
                    await self._receive_loop(ws, connection)
        finally:
            self.hub.remove(connection)
            self.links.release(connection)
            if connection.peer_id is not None:
                self.presence.detach(connection.peer_id, self.clock())
        if connection.close_code is not None:
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await ws.close(connection.close_code, connection.close_reason)

    async def _receive_hello(self, ws: WebsocketLike) -> Hello:
        while True:
            frame = await ws.receive()
            try:
                message = parse(frame)
            except ProtocolError as exc:
                await ws.send(exc.reply.encode())
                continue
            if isinstance(message, Hello):
                return message
            reply = ErrorMessage("hello_required", "the first message must be a hello")
            await ws.send(reply.encode())

    async def _send_loop(
        self, ws: WebsocketLike, connection: Connection, first: list[Message]
    ) -> None:
        for message in first:
            await self._send_bounded(ws, connection, self._encode(message))
        async for text in connection.receive_channel:
            await self._send_bounded(ws, connection, text)

    async def _send_bounded(self, ws: WebsocketLike, connection: Connection, text: str) -> None:
        """One frame, with a deadline and out of the send budget (sendshare.py).

        A link that does not read is evicted after ``send_timeout_s`` rather
        than holding its frame forever; when the frames in flight fill
        ``max_send_bytes``, the heaviest address's longest-blocked link goes
        to make room, and this frame waits for it.
        """
        if not await self.send_budget.acquire(connection, len(text)):
            log.info("no room in the send budget; closing a link (peer %s)", connection.peer_id)
            connection.end(CLOSE_TRY_AGAIN_LATER, "tracker busy; reconnect later")
            self.hub.evict(connection)
            await trio.lowlevel.checkpoint()  # raises Cancelled: the link is over
            return
        try:
            with trio.move_on_after(self.config.send_timeout_s) as deadline:
                await ws.send(text)
        finally:
            self.send_budget.release(connection)
        if deadline.cancelled_caught:
            log.info(
                "a link did not read for %.0f s (peer %s)",
                self.config.send_timeout_s,
                connection.peer_id,
            )
            self.hub.evict(connection)
            connection.end(CLOSE_TRY_AGAIN_LATER, "too slow; reconnect with last_seq")
            await trio.lowlevel.checkpoint()

    def _encode(self, message: Message) -> str:
        """Encode; a snapshot is encoded once per seq and second, however many ask."""
        if not isinstance(message, Snapshot):
            return message.encode()
        cached = self._snapshot_cache
        now = self.clock()
        if cached is not None and cached[0] == message.seq and now - cached[1] < SNAPSHOT_CACHE_S:
            return cached[2]
        text = message.encode()
        self._snapshot_cache = (message.seq, now, text)
        return text

    async def _receive_loop(self, ws: WebsocketLike, connection: Connection) -> None:
        while True:
            frame = await ws.receive()
            try:
                message = parse(frame)
            except ProtocolError as exc:
                self.hub.send(connection, exc.reply)
                continue
            if isinstance(message, StreamRequest | FileStreamReady | StreamError):
                await self.relay.relay(connection, message)
            elif isinstance(message, TunnelRequest):
                await self.relay.tunnel_request(connection, message)
            elif isinstance(message, TunnelErrorMessage):
                await self.relay.tunnel_decline(connection, message)
            elif isinstance(message, RouteReport):
                self.relay.introductions.report(connection.peer_id, message)
            else:
                reply = ErrorMessage(
                    "unexpected_message", f"a client may not send {message.TYPE!r} here"
                )
                self.hub.send(connection, reply)

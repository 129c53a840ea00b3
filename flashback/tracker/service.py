"""The tracker's behaviour, between the HTTP/websocket glue and the presence.

:class:`Tracker` is handed a finished presence backend (who is online,
``seq`` and the feed: in this process, or shared through Redis; see
:mod:`.presence`) and identity store; it owns the hub and the metrics
(registration and auth: :mod:`.registration`; relay and tunnels:
:mod:`.relay`), and it is the only one that publishes to the hub: the changes a
backend call returns, and (as the backend's :class:`~.presence.FeedSink`)
whatever a shared feed delivers. The Quart app only turns
requests into calls here and results into JSON; the reaper and every
websocket link run as tasks of the nursery that serves the app.

Who may do what:

- register: anyone (or only holders of ``RELAY_AUTH_TOKEN``), rate limited per
  client address; coming back under a ``peer_id`` needs that peer's token.
- heartbeat, DELETE, an identified ``hello``: that peer's token.
- stream relay: identified links only; a watcher may only listen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import trio

from flashback import __version__
from flashback.config import TrackerConfig
from flashback.errors import BackendUnavailable
from flashback.protocol.messages import (
    Change,
    ErrorMessage,
    FileStreamReady,
    Hello,
    Message,
    PeerLeft,
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
from flashback.tracker import direct
from flashback.tracker.capacity import PeerCapacity
from flashback.tracker.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    Connection,
    Hub,
)
from flashback.tracker.identities import IdentityBook
from flashback.tracker.linkshare import LinkShare
from flashback.tracker.metrics import TrackerMetrics
from flashback.tracker.presence import Presence
from flashback.tracker.registration import Registration
from flashback.tracker.relay import Relay
from flashback.tracker.security import HeaderLookup
from flashback.tracker.sendshare import SendBudget
from flashback.tracker.store import IdentityStore
from flashback.tracker.tunnels import TunnelRelay
from flashback.tracker.validate import RegisterBody

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


class Tracker:
    def __init__(
        self,
        config: TrackerConfig,
        store: IdentityStore,
        presence: Presence,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.config = config
        self.store = store
        self.presence = presence
        self.clock = clock
        self.metrics = TrackerMetrics(
            peers_online=lambda: self.presence.online_count(),
            connections=lambda: len(self.hub),
            seq=lambda: self.presence.seq,
        )
        self.hub = Hub(on_evict=self.metrics.evictions.inc)
        # the pairing half of tunnels; the port itself is served by serve.py
        self.tunnels: TunnelRelay | None = None
        if config.tunnel_port is not None:
            self.tunnels = TunnelRelay(
                max_sessions=config.tunnel_max_sessions,
                rate_bytes_per_s=config.tunnel_rate_bytes_per_s,
                clock=clock,
            )
            self.metrics.add_tunnels(self.tunnels.counters, lambda: self.tunnels_active)
            self.tunnels.reflector = direct.reflector(presence, self.publish, clock, self.metrics)
        self.capacity = PeerCapacity(
            config.max_peers,
            config.max_peer_list_bytes,
            self.presence.is_online,
            per_address=config.max_peers_per_address,
        )
        # frames queued in ws.send calls that have not returned, per address
        self.send_budget = SendBudget(
            config.max_send_bytes, wait_s=2 * config.send_timeout_s, hub=self.hub
        )
        self.links = LinkShare(
            self.hub, capacity=config.max_links, per_address=config.max_links_per_address
        )
        self.identities = IdentityBook(
            store,
            self.presence.is_online,
            capacity=config.max_identities,
            per_address=config.max_identities_per_address,
            online_cap=config.max_peers,
        )
        self.registration = Registration(
            config,
            store,
            presence,
            self.metrics,
            capacity=self.capacity,
            identities=self.identities,
            publish=self.publish,
            clock=clock,
        )
        self.relay = Relay(
            config,
            self.hub,
            presence,
            self.metrics,
            tunnels=self.tunnels,
            introductions=direct.Introductions(self.metrics.registry, clock),
            clock=clock,
        )
        self._snapshot_cache: tuple[int, float, str] | None = None
        self.started_at = clock()
        self.hello_timeout_s = HELLO_TIMEOUT_S

    def now(self) -> float:
        return self.clock()

    @property
    def tunnel_port(self) -> int | None:
        """The tunnel port once it listens; set by serve.py, named in answers and invites."""
        return self.relay.tunnel_port

    @tunnel_port.setter
    def tunnel_port(self, port: int | None) -> None:
        self.relay.tunnel_port = port
        self.registration.tunnel_port = port

    # -- HTTP --------------------------------------------------------------------

    async def register(
        self, registration: RegisterBody, headers: HeaderLookup, client: str
    ) -> dict[str, Any]:
        return await self.registration.register(registration, headers, client)

    async def heartbeat(self, peer_id: str, headers: HeaderLookup) -> dict[str, Any]:
        return await self.registration.heartbeat(peer_id, headers)

    async def leave(self, peer_id: str, headers: HeaderLookup) -> None:
        await self.registration.leave(peer_id, headers)

    async def peer_list(self) -> dict[str, Any]:
        return await self.presence.peer_list(self.now())

    @property
    def tunnels_active(self) -> int:
        return 0 if self.tunnels is None else self.tunnels.sessions_active

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(self.now() - self.started_at, 3),
            "peers_online": self.presence.online_count(),
            "connections": len(self.hub),
            "tunnels_active": self.tunnels_active,
        }

    # -- the feed (also the backend's FeedSink) ------------------------------------

    async def follow(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The backend's background work (a shared feed's follower) until cancelled."""
        await self.presence.run(self, task_status=task_status)

    def publish(self, changes: Sequence[Change]) -> None:
        """Every change reaches every link of this instance, in ``seq`` order."""
        self.hub.publish(changes)
        self.capacity.track(changes)  # the list's budget counts every instance's peers
        for change in changes:
            if isinstance(change, PeerLeft) and change.reason == "expired":
                # Its link is here but its TTL ran out (a shared store was out of
                # reach for longer than the TTL, say): tell it to register again.
                reply = ErrorMessage("unknown_peer", "this peer expired; register again")
                for link in self.hub.links_of(change.peer_id):
                    self.hub.send(link, reply)

    def restart_links(self) -> None:
        self.hub.drop_all(CLOSE_TRY_AGAIN_LATER, "tracker state reset; reconnect with last_seq")

    async def deliver_relayed(self, to: str, message: Message) -> None:
        """A message another instance relayed for *to*: deliver it, or bounce it."""
        await self.relay.deliver_relayed(to, message)

    # -- liveness ----------------------------------------------------------------

    async def reap(self) -> None:
        await self.registration.reap()

    async def reap_forever(self) -> None:
        """The TTL's enforcer (:meth:`.registration.Registration.reap_forever`)."""
        await self.registration.reap_forever()

    # -- the websocket link --------------------------------------------------------

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
            first = self.presence.first_messages(hello.last_seq, self.now())
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
                self.presence.detach(connection.peer_id, self.now())
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
        now = self.now()
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

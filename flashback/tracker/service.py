"""The tracker's behaviour, between the HTTP/websocket glue and the presence.

:class:`Tracker` is handed a finished presence backend (who is online,
``seq`` and the feed: in this process, or shared through Redis; see
:mod:`.presence`) and identity store; it owns the hub, the rate limiter and
the metrics, and it is the only one that publishes to the hub: the changes a
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

import hmac
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Protocol

import trio

from flashback import __version__
from flashback.config import TrackerConfig
from flashback.errors import BackendUnavailable, RateLimited, Unauthorized
from flashback.protocol.fairshare import share_address
from flashback.protocol.feed import Listing
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
from flashback.tracker.capacity import PeerCapacity, record_bytes
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
from flashback.tracker.relay import Relay
from flashback.tracker.security import (
    HeaderLookup,
    RateLimiter,
    hash_token,
    new_peer_id,
    new_token,
    require_bearer,
    token_matches,
)
from flashback.tracker.sendshare import SendBudget
from flashback.tracker.store import IdentityStore, IssuedIdentity
from flashback.tracker.tunnels import TunnelRelay
from flashback.tracker.validate import RegisterBody

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0
MAX_REAP_INTERVAL_S: Final = 1.0
MIN_REAP_INTERVAL_S: Final = 0.01
SNAPSHOT_CACHE_S: Final = 1.0  # a burst of hellos shares one encoding


class WebsocketLike(Protocol):
    """What a link needs from Quart's websocket object (and a test double)."""

    async def accept(self) -> None: ...
    async def receive(self) -> str | bytes: ...
    async def send(self, data: str) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


def _seconds(value: float) -> int | float:
    """The contract's ints; a fractional setting (tests) stays exact."""
    return int(value) if value == int(value) else value


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
        self.wall_offset_s = time.time() - clock()
        self.metrics = TrackerMetrics(
            peers_online=lambda: self.presence.online_count(),
            connections=lambda: len(self.hub),
            seq=lambda: self.presence.seq,
        )
        self.hub = Hub(on_evict=self.metrics.evictions.inc)
        self.limiter = RateLimiter(config.register_rate_per_s, config.register_burst)
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

    def wall_now(self) -> float:
        return self.now() + self.wall_offset_s

    # -- HTTP --------------------------------------------------------------------

    async def register(
        self, registration: RegisterBody, headers: HeaderLookup, client: str
    ) -> dict[str, Any]:
        client = share_address(client)  # an IPv6 client counts by its /64
        wait_s = self.limiter.acquire(client, self.now()) or await self.presence.take_token(
            f"register:{client}", self.config.register_rate_per_s, self.config.register_burst
        )
        if wait_s > 0:
            self.metrics.rate_limited.inc()
            raise RateLimited("too many registrations; slow down", retry_after_s=math.ceil(wait_s))
        if registration.peer_id is None:
            self._check_admission(headers)
            peer_id, token = new_peer_id(), new_token()
            first_seen = self.wall_now()
        else:
            peer_id = registration.peer_id
            token = self._require_token(headers)
            known = await self._token_hash(peer_id)
            # An id we never issued is refused like a wrong token (401): either
            # way the client cannot prove it, and registers anew without one.
            token_hash, first_seen = known if known is not None else (None, 0.0)
            if not token_matches(token, token_hash):
                self.metrics.rejected.inc()
                raise Unauthorized("unknown peer_id or wrong token; register without peer_id")
        size = record_bytes(
            peer_id,
            registration.name,
            registration.host,
            registration.port,
            registration.capabilities,
            registration.fingerprint,
            registration.direct,
        )
        refusal = self.capacity.refusal(peer_id, size, self.presence.online_count(), client)
        if refusal is not None:
            self.metrics.rejected.inc()
            raise BackendUnavailable(refusal, code="tracker_full")
        identity = IssuedIdentity(
            peer_id=peer_id,
            token_hash=hash_token(token),
            name=registration.name,
            capabilities=registration.capabilities,
            first_seen=first_seen,
            last_seen=self.wall_now(),
            address=client,
        )
        # Out of the offline share before the write: no eviction can forget it now.
        await self.identities.registered(peer_id, client)
        # Persist first: if the store is down we answer 503 and nothing changed.
        await self.store.put(identity)
        listing = Listing(
            registration.name,
            registration.host,
            registration.port,
            registration.capabilities,
            registration.fingerprint,
            registration.direct,
        )
        changes = await self.presence.register(
            peer_id, listing, token_hash=identity.token_hash, now=self.now()
        )
        self.publish(changes)
        self.capacity.admit(peer_id, size, client)
        self.metrics.registrations.inc()
        answer = {
            "peer_id": peer_id,
            "token": token,
            "heartbeat_interval": _seconds(self.config.heartbeat_interval_s),
            "ttl": _seconds(self.config.peer_ttl_s),
        }
        if self.tunnel_port is not None:
            # where to send REFLECT from the start, not only after a first invite (§10.2)
            answer["tunnel_port"] = self.tunnel_port
        return answer

    async def heartbeat(self, peer_id: str, headers: HeaderLookup) -> dict[str, Any]:
        token = self._require_token(headers)
        with self._counting_rejections():
            await self.presence.heartbeat(peer_id, token, self.now())
        self.metrics.heartbeats.inc()
        return {
            "ttl": _seconds(self.config.peer_ttl_s),
            "heartbeat_interval": _seconds(self.config.heartbeat_interval_s),
        }

    async def leave(self, peer_id: str, headers: HeaderLookup) -> None:
        token = self._require_token(headers)
        with self._counting_rejections():
            changes = await self.presence.leave(peer_id, token, self.now())
        self.publish(changes)
        self.metrics.departures.inc()
        self.capacity.forget(peer_id)
        await self._touch(peer_id)
        await self.identities.gone(peer_id)

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
        expired = await self.presence.expire(self.now())
        self.publish(expired.changes)
        for peer_id in expired.peer_ids:
            self.metrics.expiries.inc()
            self.capacity.forget(peer_id)
            await self._touch(peer_id)
            await self.identities.gone(peer_id)

    async def reap_forever(self) -> None:
        """The TTL's enforcer, ticking on trio's clock a few times per TTL.

        A shared store out of reach skips a tick (the tracker keeps serving
        what it can); it is logged once per outage, not once per tick.
        """
        interval_s = max(MIN_REAP_INTERVAL_S, min(MAX_REAP_INTERVAL_S, self.config.peer_ttl_s / 4))
        failing = False
        while True:
            await trio.sleep(interval_s)
            try:
                await self.reap()
            except BackendUnavailable as exc:
                if not failing:
                    log.warning("cannot expire peers: %s", exc.message)
                failing = True
            else:
                failing = False

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

    # -- internals -----------------------------------------------------------------

    @contextmanager
    def _counting_rejections(self) -> Iterator[None]:
        try:
            yield
        except Unauthorized:
            self.metrics.rejected.inc()
            raise

    def _check_admission(self, headers: HeaderLookup) -> None:
        expected = self.config.auth_token
        if expected is None:
            return
        token = self._require_token(headers)
        if not hmac.compare_digest(token.encode(errors="replace"), expected.encode()):
            self.metrics.rejected.inc()
            raise Unauthorized("registration needs the relay's auth token")

    def _require_token(self, headers: HeaderLookup) -> str:
        try:
            return require_bearer(headers)
        except Unauthorized:
            self.metrics.rejected.inc()
            raise

    async def _token_hash(self, peer_id: str) -> tuple[bytes, float] | None:
        identity = await self.store.get(peer_id)
        if identity is None:
            return None
        return identity.token_hash, identity.first_seen

    async def _touch(self, peer_id: str) -> None:
        """Remember when a peer was last seen; a failing store only costs a log line."""
        try:
            await self.store.touch(peer_id, self.wall_now())
        except BackendUnavailable as exc:
            log.warning("could not record last_seen of %s: %s", peer_id, exc.message)

"""The tracker's behaviour, between the HTTP/websocket glue and the registry.

:class:`Tracker` owns the registry (presence and ``seq``), the identity
store, the hub, the rate limiter and the metrics. The Quart app only turns
requests into calls here and results into JSON; the reaper and every
websocket link run as tasks of the nursery that serves the app.

Who may do what:

- register: anyone (or only holders of ``RELAY_AUTH_TOKEN``), rate limited per
  client address; coming back under a ``peer_id`` needs that peer's token.
- heartbeat, DELETE, an identified ``hello``: that peer's token.
- stream relay: identified links only; a watcher may only listen.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import trio

from flashback import __version__
from flashback.config import TrackerConfig
from flashback.errors import BackendUnavailable, NotFound, RateLimited, Unauthorized
from flashback.protocol.messages import (
    Change,
    ErrorMessage,
    FileStreamReady,
    Hello,
    Message,
    PeerLeft,
    ProtocolError,
    StreamError,
    StreamRequest,
    parse,
)
from flashback.protocol.registry import Registry
from flashback.tracker.hub import CLOSE_GOING_AWAY, CLOSE_POLICY, Connection, Hub
from flashback.tracker.metrics import TrackerMetrics
from flashback.tracker.security import (
    RateLimiter,
    hash_token,
    new_peer_id,
    new_token,
    require_bearer,
    token_matches,
)
from flashback.tracker.store import Identity, IdentityStore
from flashback.tracker.validate import Registration

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0
MAX_REAP_INTERVAL_S: Final = 1.0
MIN_REAP_INTERVAL_S: Final = 0.01


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
        *,
        start_seq: int,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.registry = Registry(
            config.peer_ttl_s,
            start_seq=start_seq,
            backlog_changes=config.backlog_changes,
            wall_offset_s=time.time() - clock(),
        )
        self.metrics = TrackerMetrics(
            peers_online=lambda: len(self.registry),
            connections=lambda: len(self.hub),
            seq=lambda: self.registry.seq,
        )
        self.hub = Hub(on_evict=self.metrics.evictions.inc)
        self.limiter = RateLimiter(config.register_rate_per_s, config.register_burst)
        # Token hashes of online peers, so heartbeats never touch the store.
        self._token_hashes: dict[str, bytes] = {}
        self.started_at = clock()
        self.hello_timeout_s = HELLO_TIMEOUT_S

    def now(self) -> float:
        return self.clock()

    def wall_now(self) -> float:
        return self.now() + self.registry.wall_offset_s

    # -- HTTP --------------------------------------------------------------------

    async def register(
        self, registration: Registration, headers: Mapping[str, str], client: str
    ) -> dict[str, Any]:
        wait_s = self.limiter.acquire(client, self.now())
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
        identity = Identity(
            peer_id=peer_id,
            token_hash=hash_token(token),
            name=registration.name,
            capabilities=registration.capabilities,
            first_seen=first_seen,
            last_seen=self.wall_now(),
        )
        # Persist first: if the store is down we answer 503 and nothing changed.
        await self.store.put(identity)
        self._token_hashes[peer_id] = identity.token_hash
        self._publish(
            self.registry.register(
                peer_id,
                name=registration.name,
                host=registration.host,
                port=registration.port,
                capabilities=registration.capabilities,
                now=self.now(),
            )
        )
        self.metrics.registrations.inc()
        return {
            "peer_id": peer_id,
            "token": token,
            "heartbeat_interval": _seconds(self.config.heartbeat_interval_s),
            "ttl": _seconds(self.config.peer_ttl_s),
        }

    def heartbeat(self, peer_id: str, headers: Mapping[str, str]) -> dict[str, Any]:
        self._authorize_online(peer_id, self._require_token(headers))
        self.registry.heartbeat(peer_id, self.now())
        self.metrics.heartbeats.inc()
        return {
            "ttl": _seconds(self.config.peer_ttl_s),
            "heartbeat_interval": _seconds(self.config.heartbeat_interval_s),
        }

    async def leave(self, peer_id: str, headers: Mapping[str, str]) -> None:
        self._authorize_online(peer_id, self._require_token(headers))
        self._publish(self.registry.leave(peer_id, self.now(), "left"))
        self.metrics.departures.inc()
        await self._touch(peer_id)

    def peer_list(self) -> dict[str, Any]:
        now = self.now()
        return {"seq": self.registry.seq, "peers": [p.dump() for p in self.registry.peers(now)]}

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(self.now() - self.started_at, 3),
            "peers_online": len(self.registry),
            "connections": len(self.hub),
        }

    # -- liveness ----------------------------------------------------------------

    async def reap(self) -> None:
        changes = self.registry.expire(self.now())
        self._publish(changes)
        for change in changes:
            self.metrics.expiries.inc()
            await self._touch(change.peer_id)  # type: ignore[union-attr]

    async def reap_forever(self) -> None:
        """The TTL's enforcer, ticking on trio's clock a few times per TTL."""
        interval_s = max(MIN_REAP_INTERVAL_S, min(MAX_REAP_INTERVAL_S, self.config.peer_ttl_s / 4))
        while True:
            await trio.sleep(interval_s)
            await self.reap()

    # -- the websocket link --------------------------------------------------------

    async def serve_link(self, ws: WebsocketLike) -> None:
        """One websocket from ``hello`` to close; protocol in CONTRACT.md §2."""
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
        if hello.peer_id is not None:
            refusal = self._check_link(hello.peer_id, hello.token)
            if refusal is not None:
                await ws.send(refusal.encode())
                await ws.close(CLOSE_POLICY, refusal.code)
                return
        connection = Connection(hello.peer_id, self.config.watcher_queue_messages)
        # No checkpoint from here to hub.add: the replay and the live feed meet
        # exactly at the current seq, with nothing lost or repeated.
        missed = self.registry.changes_since(hello.last_seq)
        first: list[Message] = (
            [self.registry.snapshot(self.now())] if missed is None else list(missed)
        )
        self.hub.add(connection)
        if connection.peer_id is not None:
            self.registry.attach(connection.peer_id)
        try:
            with connection.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, ws, connection, first)
                    await self._receive_loop(ws, connection)
        finally:
            self.hub.remove(connection)
            if connection.peer_id is not None:
                self.registry.detach(connection.peer_id, self.now())
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

    def _check_link(self, peer_id: str, token: str | None) -> ErrorMessage | None:
        if peer_id not in self.registry:
            return ErrorMessage("unknown_peer", "this peer is not registered; register first")
        if not token_matches(token, self._token_hashes.get(peer_id)):
            self.metrics.rejected.inc()
            return ErrorMessage("unauthorized", "wrong token for this peer_id")
        return None

    async def _send_loop(
        self, ws: WebsocketLike, connection: Connection, first: list[Message]
    ) -> None:
        for message in first:
            await ws.send(message.encode())
        async for text in connection.receive_channel:
            await ws.send(text)

    async def _receive_loop(self, ws: WebsocketLike, connection: Connection) -> None:
        while True:
            frame = await ws.receive()
            try:
                message = parse(frame)
            except ProtocolError as exc:
                self.hub.send(connection, exc.reply)
                continue
            if isinstance(message, StreamRequest | FileStreamReady | StreamError):
                self._relay(connection, message)
            else:
                reply = ErrorMessage(
                    "unexpected_message", f"a client may not send {message.TYPE!r} here"
                )
                self.hub.send(connection, reply)

    def _relay(
        self, sender: Connection, message: StreamRequest | FileStreamReady | StreamError
    ) -> None:
        """Forward with ``from`` in place of ``to``; the tracker never looks inside."""
        if sender.peer_id is None:
            reply = ErrorMessage("forbidden", "only an identified peer may relay streams")
            self.hub.send(sender, reply)
            return
        if message.to is None:
            self.hub.send(sender, ErrorMessage("invalid_field", "'to' is required"))
            return
        target = self.hub.link_for(message.to) if message.to in self.registry else None
        forwarded = dataclasses.replace(message, to=None, from_=sender.peer_id)
        if target is not None and self.hub.send(target, forwarded):
            self.metrics.relayed.inc()
            return
        if not isinstance(message, StreamError):  # an error about an error helps no one
            reply = StreamError(
                request_id=message.request_id,
                code="unknown_peer",
                message=f"peer {message.to!r} is not online",
            )
            self.hub.send(sender, reply)

    # -- internals -----------------------------------------------------------------

    def _publish(self, changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, PeerLeft):
                self._token_hashes.pop(change.peer_id, None)
        self.hub.publish(changes)

    def _check_admission(self, headers: Mapping[str, str]) -> None:
        expected = self.config.auth_token
        if expected is None:
            return
        token = self._require_token(headers)
        if not hmac.compare_digest(token.encode(errors="replace"), expected.encode()):
            self.metrics.rejected.inc()
            raise Unauthorized("registration needs the relay's auth token")

    def _require_token(self, headers: Mapping[str, str]) -> str:
        try:
            return require_bearer(headers)
        except Unauthorized:
            self.metrics.rejected.inc()
            raise

    def _authorize_online(self, peer_id: str, token: str) -> None:
        token_hash = self._token_hashes.get(peer_id)
        if peer_id not in self.registry or token_hash is None:
            raise NotFound(f"peer {peer_id!r} is not online; register again", code="unknown_peer")
        if not token_matches(token, token_hash):
            self.metrics.rejected.inc()
            raise Unauthorized("wrong token for this peer_id")

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

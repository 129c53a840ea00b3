"""Who a peer is, and for how long: register, heartbeat, leave, expiry (§2).

:class:`Registration` answers the tracker's HTTP calls that change who is
online, checks every token on the way (``RELAY_AUTH_TOKEN`` to register, a
peer's own token to come back, heartbeat or leave; a rejection is counted
in ``/metrics``), persists identities before the feed hears of them, and
enforces the TTL (:meth:`Registration.reap_forever`). The changes it makes
go to *publish* (the tracker's one way to its links).
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import trio

from flashback.config import TrackerConfig
from flashback.errors import BackendUnavailable, RateLimited, Unauthorized
from flashback.protocol.fairshare import share_address
from flashback.protocol.feed import Listing
from flashback.protocol.messages import Change
from flashback.tracker.capacity import PeerCapacity, record_bytes
from flashback.tracker.identities import IdentityBook
from flashback.tracker.metrics import TrackerMetrics
from flashback.tracker.presence import Presence
from flashback.tracker.security import (
    HeaderLookup,
    RateLimiter,
    hash_token,
    new_peer_id,
    new_token,
    require_bearer,
    token_matches,
)
from flashback.tracker.store import IdentityStore, IssuedIdentity
from flashback.tracker.validate import RegisterBody

log = logging.getLogger(__name__)

MAX_REAP_INTERVAL_S: Final = 1.0
MIN_REAP_INTERVAL_S: Final = 0.01


def _seconds(value: float) -> int | float:
    """The contract's ints; a fractional setting (tests) stays exact."""
    return int(value) if value == int(value) else value


class Registration:
    """Registration, auth and expiry of one tracker instance's peers."""

    def __init__(
        self,
        config: TrackerConfig,
        store: IdentityStore,
        presence: Presence,
        metrics: TrackerMetrics,
        *,
        capacity: PeerCapacity,
        identities: IdentityBook,
        publish: Callable[[Sequence[Change]], None],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store
        self.presence = presence
        self.metrics = metrics
        self.capacity = capacity
        self.identities = identities
        self.publish = publish
        self.clock = clock
        self.wall_offset_s = time.time() - clock()
        self.limiter = RateLimiter(config.register_rate_per_s, config.register_burst)
        #: the tunnel port once it listens (serve.py): named in every registration
        self.tunnel_port: int | None = None

    def wall_now(self) -> float:
        return self.clock() + self.wall_offset_s

    async def register(
        self, registration: RegisterBody, headers: HeaderLookup, client: str
    ) -> dict[str, Any]:
        client = share_address(client)  # an IPv6 client counts by its /64
        wait_s = self.limiter.acquire(client, self.clock()) or await self.presence.take_token(
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
            peer_id, listing, token_hash=identity.token_hash, now=self.clock()
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
            await self.presence.heartbeat(peer_id, token, self.clock())
        self.metrics.heartbeats.inc()
        return {
            "ttl": _seconds(self.config.peer_ttl_s),
            "heartbeat_interval": _seconds(self.config.heartbeat_interval_s),
        }

    async def leave(self, peer_id: str, headers: HeaderLookup) -> None:
        token = self._require_token(headers)
        with self._counting_rejections():
            changes = await self.presence.leave(peer_id, token, self.clock())
        self.publish(changes)
        self.metrics.departures.inc()
        self.capacity.forget(peer_id)
        await self._touch(peer_id)
        await self.identities.gone(peer_id)

    async def reap(self) -> None:
        expired = await self.presence.expire(self.clock())
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

    # -- tokens and identities ----------------------------------------------

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

"""The tracker's side of direct connections (§10.2, §10.3), between the
tunnel port, the presence and ``/metrics``.

- :func:`reflector`: a ``FLASHBACK-REFLECT`` line on the tunnel port becomes
  the peer's ``reflexive`` address (a ``peer-updated`` only when it moved).
  The token is checked by the presence, which holds the tokens' hashes and
  compares with :func:`~flashback.tracker.security.token_matches`, as for
  every other token.
- :class:`Introductions`: which introductions got a ``route-report``, by
  which route (the rules: :mod:`flashback.protocol.introductions`).
- :func:`introduction_invites`: the two invites, each with what that side
  is told about the other (its candidates and fingerprint).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter

from flashback.errors import BackendUnavailable
from flashback.protocol.introductions import IntroductionTable
from flashback.protocol.messages import (
    Candidate,
    Change,
    PeerInfo,
    RouteReport,
    TunnelInvite,
)
from flashback.protocol.tunnel import Session
from flashback.tracker.metrics import PREFIX, TrackerMetrics
from flashback.tracker.presence import Presence
from flashback.tracker.security import RateLimiter
from flashback.tracker.tunnels import Reflector

log = logging.getLogger(__name__)


#: reflexive addresses recorded per peer: a burst, then one per 10 s. Only a
#: *move* is charged (re-reflecting the same address is free), so a peer behind
#: a NAT that maps every connection anew cannot turn REFLECTs into a feed flood.
REFLEXIVE_CHANGES_BURST: Final = 3
REFLEXIVE_CHANGES_PER_S: Final = 0.1


def reflector(
    presence: Presence,
    publish: Callable[[Sequence[Change]], None],
    clock: Callable[[], float],
    metrics: TrackerMetrics,
) -> Reflector:
    """The tunnel port's :data:`~flashback.tracker.tunnels.Reflector` for this tracker.

    The answer (``ADDR``) always tells the peer what was seen; what the feed
    records is within :data:`REFLEXIVE_CHANGES_PER_S` per peer.
    """
    changes_allowed = RateLimiter(REFLEXIVE_CHANGES_PER_S, REFLEXIVE_CHANGES_BURST)

    async def reflect(token: str, seen: Candidate) -> str | None:
        try:
            peer_id = await presence.peer_of_token(token)
            if peer_id is None:
                metrics.rejected.inc()  # a wrong token, like on every other surface
                return "unauthorized"
            known = presence.peer(peer_id, clock())
            if known is None or known.reflexive == seen:
                return None  # the 25 s re-reflection of a quiet peer: no write, no event
            if changes_allowed.acquire(peer_id, clock()) > 0:
                metrics.rate_limited.inc()
                return None
            publish(await presence.reflect(peer_id, seen, clock()))
        except BackendUnavailable as exc:
            log.info("cannot record a reflexive address: %s", exc.message)
            return "unavailable"
        return None

    return reflect


Side = tuple[PeerInfo | None, str]
"""A side of an introduction: its record as the feed knows it, and the host it dials."""


def introduction_invites(
    request_id: str, session: Session, port: int, *, owner: Side, requester: Side
) -> tuple[TunnelInvite, TunnelInvite]:
    """The two invites of one introduction (§6.2, §10.3): to the owner, to the requester.

    Each side gets the tunnel port and its own key, and about the *other*
    side: its id, its registered fingerprint (``peer_fingerprint``; the owner
    checks the requester's client certificate against it, §11) and its
    ``candidates`` -- its registered ``direct`` addresses, then its reflexive
    one -- to dial at once. ``fingerprint`` is the owner's in both.
    """
    owner_info, owner_host = owner
    requester_info, requester_host = requester
    if owner_info is None or owner_info.fingerprint is None:
        raise ValueError("an owner is introduced only with its fingerprint")

    def invite(
        role: Literal["client", "server"], other: PeerInfo | None, host: str, from_: str
    ) -> TunnelInvite:
        assert owner_info is not None and owner_info.fingerprint is not None
        return TunnelInvite(
            request_id=request_id,
            from_=from_,
            fingerprint=owner_info.fingerprint,
            role=role,
            host=host,
            port=port,
            key=session.keys[role],
            candidates=() if other is None else other.candidates,
            peer_fingerprint=None if other is None else other.fingerprint,
        )

    return (
        invite("server", requester_info, owner_host, session.client_peer),
        invite("client", owner_info, requester_host, session.server_peer),
    )


class Introductions:
    """Route reports of this instance's introductions, counted for ``/metrics``.

    An introduction lives where its session does (the requester's instance);
    in a Redis cluster an owner linked elsewhere reports there, finds nothing
    and is not counted -- the requester's report counts the introduction once.
    """

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float]) -> None:
        self.table = IntroductionTable()
        self._clock = clock
        self.total = Counter(
            PREFIX + "introductions",
            "Introductions (tunnel-invite pairs) that got at least one route-report",
            registry=registry,
        )
        self.direct = Counter(
            PREFIX + "introductions_direct",
            "Introductions a side reported reached by the direct route",
            registry=registry,
        )

    def introduced(self, request_id: str, requester: str, owner: str) -> None:
        self.table.introduce(request_id, requester, owner, self._clock())

    def report(self, reporter: str | None, message: RouteReport) -> None:
        if reporter is None:
            return  # a watcher was introduced to no one
        counted = self.table.report(message.request_id, reporter, message.route, self._clock())
        if counted.introduction:
            self.total.inc()
        if counted.direct:
            self.direct.inc()

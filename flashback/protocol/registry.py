"""Who is online, as a pure state machine: every call takes ``now``.

The tracker feeds it requests and the reaper's ticks; it answers with the
changes it made (:data:`~flashback.protocol.messages.Change`), each already
numbered with the next ``seq``, and keeps the most recent ones in a bounded
backlog so a client that reconnects with ``last_seq`` gets exactly what it
missed, or ``None`` (send a snapshot) when that is no longer held.

``now`` is a monotonic clock in seconds (trio's, in the tracker; plain
numbers in tests). Wall-clock times for ``registered_at`` / ``last_seen`` are
``now + wall_offset_s``, so a single clock drives both TTL and display.

``seq`` starts wherever the caller says; the tracker starts it from the wall
clock in microseconds, so it never goes backwards across a restart (a peer
list would need more than a million changes a second to catch up with it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from flashback.protocol.feed import ChangeLog, LinkCount, Listing, is_change
from flashback.protocol.messages import (
    Candidate,
    Change,
    LeaveReason,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
    Snapshot,
)

MIN_BACKLOG_CHANGES: Final = 10_000
DEFAULT_BACKLOG_CHANGES: Final = 16_384


def clock_seq() -> int:
    """A starting ``seq`` above any earlier run's: wall clock in microseconds."""
    return time.time_ns() // 1000


def rfc3339_millis(wall_time_s: float) -> str:
    """UTC, millisecond precision, ``Z`` suffix: what the contract's PEER carries."""
    moment = datetime.fromtimestamp(wall_time_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Presence:
    listing: Listing
    registered_at: float
    last_seen: float


class Registry:
    """Presence, the ``seq`` counter and the change backlog; no I/O, no clock."""

    def __init__(
        self,
        ttl_s: float,
        *,
        start_seq: int = 0,
        backlog_changes: int = DEFAULT_BACKLOG_CHANGES,
        wall_offset_s: float = 0.0,
    ) -> None:
        self.ttl_s = ttl_s
        self.wall_offset_s = wall_offset_s
        self._log = ChangeLog(backlog_changes, seq=start_seq)
        self._peers: dict[str, _Presence] = {}
        self._links = LinkCount()

    # -- reading -------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._log.seq

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __iter__(self) -> Iterator[str]:
        return iter(self._peers)

    def is_linked(self, peer_id: str) -> bool:
        return self._links.is_linked(peer_id)

    def get(self, peer_id: str, now: float) -> PeerInfo | None:
        presence = self._peers.get(peer_id)
        return None if presence is None else self._info(peer_id, presence, now)

    def peers(self, now: float) -> list[PeerInfo]:
        return [self._info(peer_id, p, now) for peer_id, p in self._peers.items()]

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(seq=self.seq, peers=tuple(self.peers(now)))

    def changes_since(self, last_seq: int | None) -> list[Change] | None:
        """See :meth:`~flashback.protocol.feed.ChangeLog.changes_since`."""
        return self._log.changes_since(last_seq)

    # -- changing ------------------------------------------------------------------

    def register(
        self,
        peer_id: str,
        *,
        name: str,
        host: str,
        port: int,
        capabilities: Mapping[str, Any],
        now: float,
        fingerprint: str | None = None,
        direct: Sequence[Candidate] = (),
    ) -> list[Change]:
        """Join, or refresh and maybe update (a re-registration is a heartbeat too).

        The reflexive address is the tracker's observation, not the peer's
        word: a re-registration keeps it while ``direct`` stays the same
        (:meth:`~flashback.protocol.feed.Listing.reregistered`)."""
        listing = Listing(name, host, port, dict(capabilities), fingerprint, tuple(direct))
        presence = self._peers.get(peer_id)
        if presence is None:
            presence = _Presence(listing.reregistered(None), now, now)
            self._peers[peer_id] = presence
            return [self._record(PeerJoined(self.seq + 1, self._info(peer_id, presence, now)))]
        presence.last_seen = now
        return self._update(peer_id, presence, listing.reregistered(presence.listing), now)

    def reflect(self, peer_id: str, seen: Candidate, now: float) -> list[Change]:
        """The tunnel port saw *peer_id* come from *seen*: its reflexive address.

        A peer re-reflects every 25 s; only a move is a change (a NAT that
        gave it a new mapping), so a quiet peer never spams the feed."""
        presence = self._peers.get(peer_id)
        if presence is None:
            return []
        return self._update(peer_id, presence, presence.listing.reflected(seen), now)

    def heartbeat(self, peer_id: str, now: float) -> bool:
        """Move ``last_seen``; not a change. False: unknown or expired peer."""
        presence = self._peers.get(peer_id)
        if presence is None:
            return False
        presence.last_seen = max(presence.last_seen, now)
        return True

    def leave(self, peer_id: str, now: float, reason: LeaveReason = "left") -> list[Change]:
        if self._peers.pop(peer_id, None) is None:
            return []
        return [self._record(PeerLeft(self.seq + 1, peer_id, reason))]

    def expire(self, now: float) -> list[Change]:
        """Drop every unlinked peer not seen for ``ttl_s``; linked ones stay fresh."""
        gone: list[str] = []
        for peer_id, presence in self._peers.items():
            if self.is_linked(peer_id):
                presence.last_seen = max(presence.last_seen, now)
            elif now - presence.last_seen >= self.ttl_s:
                gone.append(peer_id)
        changes: list[Change] = []
        for peer_id in gone:
            changes.extend(self.leave(peer_id, now, "expired"))
        return changes

    def attach(self, peer_id: str) -> None:
        """An identified websocket link opened: the peer counts as alive."""
        self._links.attach(peer_id)

    def detach(self, peer_id: str, now: float) -> None:
        """A link closed: its TTL starts now, as if it had just sent a heartbeat."""
        self._links.detach(peer_id)
        self.heartbeat(peer_id, now)

    # -- internals -----------------------------------------------------------------

    def _update(
        self, peer_id: str, presence: _Presence, listing: Listing, now: float
    ) -> list[Change]:
        if not is_change(presence.listing, listing):
            return []
        presence.listing = listing
        return [self._record(PeerUpdated(self.seq + 1, self._info(peer_id, presence, now)))]

    def _record(self, change: Change) -> Change:
        self._log.append(change)
        return change

    def _info(self, peer_id: str, presence: _Presence, now: float) -> PeerInfo:
        last_seen = now if self.is_linked(peer_id) else presence.last_seen
        return presence.listing.peer_info(
            peer_id,
            registered_at=rfc3339_millis(presence.registered_at + self.wall_offset_s),
            last_seen=rfc3339_millis(last_seen + self.wall_offset_s),
        )

"""How much peer list the tracker holds: a count and a byte budget, pure.

Every online peer costs its record's size in every snapshot, every
``/api/peers/list`` and every feed message, so the total is bounded where
peers come in. The default byte budget is what a daemon can take in one
websocket frame (:data:`~flashback.protocol.messages.MAX_PEER_LIST_BYTES`):
a full tracker's snapshot still reaches every daemon.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from flashback.protocol.fairshare import FairShare
from flashback.protocol.messages import (
    Candidate,
    Change,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
)
from flashback.protocol.registry import rfc3339_millis

_TIMESTAMP: Final = rfc3339_millis(0.0)
#: the longest reflexive address a peer can be given later: reserved at registration
_WIDEST_REFLEXIVE: Final = Candidate("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 65535)


def record_bytes(
    peer_id: str,
    name: str,
    host: str,
    port: int,
    capabilities: Mapping[str, Any],
    fingerprint: str | None = None,
    direct: tuple[Candidate, ...] = (),
) -> int:
    """What one peer adds to a snapshot, in UTF-8 bytes (its comma included).

    Its reflexive address is counted at its widest now: a reflection later
    changes the record without passing the registration's budget check."""
    info = PeerInfo(
        peer_id,
        name,
        host,
        port,
        dict(capabilities),
        _TIMESTAMP,
        _TIMESTAMP,
        fingerprint,
        direct,
        _WIDEST_REFLEXIVE,
    )
    text = json.dumps(info.dump(), ensure_ascii=False, separators=(",", ":"))
    return len(text.encode()) + 1


def info_bytes(info: PeerInfo) -> int:
    """What *info* adds to a snapshot (as :func:`record_bytes`, for a peer
    already in the feed)."""
    stamped = dataclasses.replace(info, registered_at=_TIMESTAMP, last_seen=_TIMESTAMP)
    text = json.dumps(stamped.dump(), ensure_ascii=False, separators=(",", ":"))
    return len(text.encode()) + 1


class PeerCapacity:
    """Admission of peers under ``max_peers`` and ``max_bytes``.

    *is_online* says whether a remembered peer still counts; entries of peers
    gone (left, expired) are dropped lazily, when the budget looks spent.
    The feed keeps the bytes of every peer, wherever it registered
    (:meth:`track`): instances of a Redis cluster share one list, so they
    share its budget. The peers registered through this process are a fair
    share by client address (``per_address`` each): an address that holds
    its share has its next new peer refused, not another address's.
    """

    def __init__(
        self,
        max_peers: int,
        max_bytes: int,
        is_online: Callable[[str], bool],
        *,
        per_address: int | None = None,
    ) -> None:
        self.max_peers = max_peers
        self.max_bytes = max_bytes
        self._is_online = is_online
        self._sizes: dict[str, int] = {}
        self.total_bytes = 0
        self.by_address: FairShare[str, str] = FairShare(
            max(max_peers, 1), per_address or max(max_peers, 1)
        )

    def refusal(
        self, peer_id: str, size: int, online_count: int, address: str | None = None
    ) -> str | None:
        """Why *peer_id* (of record *size*) may not be (re)registered now, or None."""
        known = peer_id in self._sizes and self._is_online(peer_id)
        if address is not None and self.by_address.holder_of(peer_id) != address:
            held = self.by_address.count(address)
            if held >= self.by_address.per_holder:
                self._forget_gone()
                if self.by_address.count(address) >= self.by_address.per_holder:
                    return (
                        f"{self.by_address.per_holder} peers are registered from your address;"
                        " try again later"
                    )
        if not known and online_count >= self.max_peers:
            return f"the tracker is full ({self.max_peers} peers online); try again later"
        if self.total_bytes - self._sizes.get(peer_id, 0) + size > self.max_bytes:
            self._forget_gone()
            if self.total_bytes - self._sizes.get(peer_id, 0) + size > self.max_bytes:
                return f"the tracker's peer list is full ({self.max_bytes} bytes); try again later"
        return None

    def admit(self, peer_id: str, size: int, address: str | None = None) -> None:
        self.total_bytes += size - self._sizes.get(peer_id, 0)
        self._sizes[peer_id] = size
        if address is not None:
            self.by_address.admit(address, peer_id)  # refusal() made room first

    def track(self, changes: Sequence[Change]) -> None:
        """Count what the feed says joined, changed or left."""
        for change in changes:
            if isinstance(change, PeerJoined | PeerUpdated):
                self.admit(change.peer.peer_id, info_bytes(change.peer))
            elif isinstance(change, PeerLeft):
                self.forget(change.peer_id)

    def forget(self, peer_id: str) -> None:
        self.total_bytes -= self._sizes.pop(peer_id, 0)
        self.by_address.release(peer_id)

    def _forget_gone(self) -> None:
        for peer_id in [p for p in self._sizes if not self._is_online(p)]:
            self.forget(peer_id)

"""One list of every peer this daemon knows of: tracker, LAN and peer book (§12). Pure.

A peer is its fingerprint, so the three sources merge into one row per
fingerprint (a tracker peer that registered none keeps a row of its own,
keyed by peer id). Which source a row shows is the most live one that has
it: ``tracker`` > ``lan`` > ``book``; its peer id and name come from that
source (a LAN or book entry fills in a peer id the row lacks), and its
candidates are those of every source, the shown one's first, so a route
has every address anyone told us.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from flashback.protocol.book import BookEntry
from flashback.protocol.lan import LanPeer
from flashback.protocol.messages import MAX_CANDIDATES, Candidate, PeerInfo

Source = Literal["tracker", "lan", "book"]
SOURCES: Final[tuple[Source, ...]] = ("tracker", "lan", "book")
#: every source's candidates together, at most this many
MAX_MERGED_CANDIDATES: Final = 3 * MAX_CANDIDATES


@dataclass(frozen=True)
class KnownPeer:
    """A peer this daemon can try to reach, whatever told us of it."""

    peer_id: str | None
    name: str
    fingerprint: str | None
    candidates: tuple[Candidate, ...]
    source: Source

    @property
    def key(self) -> str:
        """What names it uniquely: the fingerprint, else (a tracker peer without one) its id."""
        key = self.fingerprint or self.peer_id
        assert key is not None  # a row has one or the other (merge builds none without)
        return key

    def dump(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "candidates": [c.dump() for c in self.candidates],
            "source": self.source,
        }


def _from_tracker(peer: PeerInfo) -> KnownPeer:
    return KnownPeer(peer.peer_id, peer.name, peer.fingerprint, peer.candidates, "tracker")


def _from_lan(peer: LanPeer) -> KnownPeer:
    return KnownPeer(peer.peer_id, peer.name, peer.fingerprint, peer.candidates, "lan")


def _from_book(entry: BookEntry) -> KnownPeer:
    return KnownPeer(entry.peer_id, entry.name, entry.fingerprint, entry.candidates, "book")


def merge(
    tracker: Iterable[PeerInfo], lan: Iterable[LanPeer], book: Iterable[BookEntry]
) -> list[KnownPeer]:
    """One row per fingerprint, in the order name, then key."""
    rows: dict[str, KnownPeer] = {}
    for peer in [
        *map(_from_tracker, tracker),
        *map(_from_lan, lan),
        *map(_from_book, book),
    ]:
        key = peer.fingerprint or f"id:{peer.peer_id}"
        shown = rows.get(key)
        if shown is None:
            rows[key] = peer
            continue
        candidates = list(shown.candidates)
        for candidate in peer.candidates:
            if candidate not in candidates and len(candidates) < MAX_MERGED_CANDIDATES:
                candidates.append(candidate)
        rows[key] = KnownPeer(
            shown.peer_id if shown.peer_id is not None else peer.peer_id,
            shown.name,
            shown.fingerprint,
            tuple(candidates),
            shown.source,
        )
    # One peer id is one peer: the row of the best source stands for it, so a
    # key that changed under the same id is that peer's current record (which
    # the pin check then refuses), not a second peer of the same name.
    owner_of_id: dict[str, str] = {}
    for key, peer in rows.items():
        if peer.peer_id is not None:
            owner_of_id.setdefault(peer.peer_id, key)
    kept = [
        peer
        for key, peer in rows.items()
        if peer.peer_id is None or owner_of_id[peer.peer_id] == key
    ]
    return sorted(kept, key=lambda p: (p.name, p.key))


def find(peers: Iterable[KnownPeer], text: str) -> list[KnownPeer]:
    """The peers *text* names: a full fingerprint, else a peer id, else a name."""
    rows = list(peers)
    for matches in (
        [p for p in rows if p.fingerprint == text],
        [p for p in rows if p.peer_id == text],
        [p for p in rows if p.name == text],
    ):
        if matches:
            return matches
    return []

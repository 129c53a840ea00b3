"""The daemon's mirror of the tracker's peer list, driven by feed messages.

Sans-IO: :meth:`PeerTable.apply` takes a parsed message and returns the
local events it implies (``peer-joined``, ``peer-updated``, ``peer-left``).
The sequence rules:

* a ``snapshot`` replaces the table; the events are the difference from
  what we had (a peer missing from it "left" with reason ``resync``; a
  changed peer is :func:`~flashback.protocol.feed.is_change`'s);
* a change is placed by :func:`~flashback.protocol.feed.place`: a repeat
  is ignored, the next one applied, and a gap means we missed something:
  :class:`ResyncNeeded`, and the link reconnects with ``last_seq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flashback.protocol.feed import Listing, is_change, place
from flashback.protocol.messages import Change, PeerInfo, PeerLeft, Snapshot


class ResyncNeeded(Exception):
    """A gap in ``seq``: reconnect and ask for everything after :attr:`last_seq`."""

    def __init__(self, last_seq: int | None, got: int) -> None:
        super().__init__(f"expected seq {None if last_seq is None else last_seq + 1}, got {got}")
        self.last_seq = last_seq
        self.got = got


@dataclass(frozen=True)
class TableEvent:
    """A local event for stdout and ``peers --watch``."""

    event: str
    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, **self.fields}


class PeerTable:
    def __init__(self) -> None:
        self.seq: int | None = None
        self.peers: dict[str, PeerInfo] = {}

    def snapshot(self) -> dict[str, Any]:
        """The tracker's list shape: ``{"seq", "peers": [PEER...]}``."""
        return {"seq": self.seq, "peers": [p.dump() for p in self.sorted_peers()]}

    def sorted_peers(self) -> list[PeerInfo]:
        return sorted(self.peers.values(), key=lambda p: (p.name, p.peer_id))

    def find(self, key: str) -> list[PeerInfo]:
        """Peers whose id is *key*, else whose name is *key*."""
        if key in self.peers:
            return [self.peers[key]]
        return [p for p in self.sorted_peers() if p.name == key]

    def apply(self, message: Snapshot | Change) -> list[TableEvent]:
        if isinstance(message, Snapshot):
            return self._replace(message)
        if self.seq is None:
            # The tracker sends a snapshot first; a change before any can only
            # follow a last_seq we never held.
            raise ResyncNeeded(None, message.seq)
        placement = place(self.seq, message.seq)
        if placement == "repeat":
            return []
        if placement == "gap":
            raise ResyncNeeded(self.seq, message.seq)
        self.seq = message.seq
        if isinstance(message, PeerLeft):
            if self.peers.pop(message.peer_id, None) is None:
                return []
            return [_left(message.peer_id, message.reason, message.seq)]
        known = message.peer.peer_id in self.peers
        self.peers[message.peer.peer_id] = message.peer
        kind = "peer-updated" if known else "peer-joined"
        return [TableEvent(kind, {"seq": message.seq, "peer": message.peer.dump()})]

    def _replace(self, snapshot: Snapshot) -> list[TableEvent]:
        new = {p.peer_id: p for p in snapshot.peers}
        events = [
            _left(peer_id, "resync", snapshot.seq) for peer_id in self.peers if peer_id not in new
        ]
        for peer_id, peer in new.items():
            old = self.peers.get(peer_id)
            if old is None:
                events.append(TableEvent("peer-joined", {"seq": snapshot.seq, "peer": peer.dump()}))
            elif is_change(Listing.of(old), Listing.of(peer)):
                events.append(
                    TableEvent("peer-updated", {"seq": snapshot.seq, "peer": peer.dump()})
                )
        self.peers = new
        self.seq = snapshot.seq
        return events


def _left(peer_id: str, reason: str, seq: int) -> TableEvent:
    return TableEvent("peer-left", {"seq": seq, "peer_id": peer_id, "reason": reason})

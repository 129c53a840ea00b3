"""A copy of a peer list that someone else numbers: the follower side of the feed.

When several trackers share one Redis, the changes are made (and numbered)
there, and each tracker follows them in ``seq`` order to serve its own
websockets. :class:`FeedMirror` is that follower as a pure state machine:
:meth:`apply` takes the next numbered change and refuses a gap (the caller
then reloads everything with :meth:`reset`), and :meth:`changes_since` answers
a ``hello`` exactly like :meth:`Registry.changes_since
<flashback.protocol.registry.Registry.changes_since>`. No I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from flashback.protocol.messages import Change, PeerInfo, PeerLeft, Snapshot


class FeedMirror:
    def __init__(self, backlog_changes: int) -> None:
        if backlog_changes < 1:
            raise ValueError("backlog_changes must be positive")
        self.seq = 0
        self.peers: dict[str, PeerInfo] = {}
        self._backlog: deque[Change] = deque(maxlen=backlog_changes)

    def reset(self, seq: int, peers: Iterable[PeerInfo], history: Iterable[Change] = ()) -> None:
        """Start over at *seq* with *peers*; *history* (oldest first) is kept as
        the backlog only where it is contiguous and ends exactly at *seq*."""
        self.seq = seq
        self.peers = {peer.peer_id: peer for peer in peers}
        self._backlog.clear()
        for change in history:
            if self._backlog and change.seq != self._backlog[-1].seq + 1:
                self._backlog.clear()
            self._backlog.append(change)
        if self._backlog and self._backlog[-1].seq != seq:
            self._backlog.clear()

    def apply(self, change: Change) -> bool:
        """Take the change after :attr:`seq`; False for a gap (the caller resyncs).

        A change at or below :attr:`seq` was already applied and is ignored.
        """
        if change.seq <= self.seq:
            return True
        if change.seq != self.seq + 1:
            return False
        if isinstance(change, PeerLeft):
            self.peers.pop(change.peer_id, None)
        else:
            self.peers[change.peer.peer_id] = change.peer
        self.seq = change.seq
        self._backlog.append(change)
        return True

    def snapshot(self) -> Snapshot:
        return Snapshot(seq=self.seq, peers=tuple(self.peers.values()))

    def changes_since(self, last_seq: int | None) -> list[Change] | None:
        """Every change after *last_seq* in order, or ``None``: send a snapshot."""
        if last_seq is None or last_seq > self.seq:
            return None
        if last_seq == self.seq:
            return []
        if not self._backlog or self._backlog[0].seq > last_seq + 1:
            return None
        start = last_seq + 1 - self._backlog[0].seq
        return [self._backlog[i] for i in range(start, len(self._backlog))]
